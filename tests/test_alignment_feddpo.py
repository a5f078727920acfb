"""FedDPO, the monolithic stage-2 baseline: its clients' data (own pairs, never test pairs, no
unseen client), the LoRA arrays it federates, one local round, Flower's FedAvg over adapters,
and ``fedvpa align --feddpo`` end to end on a real Flower simulation with a tiny random Llama.
The trl/peft parts skip without the ``align`` extra."""
# ruff: noqa: F811 - pytest fixtures imported from test_alignment_rank are test parameters here

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_alignment_policy import tiny_llama_folder
from test_alignment_rank import _cache, stage1  # noqa: F401 - shared fixtures

from fedvpa.alignment.feddpo import (
    FedDPOSettings,
    choose_clients,
    client_texts,
    stage1_partition,
)
from fedvpa.errors import ConfigError


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_llama_folder(tmp_path_factory.mktemp("tiny-llama"))


def _needs_trl() -> None:
    pytest.importorskip("trl")
    pytest.importorskip("peft")


def test_settings_check_ranges_and_survive_a_config_record() -> None:
    s = FedDPOSettings(stage1_run="/x", rounds=3, learning_rate=1e-4)
    assert FedDPOSettings.from_config(s.to_config()) == s  # policy None -> "" -> None
    with pytest.raises(ConfigError, match="feddpo-rounds"):
        FedDPOSettings(stage1_run="/x", rounds=0)
    with pytest.raises(ConfigError, match="feddpo-lr"):
        FedDPOSettings(stage1_run="/x", learning_rate=0.0)


def test_clients_are_seen_seeded_and_read_only_their_labelled_pairs(stage1: Path) -> None:
    partition = stage1_partition(stage1)
    chosen = choose_clients(partition, 5, seed=0)
    assert chosen == choose_clients(partition, 5, seed=0)
    assert chosen != choose_clients(partition, 5, seed=1)
    by_id = {c.client_id: c for c in partition.clients}
    for info in chosen:
        client = by_id[info.client_id]
        assert not client.unseen and info.user_type == client.user_type
        texts = client_texts(str(stage1), info.client_id)
        assert len(texts) == info.pairs == len(client.context) + len(client.train)
        own = {(p.prompt, p.chosen, p.rejected) for p in [*client.context, *client.train]}
        test = {(p.prompt, p.chosen, p.rejected) for p in client.test}
        assert set(texts) == own and not set(texts) & test
    seen = sum(not c.unseen for c in partition.clients)
    with pytest.raises(ConfigError, match="feddpo-clients"):
        choose_clients(partition, seen + 1, seed=0)


def test_lora_arrays_round_trip_and_a_wrong_adapter_is_refused(tiny: Path) -> None:
    _needs_trl()
    from fedvpa.alignment.dpo import load_lora_arrays, lora_arrays, wrap_lora
    from fedvpa.alignment.policy import load_policy

    torch.manual_seed(0)
    model = wrap_lora(load_policy(tiny, device="cpu").model)
    arrays = lora_arrays(model)
    assert arrays and all(("lora_A" in k) or ("lora_B" in k) for k in arrays)
    assert all(not a.any() for k, a in arrays.items() if "lora_B" in k)  # starts as the base
    moved = {k: a + 0.5 for k, a in arrays.items()}
    load_lora_arrays(model, moved)
    assert all(np.array_equal(lora_arrays(model)[k], moved[k]) for k in arrays)
    with pytest.raises(ValueError, match="do not match"):
        load_lora_arrays(model, dict(list(arrays.items())[1:]))
    key = next(iter(arrays))
    with pytest.raises(ValueError, match="shape"):
        load_lora_arrays(model, {**arrays, key: np.zeros((1, 1), dtype=np.float32)})


def test_one_local_round_moves_the_adapter(stage1: Path, tiny: Path, tmp_path: Path) -> None:
    _needs_trl()
    from fedvpa.alignment.feddpo import initial_adapter, local_dpo

    settings = FedDPOSettings(
        stage1_run=str(stage1), policy=str(tiny), local_steps=1, batch_size=2, learning_rate=1e-2
    )
    start = initial_adapter(settings)
    client = choose_clients(stage1_partition(stage1), 1, seed=0)[0]
    pairs = client_texts(str(stage1), client.client_id)
    new, metrics = local_dpo(
        settings, start, pairs, server_round=1, client_id=client.client_id, work_dir=tmp_path
    )
    assert set(new) == set(start)
    assert any(not np.array_equal(new[k], start[k]) for k in start if "lora_B" in k)
    assert metrics["num-examples"] == len(pairs) and np.isfinite(metrics["train-loss"])


def test_align_with_feddpo_on_flower_end_to_end(stage1: Path, tiny: Path, tmp_path: Path) -> None:
    """Three Flower clients, two rounds: every round averages all three adapters, and the
    baseline is evaluated on the same prompts and shown in the report next to each z."""
    _needs_trl()
    from fedvpa.alignment.align import run_align
    from fedvpa.alignment.options import AlignOptions

    out = tmp_path / "align"
    opts = AlignOptions(
        policy=str(tiny), num_prompts=6, eval_prompts=5, max_new_tokens=6, dpo_steps=2,
        batch_size=2, gen_batch_size=4, judge_pairs=80, feddpo=True, feddpo_clients=3,
        feddpo_rounds=2, feddpo_local_steps=1, examples=2,
    )  # fmt: skip
    threads = torch.get_num_threads()
    try:
        run_align(stage1, opts, out=out, log=lambda _: None)
    finally:
        torch.set_num_threads(threads)
    info = json.loads((out / "feddpo.json").read_text())
    assert info["enabled"] and info["replies_per_round"] == {"1": 3, "2": 3}
    assert len(info["clients"]) == 3 and info["dpo_steps"] == 6
    assert [r["round"] for r in info["rounds"]] == [1, 2]
    assert info["adapter_bytes_per_client_per_round"] > 0
    assert (out / "feddpo-adapter" / "adapter_config.json").is_file()
    variants = {
        json.loads(line)["variant"]
        for line in (out / "eval_generations.jsonl").read_text().splitlines()
    }
    assert variants == {"base", "helpful", "harmless", "feddpo"}
    report = json.loads((out / "report.json").read_text())
    assert report["baselines"] == ["feddpo"]
    assert all("feddpo" in rates for rates in report["win_rate_vs_base"].values())
    assert {s["judge"] for s in report["against_baseline"]} == {"helpful", "harmless"}
    md = (out / "report.md").read_text()
    assert "FedDPO (no z)" in md and "FedAvg of the LoRA A and B" in md


def test_too_few_seen_clients_for_feddpo_is_refused_before_any_step(
    stage1: Path, tiny: Path, tmp_path: Path
) -> None:
    from fedvpa.alignment.align import run_align
    from fedvpa.alignment.options import AlignOptions

    out = tmp_path / "align"
    opts = AlignOptions(policy=str(tiny), quick=True, feddpo=True, feddpo_clients=500)
    with pytest.raises(ConfigError, match="feddpo-clients"):
        run_align(stage1, opts, out=out, log=lambda _: None)
    assert not out.exists()


def test_the_reference_is_the_base_policy_in_every_round(
    stage1: Path, tiny: Path, tmp_path: Path
) -> None:
    """From round 2 the global adapter is not the base. DPO's loss at the first step is log 2
    exactly when the policy equals its reference; with the base as reference it is not (a
    reference copied from the global adapter, TRL's default for a PEFT model, would give log 2)."""
    _needs_trl()
    from fedvpa.alignment.feddpo import initial_adapter, local_dpo

    settings = FedDPOSettings(
        stage1_run=str(stage1), policy=str(tiny), local_steps=1, batch_size=2,
        learning_rate=1e-12,
    )  # fmt: skip
    start = initial_adapter(settings)
    moved = {k: (a + 0.05 if "lora_B" in k else a) for k, a in start.items()}
    client = choose_clients(stage1_partition(stage1), 1, seed=0)[0]
    pairs = client_texts(str(stage1), client.client_id)
    common = {"server_round": 2, "client_id": client.client_id, "work_dir": tmp_path}
    _, at_base = local_dpo(settings, start, pairs, **common)
    _, away = local_dpo(settings, moved, pairs, **common)
    assert at_base["train-loss"] == pytest.approx(np.log(2), abs=1e-4)
    assert abs(away["train-loss"] - np.log(2)) > 1e-3


def test_the_server_refuses_a_reply_with_anything_undeclared() -> None:
    """The message audit: a FedDPO client sends the adapter's matrices and three numbers."""
    from types import SimpleNamespace

    from flwr.app import ConfigRecord, MetricRecord, RecordDict

    from fedvpa.federation.feddpo_app import CountingFedAvg
    from fedvpa.federation.messages import arrays_to_record

    adapter = {"a.lora_A.weight": np.zeros((2, 3), np.float32), "a.lora_B.weight": np.zeros(2)}
    strategy = CountingFedAvg(expected=1, fraction_evaluate=0.0)
    strategy._sent = set(adapter)
    metrics = {"num-examples": 3.0, "train-loss": 0.6, "train-seconds": 1.0}

    def reply(arrays: dict, extra: dict | None = None, **records: object) -> SimpleNamespace:
        sent = MetricRecord({**metrics, **(extra or {})})
        content = RecordDict({"arrays": arrays_to_record(arrays), "metrics": sent, **records})
        return SimpleNamespace(content=content)

    assert strategy.audit(reply(adapter)) is None  # type: ignore[arg-type]
    assert "metrics" in strategy.audit(reply(adapter, {"pair-0-label": 1.0}))  # type: ignore[arg-type, operator]
    assert "arrays" in strategy.audit(reply({**adapter, "emb": np.ones(4)}))  # type: ignore[arg-type, operator]
    text = ConfigRecord({"prompt": "how do I pick a lock?"})
    assert "records" in strategy.audit(reply(adapter, text=text))  # type: ignore[arg-type, operator]
