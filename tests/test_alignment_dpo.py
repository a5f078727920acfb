"""z-conditioned DPO on a tiny random-init Llama: one TRL step runs and trains the adapter and
the z projection (skips without trl/peft, the ``align`` extra)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("trl")
pytest.importorskip("peft")

from test_alignment_policy import tiny_llama_folder  # noqa: E402

from fedvpa.alignment.dpo import ZPreference, build_z_dpo, save_z_policy  # noqa: E402
from fedvpa.alignment.policy import load_policy  # noqa: E402
from fedvpa.alignment.z_injection import ZInjector  # noqa: E402


def test_one_dpo_step_changes_the_adapter_and_projection(tmp_path: Path) -> None:
    policy = load_policy(tiny_llama_folder(tmp_path / "tiny"), device="cpu")
    # two groups with opposite labels on the same pair (one-hot z, so their gradients on W
    # land in different columns instead of cancelling)
    pairs = [
        ZPreference("w1 w2 ", "w3 w4 w5", "w6 w7", [1.0] + [0.0] * 7)
        if i % 2
        else ZPreference("w1 w2 ", "w6 w7", "w3 w4 w5", [0.0] * 7 + [1.0])
        for i in range(8)
    ]
    trainer, injector = build_z_dpo(
        policy.model, policy.tokenizer, 8, pairs, tmp_path / "out", max_steps=1, batch_size=4,
        learning_rate=1e-2,
    )  # fmt: skip
    lora_before = {
        n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_B" in n
    }
    assert lora_before and injector.is_zero
    trainer.train()
    changed = [
        n for n, p in trainer.model.named_parameters() if n in lora_before
        and not torch.equal(p, lora_before[n])
    ]  # fmt: skip
    assert changed, "no LoRA weight moved"
    assert not injector.is_zero, "the z projection did not train"
    save_z_policy(trainer, injector, tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
    assert torch.equal(ZInjector.load(tmp_path / "adapter").proj.weight, injector.proj.weight)
    # the two one-hot z have root-mean-square coordinate sqrt(1/8); saved with W
    assert injector.z_scale == pytest.approx(8**-0.5)
    assert ZInjector.load(tmp_path / "adapter").z_scale == injector.z_scale


def test_reference_pass_runs_once_per_distinct_pair(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Groups label the same replies, in the same or opposite roles: the reference (adapter off,
    no z) is computed once per distinct pair and given to every row in that row's roles."""
    from trl import DPOTrainer

    policy = load_policy(tiny_llama_folder(tmp_path / "tiny"), device="cpu")
    a, b = [1.0] + [0.0] * 7, [0.0] * 7 + [1.0]
    pairs = [
        ZPreference("w1 w2 ", "w3 w4 w5", "w6 w7", a),
        ZPreference("w1 w2 ", "w6 w7", "w3 w4 w5", b),  # the same pair, roles reversed
        ZPreference("w8 ", "w9", "w10 w11", a),
        ZPreference("w8 ", "w9", "w10 w11", b),  # the same pair, same roles
        ZPreference("w8 ", "w9 w9", "w10 w11", a),  # another pair for the same prompt
    ]
    seen: list[int] = []
    plain = DPOTrainer.compute_ref_log_probs

    def counting(self: object, model: object, inputs: dict) -> object:
        seen.append(int(inputs["input_ids"].shape[0]) // 2)  # rows are [chosen; rejected]
        return plain(self, model, inputs)

    monkeypatch.setattr(DPOTrainer, "compute_ref_log_probs", counting)
    trainer, _ = build_z_dpo(
        policy.model, policy.tokenizer, 8, pairs, tmp_path / "out", max_steps=1, batch_size=2
    )  # fmt: skip
    assert sum(seen) == 3, seen
    data = trainer.train_dataset
    chosen, rejected = data["ref_chosen_logps"], data["ref_rejected_logps"]
    assert chosen[1] == rejected[0] and rejected[1] == chosen[0]
    assert chosen[3] == chosen[2] and rejected[3] == rejected[2]
    assert chosen[4] != chosen[2]
    # the same numbers as TRL's own pass over every row (other batches: float tolerance)
    seen.clear()
    full = DPOTrainer._precompute_ref_logps(
        trainer, data.remove_columns(["ref_chosen_logps", "ref_rejected_logps"]), "check", 2
    )
    assert sum(seen) == 5
    assert torch.allclose(torch.tensor(full["ref_chosen_logps"]), torch.tensor(chosen), atol=1e-4)
    assert torch.allclose(
        torch.tensor(full["ref_rejected_logps"]), torch.tensor(rejected), atol=1e-4
    )


def test_the_sft_term_adds_the_chosen_replies_nll_with_its_weight(tmp_path: Path) -> None:
    """At the first step the policy is its reference, so DPO's loss is exactly log 2 and the
    RPO-style term adds ``w`` times the chosen replies' mean token NLL: linear in ``w``."""
    import math

    from fedvpa.alignment.dpo import dpo_arguments

    plain = dpo_arguments(tmp_path / "a", max_steps=1, batch_size=2, learning_rate=1e-3, seed=0)
    assert plain.loss_type == ["sigmoid"]
    policy = load_policy(tiny_llama_folder(tmp_path / "tiny"), device="cpu")
    pairs = [ZPreference("w1 w2 ", "w3 w4 w5", "w6 w7", [1.0] + [0.0] * 7) for _ in range(4)]
    losses = {}
    for weight in (0.0, 1.0, 2.0):
        torch.manual_seed(0)
        trainer, _ = build_z_dpo(
            policy.model, policy.tokenizer, 8, pairs, tmp_path / f"out{weight}", max_steps=1,
            batch_size=4, learning_rate=1e-3, sft_weight=weight,
        )  # fmt: skip
        losses[weight] = trainer.train().training_loss
        trainer.model.unload()  # the plain policy back for the next build
    assert losses[0.0] == pytest.approx(math.log(2), abs=1e-5)
    nll = losses[1.0] - math.log(2)
    assert nll > 0.5  # a random tiny model is far from its chosen replies
    assert losses[2.0] - math.log(2) == pytest.approx(2 * nll, rel=1e-4)
