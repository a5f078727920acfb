"""Text pairs -> embedded tensors: the last stage that ever sees text.

A partition is embedded with ONE cache call over every text of every client, so the model runs
once (length-sorted, full batches) instead of once per client, and a re-run reads everything from
the cache. The result is sliced back into per-client ``ClientTensors`` that the trainers and the
Flower clients load without needing the backbone.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from fedvpa.data.schema import PreferencePair
from fedvpa.data.transcript import last_human_turn
from fedvpa.embeddings.backbone import Backbone
from fedvpa.embeddings.cache import EmbeddingCache
from fedvpa.embeddings.tensors import ClientTensors, PairTensors
from fedvpa.errors import DataFormatError

FORMAT = "fedvpa.client_tensors"
FORMAT_VERSION = 1
_SPLITS = ("context", "train", "test")


class ClientDataLike(Protocol):
    """What ``embed_partition`` reads from ``fedvpa.data.partition.ClientData``."""

    client_id: int
    user_type: str
    context: list[PreferencePair]
    train: list[PreferencePair]
    test: list[PreferencePair]
    unseen: bool


class PartitionLike(Protocol):
    """What ``embed_partition`` reads from ``fedvpa.data.partition.FederatedPartition``."""

    @property
    def clients(self) -> Sequence[ClientDataLike]: ...

    @property
    def user_types(self) -> list[str]: ...


def pair_texts(pair: PreferencePair) -> tuple[str, str]:
    """(text A, text B), each "last human turn + reply".

    Not the whole conversation: MiniLM truncates at 256 tokens, and a long shared history would
    push the replies out of the window and make A and B embed identically.
    """
    turn = last_human_turn(pair.prompt)
    return f"{turn}\n{pair.response_a.strip()}", f"{turn}\n{pair.response_b.strip()}"


def _labels(pairs: Sequence[PreferencePair]) -> torch.Tensor:
    for p in pairs:
        if p.preferred not in (0, 1):
            raise DataFormatError(
                f"preferred must be 0 or 1, got {p.preferred!r}",
                path=p.source or None,
                field="preferred",
            )
    return torch.tensor([1.0 if p.preferred == 0 else 0.0 for p in pairs], dtype=torch.float32)


def _pair_tensors(pairs: Sequence[PreferencePair], emb: np.ndarray) -> PairTensors:
    """Build PairTensors from ``emb`` = [2n, D] laid out A0, B0, A1, B1, ..."""
    t = torch.from_numpy(np.ascontiguousarray(emb, dtype=np.float32))
    return PairTensors(
        emb_a=t[0::2].clone(),
        emb_b=t[1::2].clone(),
        label=_labels(pairs),
        conflict=torch.tensor([bool(p.conflict) for p in pairs], dtype=torch.bool),
        conflict_known=all(p.conflict is not None for p in pairs),
    )


def _flat_texts(pairs: Sequence[PreferencePair]) -> list[str]:
    return [t for p in pairs for t in pair_texts(p)]


def embed_pairs(
    pairs: Sequence[PreferencePair],
    backbone: Backbone,
    cache: EmbeddingCache,
    *,
    batch_size: int = 64,
    progress: bool = True,
) -> PairTensors:
    """Embed pairs; ``label = 1.0`` where A is preferred, ``conflict`` from ``pair.conflict``."""
    emb = cache.embed(_flat_texts(pairs), backbone, batch_size=batch_size, progress=progress)
    return _pair_tensors(pairs, emb)


def embed_partition(
    partition: PartitionLike,
    backbone: Backbone,
    cache: EmbeddingCache,
    *,
    batch_size: int = 64,
    progress: bool = True,
) -> list[ClientTensors]:
    """Embed every client's context/train/test pairs in one cache call, then slice per client."""
    user_types = list(partition.user_types)
    blocks: list[list[PreferencePair]] = []
    for c in partition.clients:
        if c.user_type not in user_types:
            raise DataFormatError(
                f"client {c.client_id} has user type {c.user_type!r}, not in {user_types}",
                field="user_type",
            )
        blocks.extend(list(getattr(c, split)) for split in _SPLITS)
    texts = [t for block in blocks for t in _flat_texts(block)]
    emb = cache.embed(texts, backbone, batch_size=batch_size, progress=progress)

    parts: list[PairTensors] = []
    start = 0
    for block in blocks:
        stop = start + 2 * len(block)
        parts.append(_pair_tensors(block, emb[start:stop]))
        start = stop
    assert start == emb.shape[0]

    out: list[ClientTensors] = []
    for i, c in enumerate(partition.clients):
        context, train, test = parts[3 * i : 3 * i + 3]
        out.append(
            ClientTensors(
                client_id=int(c.client_id),
                user_type=c.user_type,
                type_index=user_types.index(c.user_type),
                unseen=bool(c.unseen),
                context=context,
                train=train,
                test=test,
            )
        )
    return out


def _pairs_to_dict(p: PairTensors) -> dict[str, Any]:
    return {
        "emb_a": p.emb_a.contiguous(),
        "emb_b": p.emb_b.contiguous(),
        "label": p.label.contiguous(),
        "conflict": p.conflict.contiguous(),
        "conflict_known": bool(p.conflict_known),
    }


def _pairs_from_dict(d: Any, path: Path, where: str) -> PairTensors:
    try:
        pt = PairTensors(
            emb_a=d["emb_a"].float(),
            emb_b=d["emb_b"].float(),
            label=d["label"].float(),
            conflict=d["conflict"].bool(),
            conflict_known=bool(d["conflict_known"]),
        )
    except (KeyError, TypeError, AttributeError, ValueError) as e:
        raise DataFormatError(f"malformed pair tensors: {e}", path=str(path), field=where) from e
    if pt.conflict.shape != pt.label.shape:
        raise DataFormatError("conflict and label lengths differ", path=str(path), field=where)
    return pt


def save_client_tensors(
    clients: Sequence[ClientTensors], path: str | Path, *, backbone: str | None = None
) -> None:
    """Write clients as plain tensors/dicts (loadable with ``weights_only=True``), atomically.

    ``backbone`` (its ``name``) is recorded so a reader can refuse data from another backbone.
    """
    path = Path(path)
    payload = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "backbone": backbone,
        "clients": [
            {
                "client_id": int(c.client_id),
                "user_type": c.user_type,
                "type_index": int(c.type_index),
                "unseen": bool(c.unseen),
                **{s: _pairs_to_dict(getattr(c, s)) for s in _SPLITS},
            }
            for c in clients
        ],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_client_tensors(path: str | Path, *, backbone: str | None = None) -> list[ClientTensors]:
    """Read what ``save_client_tensors`` wrote; bad files raise ``DataFormatError``.

    With ``backbone`` given, a file recorded with another backbone name is refused: vectors of two
    backbones are not comparable even when their widths happen to match.
    """
    path = Path(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as e:
        raise DataFormatError("file not found", path=str(path)) from e
    except Exception as e:  # torch raises many types for a garbled file
        raise DataFormatError(f"not a readable tensor file ({e})", path=str(path)) from e
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise DataFormatError(f"not a {FORMAT} file", path=str(path), field="format")
    if payload.get("version") != FORMAT_VERSION:
        raise DataFormatError(
            f"unsupported version {payload.get('version')!r}", path=str(path), field="version"
        )
    if backbone is not None and payload.get("backbone") != backbone:
        raise DataFormatError(
            f"embedded with backbone {payload.get('backbone')!r}, expected {backbone!r}",
            path=str(path),
            field="backbone",
        )
    out: list[ClientTensors] = []
    for i, c in enumerate(payload.get("clients", [])):
        where = f"clients[{i}]"
        try:
            out.append(
                ClientTensors(
                    client_id=int(c["client_id"]),
                    user_type=str(c["user_type"]),
                    type_index=int(c["type_index"]),
                    unseen=bool(c["unseen"]),
                    **{s: _pairs_from_dict(c[s], path, f"{where}.{s}") for s in _SPLITS},
                )
            )
        except (KeyError, TypeError) as e:
            raise DataFormatError(f"missing or bad entry: {e}", path=str(path), field=where) from e
    return out
