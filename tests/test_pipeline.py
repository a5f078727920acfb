"""Pairs and partitions -> tensors: texts, labels, one model pass, exact slicing, save/load."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from fedvpa.data.partition import ClientData, FederatedPartition, partition_pairs
from fedvpa.data.schema import PreferencePair
from fedvpa.data.synthetic import generate_synthetic
from fedvpa.embeddings.cache import EmbeddingCache
from fedvpa.embeddings.pipeline import (
    embed_pairs,
    embed_partition,
    load_client_tensors,
    pair_texts,
    save_client_tensors,
)
from fedvpa.errors import DataFormatError


class CountingBackbone:
    """Deterministic vectors from the text hash; records every call."""

    name = "fake-pipeline"
    dim = 5

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def vector(self, text: str) -> np.ndarray:
        seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
        return np.random.default_rng(seed).standard_normal(self.dim).astype(np.float32)

    def encode(self, texts: list[str], batch_size: int, progress: bool) -> np.ndarray:
        self.calls.append(list(texts))
        return np.stack([self.vector(t) for t in texts]).reshape(len(texts), self.dim)


def pair(
    i: int, preferred: int = 0, conflict: bool | None = None, typ: str = "h"
) -> PreferencePair:
    return PreferencePair(
        prompt=f"\n\nHuman: first question\n\nAssistant: sure\n\nHuman: question {i}\n\nAssistant:",
        response_a=f" answer A{i} ",
        response_b=f"answer B{i}",
        preferred=preferred,
        user_type=typ,
        conflict=conflict,
        source=f"mem:{i}",
    )


def test_pair_texts_use_last_human_turn_and_reply() -> None:
    a, b = pair_texts(pair(7))
    assert a == "question 7\nanswer A7"
    assert b == "question 7\nanswer B7"


def test_embed_pairs_labels_conflicts_and_vectors(tmp_path: Path) -> None:
    bb = CountingBackbone()
    pairs = [pair(0, 0, True), pair(1, 1, False), pair(2, 0, False)]
    pt = embed_pairs(pairs, bb, EmbeddingCache(tmp_path), progress=False)
    assert pt.label.tolist() == [1.0, 0.0, 1.0] and pt.label.dtype == torch.float32
    assert pt.conflict.tolist() == [True, False, False] and pt.conflict_known
    for i, p in enumerate(pairs):
        ta, tb = pair_texts(p)
        np.testing.assert_array_equal(pt.emb_a[i].numpy(), bb.vector(ta))
        np.testing.assert_array_equal(pt.emb_b[i].numpy(), bb.vector(tb))
    unknown = embed_pairs([pair(0), pair(3, 1, True)], bb, EmbeddingCache(tmp_path), progress=False)
    assert not unknown.conflict_known and unknown.conflict.tolist() == [False, True]
    with pytest.raises(DataFormatError, match="mem:9"):
        embed_pairs([pair(9, preferred=2)], bb, EmbeddingCache(tmp_path), progress=False)


def _partition() -> FederatedPartition:
    clients = [
        ClientData(0, "helpful", [pair(0), pair(1, 1)], [pair(2)], [pair(3, 1, True)]),
        ClientData(1, "harmless", [pair(4, 1)], [], [pair(5), pair(1, 1)], unseen=True),
        ClientData(2, "helpful", [], [pair(6)], []),
    ]
    return FederatedPartition(clients, ["harmless", "helpful"])


def test_embed_partition_is_one_model_call_and_slices_exactly(tmp_path: Path) -> None:
    part = _partition()
    bb = CountingBackbone()
    cache = EmbeddingCache(tmp_path)
    out = embed_partition(part, bb, cache, progress=False)
    assert len(bb.calls) == 1 and cache.stats.model_calls == 1
    assert cache.stats.duplicates == 2  # pair(1, 1) appears in two clients: embedded once
    assert [c.client_id for c in out] == [0, 1, 2]
    assert [c.type_index for c in out] == [1, 0, 1]
    assert [c.unseen for c in out] == [False, True, False]
    for ct, cd in zip(out, part.clients, strict=True):
        for split in ("context", "train", "test"):
            pairs, pt = getattr(cd, split), getattr(ct, split)
            assert len(pt) == len(pairs) and pt.emb_a.shape == (len(pairs), 5)
            expected = embed_pairs(pairs, bb, cache, progress=False)
            torch.testing.assert_close(pt.emb_a, expected.emb_a, rtol=0, atol=0)
            torch.testing.assert_close(pt.emb_b, expected.emb_b, rtol=0, atol=0)
            torch.testing.assert_close(pt.label, expected.label)
    assert len(bb.calls) == 1  # the per-split checks above were all cache hits
    assert out[0].num_examples == 3 and len(out[0].labelled) == 3


def test_embed_partition_rejects_unknown_user_type(tmp_path: Path) -> None:
    part = FederatedPartition([ClientData(0, "pirate", [pair(0)], [], [])], ["helpful"])
    with pytest.raises(DataFormatError, match="pirate"):
        embed_partition(part, CountingBackbone(), EmbeddingCache(tmp_path), progress=False)


def test_embed_partition_on_synthetic_data(tmp_path: Path) -> None:
    part = partition_pairs(generate_synthetic(2, 40, seed=1), num_clients=6, pairs_per_client=8)
    bb = CountingBackbone()
    out = embed_partition(part, bb, EmbeddingCache(tmp_path), progress=False)
    assert len(bb.calls) == 1
    for ct, cd in zip(out, part.clients, strict=True):
        assert ct.user_type == cd.user_type
        assert part.user_types[ct.type_index] == cd.user_type
        for split in ("context", "train", "test"):
            pairs, pt = getattr(cd, split), getattr(ct, split)
            want_a = np.stack([bb.vector(pair_texts(p)[0]) for p in pairs]) if pairs else None
            if want_a is not None:
                np.testing.assert_array_equal(pt.emb_a.numpy(), want_a)
            assert pt.label.tolist() == [1.0 - p.preferred for p in pairs]


def test_save_and_load_client_tensors(tmp_path: Path) -> None:
    out = embed_partition(
        _partition(), CountingBackbone(), EmbeddingCache(tmp_path), progress=False
    )
    path = tmp_path / "clients.pt"
    save_client_tensors(out, path, backbone="fake-pipeline")
    raw = torch.load(path, weights_only=True)  # plain tensors and dicts only
    assert raw["backbone"] == "fake-pipeline" and len(raw["clients"]) == 3
    back = load_client_tensors(path, backbone="fake-pipeline")
    for a, b in zip(out, back, strict=True):
        assert (a.client_id, a.user_type, a.type_index, a.unseen) == (
            b.client_id,
            b.user_type,
            b.type_index,
            b.unseen,
        )
        for split in ("context", "train", "test"):
            pa, pb = getattr(a, split), getattr(b, split)
            torch.testing.assert_close(pa.emb_a, pb.emb_a, rtol=0, atol=0)
            torch.testing.assert_close(pa.emb_b, pb.emb_b, rtol=0, atol=0)
            assert pa.label.tolist() == pb.label.tolist()
            assert pa.conflict.tolist() == pb.conflict.tolist()
            assert pa.conflict_known == pb.conflict_known
    with pytest.raises(DataFormatError, match="backbone"):
        load_client_tensors(path, backbone="minilm:other")
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(DataFormatError, match=str(path)):
        load_client_tensors(path)
    with pytest.raises(DataFormatError, match="not found"):
        load_client_tensors(tmp_path / "missing.pt")
