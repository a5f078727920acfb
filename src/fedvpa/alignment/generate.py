"""Generation under a chosen ``z``: the policy, its z projection and (after ``fedvpa align``) its
LoRA adapter."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedvpa.alignment.policy import LoadedPolicy
from fedvpa.alignment.z_injection import META_FILE, ZInjector
from fedvpa.errors import ConfigError

UNTRAINED_NOTE = (
    "note: no trained z projection (untrained = zero): z has no effect on this policy until "
    "`fedvpa align` trains it; the reply is the base policy's."
)


@dataclass
class ConditionedPolicy:
    policy: LoadedPolicy
    injector: ZInjector
    adapter: Path | None

    @property
    def z_has_effect(self) -> bool:
        return not self.injector.is_zero


def condition_policy(
    policy: LoadedPolicy, latent_dim: int, adapter: str | Path | None = None
) -> ConditionedPolicy:
    """Attach the z injection: the trained one in ``adapter`` (with its LoRA weights when the
    folder holds a PEFT adapter), else a fresh zero projection."""
    model = policy.model
    if adapter is None:
        injector = ZInjector(latent_dim, policy.hidden_size)
        return ConditionedPolicy(policy, injector.attach(model), None)
    folder = Path(adapter).expanduser()
    if not folder.is_dir():
        raise ConfigError("no such adapter folder", path=str(folder), field="--adapter")
    if (folder / "adapter_config.json").is_file():
        try:
            from peft import PeftModel
        except ImportError as exc:
            raise ConfigError(
                "a LoRA adapter needs peft (bash scripts/install.sh test,align)",
                field="--adapter",
            ) from exc
        model = PeftModel.from_pretrained(model, str(folder))
        model.eval()
        policy.model = model
    if not (folder / META_FILE).is_file():
        raise ConfigError("adapter folder has no z projection", path=str(folder), field="--adapter")
    injector = ZInjector.load(folder)
    if injector.latent_dim != latent_dim or injector.hidden_size != policy.hidden_size:
        raise ConfigError(
            f"z projection {injector.latent_dim} -> {injector.hidden_size} does not fit this "
            f"run (d = {latent_dim}) and policy (hidden {policy.hidden_size})",
            path=str(folder),
            field="--adapter",
        )
    injector.to(next(policy.model.parameters()).device)
    return ConditionedPolicy(policy, injector.attach(policy.model), folder)


def prompt_ids(tokenizer: Any, prompt: str) -> dict[str, torch.Tensor]:
    """The prompt exactly as ``fedvpa align`` renders it for sampling and DPO
    (``align.render_prompt``: a ``Human: ... Assistant: ...`` transcript becomes the chat
    turns it holds, under the policy's chat template when it has one). Wrapping a whole
    transcript as one user message, as this did before, showed the aligned policy a layout
    it was never trained on."""
    from fedvpa.alignment.prompts import render_prompt

    templated = bool(getattr(tokenizer, "chat_template", None))
    enc = tokenizer(
        render_prompt(tokenizer, prompt), return_tensors="pt", add_special_tokens=not templated
    )
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


def generate_reply(
    conditioned: ConditionedPolicy,
    z: np.ndarray | None,
    prompt: str,
    *,
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    seed: int = 0,
) -> str:
    """One reply under ``z`` (greedy at temperature 0, so the same z gives the same reply and
    two z's can be compared; sampled otherwise, seeded)."""
    policy = conditioned.policy
    tokenizer = policy.tokenizer
    device = next(policy.model.parameters()).device
    ids = {k: v.to(device) for k, v in prompt_ids(tokenizer, prompt).items()}
    kwargs: dict[str, Any] = {
        "max_new_tokens": max_new_tokens,
        "pad_token_id": tokenizer.pad_token_id,
    }
    if temperature > 0:
        kwargs.update(do_sample=True, temperature=temperature)
    else:
        kwargs.update(do_sample=False)
    zt = None if z is None else torch.as_tensor(z, dtype=torch.float32)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        with conditioned.injector.conditioned(zt), torch.no_grad():
            out = policy.model.generate(**ids, **kwargs)
    return tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True).strip()
