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
