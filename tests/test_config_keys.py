"""One configuration: every key declared once, the same in conf/*.toml, [tool.flwr.app.config],
``fedvpa run --set`` and ``config.json``; bad keys are one line and exit code 2 wherever given."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import pytest

from fedvpa.config import load_toml
from fedvpa.errors import ConfigError
from fedvpa.experiment import (
    ExperimentConfig,
    default_flat,
    key_groups,
    render_flower_table,
    render_key_table,
)
from fedvpa.federation.server_app import config_from_run_config
from tests.test_cli import fedvpa

ROOT = Path(__file__).resolve().parents[1]
CONFS = sorted((ROOT / "conf").glob("*.toml"))


def flower_defaults() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]


def test_pyproject_declares_every_key_with_its_default() -> None:
    assert flower_defaults() == default_flat()
    text = (ROOT / "pyproject.toml").read_text()
    assert render_flower_table() in text  # regenerate with `fedvpa keys --toml`


def test_no_key_is_owned_twice() -> None:
    groups = list(key_groups().values())
    for i, keys in enumerate(groups):
        for other in groups[i + 1 :]:
            assert not keys & other


def test_the_readme_key_table_is_the_generated_one() -> None:
    readme = (ROOT / "README.md").read_text()
    start = readme.index("<!-- keys:start")
    body = readme[readme.index("-->", start) + 4 : readme.index("<!-- keys:end -->")]
    assert body == render_key_table()  # regenerate with `fedvpa keys`


@pytest.mark.parametrize("path", CONFS, ids=lambda p: p.name)
def test_every_conf_file_works_with_fedvpa_and_with_flwr_run(path: Path) -> None:
    flat = load_toml(path)
    ExperimentConfig.from_flat(flat, source=str(path))  # fedvpa run / compare --config
    # flwr run --run-config: Flower refuses a key the app does not declare, then the ServerApp
    # parses the fused table with the same code.
    assert set(flat) <= set(flower_defaults())
    fused = {**flower_defaults(), **flat}
    exp = ExperimentConfig.from_flat(fused, source="run config")
    assert exp.to_flat() == ExperimentConfig.from_flat(flat).to_flat()


def test_the_flower_server_app_reads_the_same_keys(tmp_path: Path) -> None:
    from fedvpa.embeddings.pipeline import save_client_tensors
    from tests.toy_method import make_clients

    data = tmp_path / "clients.pt"
    save_client_tensors(make_clients(3, 1, dim=8), data)
    run_config = {
        **flower_defaults(),
        **load_toml(ROOT / "conf" / "smoke.toml"),
        "data-path": str(data),
        "run-dir": str(tmp_path / "run"),
        "latent-dim": 4,
        "lr": 0.01,
    }
    config = config_from_run_config(run_config)
    assert config.method == "fedavg-bt" and config.num_clients == 4
    assert config.method_kwargs["model"]["input_dim"] == 8
    assert config.method_kwargs["model"]["latent_dim"] == 4
    assert config.method_kwargs["local"]["lr"] == 0.01
    assert config.settings.num_server_rounds == 2
    # flwr run: the nodes were started by someone else, one client each unless the key says
    assert config.settings.clients_per_node == 1
    assert (
        config_from_run_config({**run_config, "clients-per-node": 2}).settings.clients_per_node == 2
    )
    with pytest.raises(ConfigError, match="latent-dimm"):
        config_from_run_config({**run_config, "latent-dimm": 3})
    with pytest.raises(ConfigError, match="lr"):
        config_from_run_config({**run_config, "lr": "fast"})
    # 4 clients, 3 of them seen: flwr run refuses what fedvpa run refuses
    with pytest.raises(ConfigError, match="seen clients"):
        config_from_run_config({**run_config, "clients-per-round": 4})


def test_flower_scalars_read_back() -> None:
    exp = ExperimentConfig.from_flat({"type-ratio": "0.3,0.7", "split": "0.5,0.25,0.25"})
    assert exp.data.type_ratio == (0.3, 0.7) and exp.data.split == (0.5, 0.25, 0.25)
    assert ExperimentConfig.from_flat({"tau-final": ""}).model.tau_final is None
    assert ExperimentConfig.from_flat({"tau-final": 0.5}).model.tau_final == 0.5
    with pytest.raises(ConfigError, match="type-ratio"):
        ExperimentConfig.from_flat({"type-ratio": "a,b"})


def test_derived_keys_are_not_keys() -> None:
    for key in ("input-dim", "num-rounds", "method-kwargs"):
        with pytest.raises(ConfigError, match=key):
            ExperimentConfig.from_flat({key: 3})


def test_more_clients_per_round_than_clients_is_refused() -> None:
    with pytest.raises(ConfigError, match="clients-per-round"):
        ExperimentConfig.from_flat({"num-clients": 10, "clients-per-round": 1000})


@pytest.mark.parametrize(
    "args",
    [
        ["--set", "clients-per-round=1000"],
        ["--set", "lr=abc"],
        ["--set", "no-such-key=1"],
        ["--method", "no-such-method"],
        ["--set", "type-ratio=0,1"],
        ["--method", "fedvpl", "--set", "prior=mixture"],
    ],
    ids=["per-round", "type", "key", "method", "ratio", "variant"],
)
def test_a_failed_start_is_one_line_exit_2_and_writes_no_folder(
    tmp_path: Path, args: list[str]
) -> None:
    result = fedvpa("run", *args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "runs").exists()


def test_more_clients_per_round_than_seen_clients_is_refused_before_the_folder(
    tmp_path: Path,
) -> None:
    env = {"FEDVPA_CACHE": str(tmp_path / "cache")}
    out = tmp_path / "run"
    args = ["--set", "num-clients=6", "--set", "pairs-per-client=6", "--set", "clients-per-round=6"]
    result = fedvpa("--out", str(out), "run", *args, env=env)
    assert result.returncode == 2 and "seen clients" in result.stderr, result.stderr[-2000:]
    assert not out.exists()


def test_run_dir_and_seed_are_keys_like_any_other(tmp_path: Path) -> None:
    exp = ExperimentConfig.from_flat({"run-dir": str(tmp_path / "r"), "seed": 3})
    assert exp.federation.run_dir == str(tmp_path / "r") and exp.federation.seed == 3
    assert exp.with_seed(5).federation.seed == 5
    flat = exp.to_flat()
    # batched-clients is recorded only when on, so records of earlier runs stay valid
    assert set(flat) | {"batched-clients"} == set(default_flat())
    assert json.loads(json.dumps(flat))["seed"] == 3
    on = ExperimentConfig.from_flat({"batched-clients": True})
    assert on.to_flat()["batched-clients"] is True
    assert on.method_kwargs(16)["local"]["batched_clients"] is True
    assert "batched_clients" not in exp.method_kwargs(16)["local"]


def test_keys_command_prints_the_flower_table_and_every_key() -> None:
    toml = fedvpa("keys", "--toml")
    assert toml.returncode == 0, toml.stderr
    assert toml.stdout == render_flower_table()
    table = fedvpa("keys")
    assert table.returncode == 0, table.stderr
    keys = set(re.findall(r"^\| `([a-z0-9-]+)` \|", table.stdout, flags=re.M))
    assert keys == set(default_flat())


def test_automatic_clients_per_node(monkeypatch) -> None:
    from fedvpa.federation import run_config
    from fedvpa.federation.run_config import resolve_clients_per_node

    monkeypatch.setattr(run_config.os, "cpu_count", lambda: 2)
    # a simulation aims at 10 nodes: 100 clients -> 10 per node, 1,000 -> 100, few -> 1
    assert resolve_clients_per_node(0, 100, simulated=True) == 10
    assert resolve_clients_per_node(0, 1000, simulated=True) == 100
    assert resolve_clients_per_node(0, 101, simulated=True) == 11
    assert resolve_clients_per_node(0, 7, simulated=True) == 1
    # more cores, more nodes
    monkeypatch.setattr(run_config.os, "cpu_count", lambda: 40)
    assert resolve_clients_per_node(0, 100, simulated=True) == 3
    # devices and SecAgg+ hold one client each; an explicit value is kept
    assert resolve_clients_per_node(0, 100, simulated=False) == 1
    assert resolve_clients_per_node(0, 100, simulated=True, secure_aggregation=True) == 1
    assert resolve_clients_per_node(4, 100, simulated=False) == 4
    with pytest.raises(ConfigError, match="clients-per-node"):
        ExperimentConfig.from_flat({"clients-per-node": -1})


def test_fedvpa_run_records_the_clients_per_node_it_used(tmp_path: Path) -> None:
    from fedvpa.experiment import ExperimentConfig
    from fedvpa.federation.run_config import FederationConfig

    exp = ExperimentConfig.from_flat({})
    config = FederationConfig.from_experiment(
        exp,
        method="fedvpl",
        input_dim=8,
        data_path=tmp_path / "c.pt",
        run_dir=tmp_path,
        num_clients=100,
    )
    assert config.settings.clients_per_node >= 10 and config.record()["clients-per-node"] >= 10
