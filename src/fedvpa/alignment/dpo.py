"""z-conditioned DPO with TRL's ``DPOTrainer`` and a PEFT LoRA adapter (the start of
``fedvpa align``'s training step).

What TRL needed, kept as small as possible:

- a collator subclass (:class:`ZPreferenceCollator`) that carries each example's ``z`` next to
  TRL's padded batch;
- a trainer subclass (:class:`ZDPOTrainer`) that keeps the ``z`` column through TRL's dataset
  preparation and sets it on the :class:`ZInjector` around each policy forward. TRL concatenates
  ``[chosen; rejected]`` into one batch, so the ``B`` rows of ``z`` are tiled twice.

The reference is the policy with its adapter off *and* without ``z`` (the base policy): the
reference log-probabilities are precomputed once before training (``precompute_ref_log_probs``)
with the LoRA adapter disabled by TRL and the injector unset by us, so the learned projection
``W`` cannot move the reference.

The projection ``W`` is registered as a submodule of the PEFT model after LoRA wraps it, so it
stays trainable (PEFT freezes everything it finds at wrap time) and the Trainer's optimiser
updates it together with the LoRA matrices.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedvpa.alignment.z_injection import ZInjector, z_scale_of

LORA_R = 8
LORA_ALPHA = 16
LORA_DROPOUT = 0.05
DPO_BETA = 0.1
Z_COLUMN = "z"
# what TRL's tokenised rows hold: the reference log-probabilities depend on these alone
REF_KEY_COLUMNS = ("prompt_ids", "chosen_ids", "rejected_ids")


def _trl() -> tuple[Any, Any, Any]:
    """TRL and PEFT are the ``align`` extra: imported only when stage-2 training runs."""
    from peft import LoraConfig, get_peft_model
    from trl import DPOConfig, DPOTrainer
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    return (LoraConfig, get_peft_model), (DPOConfig, DPOTrainer), DataCollatorForPreference


@dataclass(frozen=True)
class ZPreference:
    """One labelled pair for one group: the selector chose ``chosen`` under ``z``."""

    prompt: str
    chosen: str
    rejected: str
    z: Sequence[float]


def make_z_collator(pad_token_id: int) -> Any:
    """TRL's preference collator plus a ``z [B, d]`` tensor."""
    _, _, base = _trl()

    class ZPreferenceCollator(base):  # type: ignore[misc, valid-type]
        def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
            out = super().torch_call(examples)
            out[Z_COLUMN] = torch.tensor([e[Z_COLUMN] for e in examples], dtype=torch.float32)
            return out

    return ZPreferenceCollator(pad_token_id=pad_token_id)


def make_trainer_class() -> type:
    """``DPOTrainer`` that sets ``z`` on the injector around each forward (built lazily so
    importing this module does not need TRL)."""
    _, (_, dpo_trainer), _ = _trl()

    class ZDPOTrainer(dpo_trainer):  # type: ignore[misc, valid-type]
        injector: ZInjector

        def _set_signature_columns_if_needed(self) -> None:
            super()._set_signature_columns_if_needed()
            if Z_COLUMN not in self._signature_columns:
                self._signature_columns = [*self._signature_columns, Z_COLUMN]

        def _precompute_ref_logps(self, dataset: Any, name: str, batch_size: int) -> Any:
            """TRL's reference pass over each distinct ``(prompt, {reply a, reply b})`` once.

            Every group labels the same sampled replies, so a prompt's rows are one pair in
            the same or in opposite roles under different ``z``; the reference (adapter off,
            no ``z``) cannot tell them apart. With two groups this halves the pass."""
            from datasets import Dataset, concatenate_datasets

            key_of: dict[tuple[Any, ...], int] = {}
            distinct: list[int] = []  # the first row of each distinct pair
            first_swapped: list[bool] = []  # whether that row lists its replies high-low
            source: list[tuple[int, bool]] = []  # per row: its distinct pair, roles reversed
            for i, row in enumerate(dataset.select_columns(list(REF_KEY_COLUMNS))):
                prompt, chosen, rejected = (tuple(row[c]) for c in REF_KEY_COLUMNS)
                swapped = rejected < chosen
                key = (prompt, *sorted((chosen, rejected)))
                if key not in key_of:
                    key_of[key] = len(distinct)
                    distinct.append(i)
                    first_swapped.append(swapped)
                j = key_of[key]
                source.append((j, swapped != first_swapped[j]))
            if len(distinct) == len(dataset):
                return super()._precompute_ref_logps(dataset, name, batch_size)
            done = super()._precompute_ref_logps(dataset.select(distinct), name, batch_size)
            chosen = done["ref_chosen_logps"]
            rejected = done["ref_rejected_logps"]
            ref = {
                "ref_chosen_logps": [rejected[j] if s else chosen[j] for j, s in source],
                "ref_rejected_logps": [chosen[j] if s else rejected[j] for j, s in source],
            }
            return concatenate_datasets([dataset, Dataset.from_dict(ref)], axis=1)

        def compute_ref_log_probs(self, model: Any, inputs: dict[str, Any]) -> Any:
            inputs = dict(inputs)
            inputs.pop(Z_COLUMN, None)
            with self.injector.conditioned(None):  # the reference is the base policy
                return super().compute_ref_log_probs(model, inputs)

        def _compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool) -> Any:
            inputs = dict(inputs)
            z = inputs.pop(Z_COLUMN)
            with self.injector.conditioned(torch.cat([z, z], dim=0)):  # [chosen; rejected]
                return super()._compute_loss(model, inputs, return_outputs)

    return ZDPOTrainer


def lora_config() -> Any:
    """The stage-2 adapter: LoRA on every linear layer, r 8, alpha 16, dropout 0.05."""
    (config_class, _), _, _ = _trl()
    return config_class(
        r=LORA_R,
        lora_alpha=LORA_ALPHA,
        lora_dropout=LORA_DROPOUT,
        target_modules="all-linear",
        task_type="CAUSAL_LM",
    )


def wrap_lora(model: Any) -> Any:
    """``model`` with a fresh adapter (``lora_config``): A random (seed it with
    ``torch.manual_seed``), B zero, so the wrapped policy starts equal to the base policy."""
    (_, get_peft_model), _, _ = _trl()
    return get_peft_model(model, lora_config())


def dpo_arguments(
    out_dir: Path,
    *,
    max_steps: int,
    batch_size: int,
    learning_rate: float,
    seed: int,
    max_length: int = 512,
    progress: bool = True,
    gradient_checkpointing: bool | None = None,
    sft_weight: float = 0.0,
) -> Any:
    """TRL's ``DPOConfig`` as both stage-2 trainers use it: beta 0.1, the reference
    log-probabilities computed once (adapter off), no checkpoints, no reporting.

    ``sft_weight > 0`` adds the chosen replies' mean token NLL with that weight (TRL's ``sft``
    loss next to ``sigmoid``, as in RPO): DPO alone can fit a pair by making the rejected reply
    less likely while the chosen one, which the policy rarely samples, stays rare.

    Gradient checkpointing (TRL 1.16 turns it on by default) recomputes every layer's forward
    pass in the backward one to save activation memory. A 135M policy on short replies needs no
    saving on the CPU, where the recomputation is pure cost (``benchmarks/dpo_step.py``), so it
    is off there unless asked for; on CUDA TRL's default stays, for large policies."""
    _, (dpo_config, _), _ = _trl()
    losses = {"loss_type": ["sigmoid"]}
    if sft_weight > 0:
        losses = {"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, sft_weight]}
    return dpo_config(
        output_dir=str(out_dir),
        beta=DPO_BETA,
        **losses,
        max_steps=max_steps,
        per_device_train_batch_size=batch_size,
        learning_rate=learning_rate,
        precompute_ref_log_probs=True,
        max_length=max_length,
        logging_steps=10,
        save_strategy="no",
        report_to=[],
        seed=seed,
        use_cpu=not torch.cuda.is_available(),
        bf16=torch.cuda.is_available(),
        dataloader_num_workers=0,
        disable_tqdm=not progress,
        gradient_checkpointing=(
            torch.cuda.is_available() if gradient_checkpointing is None else gradient_checkpointing
        ),
    )


def build_z_dpo(
    model: Any,
    tokenizer: Any,
    latent_dim: int,
    pairs: Sequence[ZPreference],
    out_dir: Path,
    *,
    max_steps: int = 100,
    batch_size: int = 4,
    learning_rate: float = 5e-5,
    seed: int = 0,
    max_length: int = 512,
    gradient_checkpointing: bool | None = None,
    sft_weight: float = 0.0,
) -> tuple[Any, ZInjector]:
    """A ready ``ZDPOTrainer`` (LoRA r 8 / alpha 16 / dropout 0.05, beta 0.1) and its injector.

    ``model`` is a plain causal LM (``policy.load_policy``); LoRA wraps it here.
    """
    from datasets import Dataset

    peft_model = wrap_lora(model)
    distinct = torch.tensor(sorted({tuple(float(x) for x in p.z) for p in pairs}))
    injector = ZInjector(latent_dim, int(model.config.hidden_size), z_scale_of(distinct))
    injector.attach(peft_model)
    peft_model.add_module("z_injector", injector)  # trainable, and seen by the optimiser
    dataset = Dataset.from_list(
        [
            {"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected, Z_COLUMN: list(p.z)}
            for p in pairs
        ]
    )
    args = dpo_arguments(
        out_dir,
        max_steps=max_steps,
        batch_size=batch_size,
        learning_rate=learning_rate,
        seed=seed,
        max_length=max_length,
        gradient_checkpointing=gradient_checkpointing,
        sft_weight=sft_weight,
    )
    trainer_class = make_trainer_class()
    trainer_class.injector = injector  # the reference is precomputed inside __init__
    trainer = trainer_class(
        model=peft_model,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        data_collator=make_z_collator(tokenizer.pad_token_id),
    )
    return trainer, injector


def build_plain_dpo(
    model: Any,
    tokenizer: Any,
    pairs: Sequence[tuple[str, str, str]],
    out_dir: Path,
    *,
    max_steps: int,
    batch_size: int,
    learning_rate: float,
    seed: int,
    max_length: int = 512,
    progress: bool = False,
) -> Any:
    """TRL's own ``DPOTrainer`` on ``(prompt, chosen, rejected)`` texts for FedDPO's clients: no
    z, and TRL wraps the plain ``model`` with ``lora_config`` itself.

    Passing a plain model (not a PEFT one) is what keeps the reference the *base* policy: given
    a PEFT model, TRL 1.16 copies its current adapter into a "ref" adapter and uses that, which
    from round 2 on would make every round's reference the last global adapter. The caller
    loads the global adapter into ``trainer.model`` after this returns (the reference
    log-probabilities are already computed, with the adapter off) and ``unload()``s it after.
    """
    from datasets import Dataset

    _, (_, dpo_trainer), _ = _trl()
    dataset = Dataset.from_list([{"prompt": p, "chosen": c, "rejected": r} for p, c, r in pairs])
    args = dpo_arguments(
        out_dir,
        max_steps=max_steps,
        batch_size=batch_size,
        learning_rate=learning_rate,
        seed=seed,
        max_length=max_length,
        progress=progress,
    )
    return dpo_trainer(
        model=model,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=lora_config(),
    )


def lora_arrays(peft_model: Any) -> dict[str, np.ndarray]:
    """The adapter's LoRA matrices (A and B of every wrapped layer) as float32 numpy arrays,
    keyed by PEFT's state-dict names: what FedDPO's clients send and the server averages."""
    from peft import get_peft_model_state_dict

    state = get_peft_model_state_dict(peft_model)
    return {k: v.detach().float().cpu().numpy().copy() for k, v in state.items()}


def load_lora_arrays(peft_model: Any, arrays: dict[str, np.ndarray]) -> None:
    """Set the adapter to ``arrays`` (made by ``lora_arrays`` for the same policy); a missing,
    extra or reshaped matrix is refused rather than half-loaded."""
    from peft import get_peft_model_state_dict, set_peft_model_state_dict

    own = get_peft_model_state_dict(peft_model)
    if set(own) != set(arrays):
        name = sorted(set(own) ^ set(arrays))[0]
        raise ValueError(f"LoRA arrays do not match the adapter (first difference: {name})")
    state = {}
    for key, ref in own.items():
        value = torch.as_tensor(np.asarray(arrays[key]))
        if tuple(value.shape) != tuple(ref.shape):
            raise ValueError(f"LoRA array {key}: shape {tuple(value.shape)} != {tuple(ref.shape)}")
        state[key] = value.to(dtype=ref.dtype, device=ref.device)
    set_peft_model_state_dict(peft_model, state)


def save_z_policy(trainer: Any, injector: ZInjector, folder: Path) -> None:
    """The LoRA adapter and the z projection in one folder (what ``--adapter`` reads)."""
    trainer.model.save_pretrained(str(folder))
    injector.save(folder)
