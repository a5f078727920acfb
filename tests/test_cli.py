"""The ``fedvpa`` command: configuration, one-line errors with exit code 2, and a real run."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fedvpa.errors import ConfigError
from fedvpa.experiment import ExperimentConfig

ROOT = Path(__file__).resolve().parents[1]


def fedvpa(*args: str, cwd: Path = ROOT, env: dict | None = None, timeout: int = 600):
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-c", "from fedvpa.cli import main; main()", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_unknown_key_is_named():
    with pytest.raises(ConfigError) as err:
        ExperimentConfig.from_flat({"latent-dimm": 8}, source="x.toml")
    assert "latent-dimm" in str(err.value) and "x.toml" in str(err.value)


def test_wrong_type_is_named():
    with pytest.raises(ConfigError) as err:
        ExperimentConfig.from_flat({"num-clients": "many"})
    assert "num-clients" in str(err.value)


def test_bad_model_value_fails_before_any_work():
    with pytest.raises(ConfigError):
        ExperimentConfig.from_flat({"beta": -1.0})


def test_method_kwargs_carry_model_and_local_settings():
    exp = ExperimentConfig.from_flat({"latent-dim": 8, "local-steps": 3, "num-server-rounds": 7})
    kwargs = exp.method_kwargs(input_dim=16)
    assert kwargs["model"]["latent_dim"] == 8 and kwargs["model"]["input_dim"] == 16
    assert kwargs["local"]["local_steps"] == 3 and kwargs["local"]["num_rounds"] == 7
    assert kwargs["model"]["beta"] == 0.1  # every setting travels, defaults included
    json.dumps(kwargs)


def test_malformed_line_gives_one_line_error_and_exit_2(tmp_path):
    path = tmp_path / "bad.jsonl.gz"
    rows = [
        json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"}),
        "{not json",
    ]
    with gzip.open(path, "wt") as fh:
        fh.write("\n".join(rows) + "\n")
    result = fedvpa("data", "summary", str(path))
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "bad.jsonl.gz:2" in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def test_missing_file_exit_2(tmp_path):
    result = fedvpa("data", "summary", str(tmp_path / "nope.jsonl"))
    assert result.returncode == 2 and "nope.jsonl" in result.stderr


def test_bad_set_override_exit_2():
    result = fedvpa("run", "--set", "latent-dimm=3")
    assert result.returncode == 2 and "latent-dimm" in result.stderr


def test_data_summary_on_the_embedded_data(tmp_path):
    result = fedvpa("--out", str(tmp_path), "data", "summary", "synthetic-2", "--num-clients", "10")
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "data_summary.json").read_text())
    assert summary["pairs"]["rows"] > 0
    assert summary["partition"]["clients"] == 10


@pytest.mark.slow
def test_a_file_naming_its_users_runs_one_client_per_user(tmp_path):
    """``partition = auto`` on a generic JSONL file whose pairs name their users: the run on
    Flower has one client per user (the 3-pair user left out) and says so in one line."""
    rows = []
    for u in range(9):
        for i in range(2 if u == 8 else 6 + u):
            good, bad = f"a clear answer {u} {i}", f"a rude reply {u} {i}"
            chosen, rejected = (good, bad) if u % 2 else (bad, good)
            rows.append({"prompt": f"question {u} {i}", "chosen": chosen, "rejected": rejected,
                         "type": "ab"[u % 2], "user": f"person {u}"})  # fmt: skip
    data = tmp_path / "named.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "run"
    result = fedvpa(
        "--out", str(out), "run", "--data", str(data), "--rounds", "1",
        "--clients-per-round", "2", "--baseline", "", "--method", "fedavg-bt",
        env={"FEDVPA_CACHE": str(tmp_path / "cache")},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "one client per user of the data (8 users, 1 with fewer than 3 pairs" in result.stderr
    assert "8 clients" in result.stdout
    final = json.loads((out / "fedavg-bt" / "final.json").read_text())
    assert len(final["seen_clients"]) + len(final["unseen_clients"]) == 8


@pytest.mark.slow
def test_fedvpa_run_end_to_end_and_resume_of_a_finished_run(tmp_path):
    """The main job, shrunk: real data generation, MiniLM embeddings, two methods on Flower."""
    out = tmp_path / "run"
    env = {"FEDVPA_CACHE": str(tmp_path / "cache")}
    args = [
        "--out",
        str(out),
        "run",
        "--num-clients",
        "6",
        "--rounds",
        "2",
        "--clients-per-round",
        "2",
        "--set",
        "synthetic-pairs-per-type=40",
        "--set",
        "pairs-per-client=6",
        "--set",
        "local-steps=2",
        "--set",
        "eval-every=1",
        "--set",
        "fraction-unseen=0.34",
    ]
    result = fedvpa(*args, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["methods"]) == {"fedvpa-gp", "fedavg-bt"}
    for res in summary["methods"].values():
        assert res["seen"]["macro"] is not None and res["unseen"]["macro"] is not None
    config = json.loads((out / "config.json").read_text())
    assert config["seed"] == 0 and config["config"]["num-clients"] == 6
    assert "fedavg-bt" in result.stdout and "unseen" in result.stdout
    # a second run into the same folder is refused; --resume of a finished run redoes nothing
    again = fedvpa(*args, env=env)
    assert again.returncode == 2
    resumed = fedvpa("run", "--resume", str(out), env=env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((out / "summary.json").read_text())["methods"] == summary["methods"] | {
        name: {**res, "seconds": None} for name, res in summary["methods"].items()
    }


def test_embed_fills_the_cache_and_a_rerun_skips_the_model(tmp_path):
    path = tmp_path / "pairs.jsonl"
    rows = [
        {
            "prompt": f"How do I bake bread number {i}?",
            "chosen": f"Knead it {i} times.",
            "rejected": "No.",
        }
        for i in range(3)
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    args = ["--out", str(tmp_path / "o"), "embed", str(path), "--cache-dir", str(tmp_path / "c")]
    first = fedvpa(*args)
    assert first.returncode == 0, first.stderr
    cold = json.loads((tmp_path / "o" / "embed.json").read_text())
    assert cold["texts"] == 6 and cold["dim"] == 384
    second = fedvpa(*args)
    assert second.returncode == 0, second.stderr
    warm = json.loads((tmp_path / "o" / "embed.json").read_text())
    assert warm["stats"]["model_calls"] == 0, warm["stats"]


def test_default_run_folder_never_collides(tmp_path):
    from fedvpa.cli import _fresh_folder

    base = tmp_path / "fedvpa-gp-seed0"
    assert _fresh_folder(base) == base
    base.mkdir()
    assert _fresh_folder(base) == tmp_path / "fedvpa-gp-seed0-2"
    (tmp_path / "fedvpa-gp-seed0-2").mkdir()
    assert _fresh_folder(base) == tmp_path / "fedvpa-gp-seed0-3"


def _typed_pairs(path: Path, types: list[str], n: int) -> None:
    """Two user types with opposite tastes: 'brief' users prefer the short reply, 'thorough'
    users the long one, on the same kind of prompts."""
    rows = []
    for t in types:
        for i in range(n):
            short, long = (
                f"Use {i} cups.",
                f"Use {i} cups, and here is why, step by step, in detail.",
            )
            chosen, rejected = (short, long) if t == "brief" else (long, short)
            rows.append(
                {
                    "prompt": f"How much flour for loaf {i}?",
                    "chosen": chosen,
                    "rejected": rejected,
                    "type": t,
                }
            )
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")


def test_headroom_reports_the_personalised_ceiling(tmp_path):
    data = tmp_path / "typed.jsonl"
    _typed_pairs(data, ["brief", "thorough"], 40)
    out = tmp_path / "o"
    args = ["--out", str(out), "headroom", str(data), "--cache-dir", str(tmp_path / "c")]
    result = fedvpa(*args, "--ks", "0,4", "--trials", "500", "--folds", "2")
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "headroom.json").read_text())
    assert report["user_types"] == ["brief", "thorough"]
    # Opposite tastes: each type's probe is near perfect, the monolithic one near chance.
    assert report["oracle_macro"] > 0.9 and report["monolithic_macro"] < 0.7
    k0, k4 = report["points"]
    assert k0["macro_identified"] == 0.5 and k4["macro_identified"] > 0.9
    assert k4["macro_accuracy"] > 0.9
    assert "| 4 |" in (out / "headroom.md").read_text()


def test_headroom_needs_two_user_types(tmp_path):
    data = tmp_path / "one.jsonl"
    _typed_pairs(data, ["brief"], 5)
    result = fedvpa("headroom", str(data), "--cache-dir", str(tmp_path / "c"))
    assert result.returncode == 2
    assert "user_type" in result.stderr and str(data) in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_unknown_baseline_is_refused_before_any_folder_or_training(tmp_path):
    """Regression: an unknown baseline surfaced only after the main method had trained."""
    out = tmp_path / "run"
    result = fedvpa("--out", str(out), "run", "--set", "baseline=no-such-method")
    assert result.returncode == 2, result.stderr
    assert "baseline" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_skip_invalid_reports_the_skipped_rows_once(tmp_path):
    """Regression: `data summary --skip-invalid` read the file twice and said so twice."""
    path = tmp_path / "pairs.jsonl"
    good = [json.dumps({"prompt": f"p{i}", "chosen": "a", "rejected": "b"}) for i in range(8)]
    path.write_text("\n".join([*good, '{"prompt": "unterminated']) + "\n")
    result = fedvpa(
        "data",
        "summary",
        str(path),
        "--skip-invalid",
        "--num-clients",
        "2",
        "--pairs-per-client",
        "4",
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("skipped 1 of 9 rows") == 1, result.stderr
    strict = fedvpa("data", "summary", str(path))
    assert strict.returncode == 2 and "pairs.jsonl:9" in strict.stderr
    assert "at at" not in strict.stderr and "--skip-invalid" in strict.stderr


def test_run_records_every_key_and_the_installed_version(tmp_path):
    from fedvpa import __version__
    from fedvpa.runner import _versions

    assert __version__ != "0" and _versions()["fedvpa"] == __version__


def test_run_records_the_libraries_and_cpu_its_numbers_depend_on() -> None:
    # Bug: the same code and seed gave another group count on another machine, and config.json
    # could not say why (it held fedvpa, flwr, torch and Python only).
    import numpy
    import sklearn
    import torch

    from fedvpa.runner import _versions

    versions = _versions()
    assert versions["numpy"] == numpy.__version__
    assert versions["scikit-learn"] == sklearn.__version__
    assert versions["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert set(versions) >= {"fedvpa", "flwr", "torch", "scipy", "python"}


def _main(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """``fedvpa.cli.main`` in-process: (exit code, stderr)."""
    from fedvpa.cli import main

    try:
        main(argv)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    ("item", "key"),
    [
        ("lr=inf", "lr"),  # trained on NaN and died with a FederationError traceback
        ("tau-final=inf", "tau-final"),  # "X | None" keys were not checked at all
        ("type-ratio=nan", "type-ratio"),  # ValueError traceback sizing the synthetic data
        ("type-ratio=[nan, 1]", "type-ratio"),
        ("split=[true, 1, 1]", "split"),  # a bool counted as the number 1
        ("split=true", "split"),  # TypeError without the key
        ('type-ratio=["a", "b"]', "type-ratio"),  # TypeError without the key
        ("num-clients=99999999999999999999999", "num-clients"),  # OverflowError traceback
        ("lr=" + "9" * 400, "lr"),  # OverflowError in float()
        ("lr=" + "9" * 5000, "lr"),  # ValueError out of the value parser
        ("num-clients=1000000000", "num-clients"),  # sized ~1e10 synthetic pairs per type
        ("synthetic-pairs-per-type=2000000000", "synthetic-pairs-per-type"),
    ],
)
def test_non_finite_and_huge_values_are_refused_by_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], item, key
) -> None:
    """Regressions found by tests/test_fuzz.py: each of these was a traceback or a started run."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("fedvpa.embeddings.backbone.make_backbone", _no_backbone)
    code, err = _main(["--out", str(tmp_path / "run"), "run", "--set", item], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"'{key}'" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists() and not (tmp_path / "runs").exists()


def _no_backbone(*args: object, **kwargs: object) -> None:
    raise AssertionError("an invalid configuration reached the backbone")


def test_usage_errors_and_line_breaks_give_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    """Regression: Click's usage errors were a boxed block of four lines, and a key holding a
    line break (\\n, or \\x0c, which splitlines also breaks at) split the error in two."""
    code, err = _main(["run", "--bogus"], capsys)
    assert code == 2 and err.count("\n") == 1 and "No such option '--bogus'" in err
    code, err = _main(["run", "--set", "a\nb\x0cc=1"], capsys)
    assert code == 2 and err.count("\n") == 1 and "a\\nb\\x0cc" in err
    code, err = _main(["data", "summary", "synthetic-2", "--type-ratio", "nan,1"], capsys)
    assert code == 2 and "type-ratio" in err and err.count("\n") == 1


def test_config_files_that_are_not_flat_tables(tmp_path: Path) -> None:
    """Regression: `tool = 1` raised AttributeError and a >4300-digit integer ValueError."""
    from fedvpa.config import load_toml

    for text in ("tool = 1", "[tool]\nflwr = 3", "num-clients = " + "9" * 5000):
        path = tmp_path / "c.toml"
        path.write_text(text)
        with pytest.raises(ConfigError) as info:
            load_toml(path)
        assert info.value.path == str(path)
