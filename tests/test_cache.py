"""The embedding cache: warm runs skip the model, corrupt files are rebuilt, never served."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import numpy as np
import pytest

from fedvpa.embeddings.backbone import MiniLMBackbone
from fedvpa.embeddings.cache import (
    SHARD_SUFFIX,
    CacheCorruptionWarning,
    EmbeddingCache,
    default_cache_root,
    encode_shard,
    text_digest,
)
from fedvpa.errors import ConfigError, DataFormatError


class CountingBackbone:
    """Deterministic vectors from the text hash; records every text it is asked to embed."""

    def __init__(self, name: str = "fake", dim: int = 4, salt: str = "") -> None:
        self.name = name
        self.dim = dim
        self.salt = salt
        self.calls: list[list[str]] = []

    def vector(self, text: str) -> np.ndarray:
        seed = int.from_bytes(hashlib.sha256((self.salt + text).encode()).digest()[:8], "little")
        return np.random.default_rng(seed).standard_normal(self.dim).astype(np.float32)

    def encode(self, texts: list[str], batch_size: int, progress: bool) -> np.ndarray:
        self.calls.append(list(texts))
        return np.stack([self.vector(t) for t in texts]).reshape(len(texts), self.dim)

    @property
    def seen(self) -> list[str]:
        return [t for call in self.calls for t in call]


def expected(bb: CountingBackbone, texts: list[str]) -> np.ndarray:
    return np.stack([bb.vector(t) for t in texts])


def shard_files(root: Path) -> list[Path]:
    return sorted(root.rglob(f"*{SHARD_SUFFIX}"))


TEXTS = ["alpha", "beta", "gamma", "delta"]


def test_warm_cache_makes_no_model_call(tmp_path: Path) -> None:
    bb = CountingBackbone()
    cold = EmbeddingCache(tmp_path).embed(TEXTS, bb, progress=False)
    assert bb.calls == [TEXTS]
    np.testing.assert_array_equal(cold, expected(bb, TEXTS))

    rerun = EmbeddingCache(tmp_path)  # a new process would start from this state
    warm = rerun.embed(TEXTS, bb, progress=False)
    assert len(bb.calls) == 1
    assert warm.dtype == np.float32 and warm.shape == (4, 4)
    np.testing.assert_array_equal(warm, cold)
    assert (rerun.stats.hits, rerun.stats.misses, rerun.stats.model_calls) == (4, 0, 0)


def test_only_new_texts_go_to_the_model(tmp_path: Path) -> None:
    bb = CountingBackbone()
    cache = EmbeddingCache(tmp_path)
    cache.embed(TEXTS[:2], bb, progress=False)
    out = EmbeddingCache(tmp_path).embed(TEXTS, bb, progress=False)
    assert bb.calls == [TEXTS[:2], TEXTS[2:]]
    np.testing.assert_array_equal(out, expected(bb, TEXTS))


def test_order_preserved_with_duplicates(tmp_path: Path) -> None:
    bb = CountingBackbone()
    cache = EmbeddingCache(tmp_path)
    texts = ["b", "a", "b", "c", "a", "a"]
    out = cache.embed(texts, bb, progress=False)
    assert bb.calls == [["b", "a", "c"]]  # each distinct text once, first-seen order
    np.testing.assert_array_equal(out, expected(bb, texts))
    assert cache.stats.duplicates == 3
    # Mixed hits and misses keep the caller's order too.
    more = ["d", "c", "b", "d"]
    np.testing.assert_array_equal(cache.embed(more, bb, progress=False), expected(bb, more))
    assert bb.calls[-1] == ["d"]
    # Mutating a result must not change what the cache serves next time.
    out[:] = 0
    np.testing.assert_array_equal(cache.embed(["a"], bb, progress=False)[0], bb.vector("a"))


def test_empty_input(tmp_path: Path) -> None:
    bb = CountingBackbone(dim=6)
    out = EmbeddingCache(tmp_path).embed([], bb, progress=False)
    assert out.shape == (0, 6) and out.dtype == np.float32 and bb.calls == []


def test_backbone_names_do_not_collide(tmp_path: Path) -> None:
    one = CountingBackbone("model-one", salt="1")
    two = CountingBackbone("model-two", salt="2")
    cache = EmbeddingCache(tmp_path)
    a = cache.embed(TEXTS, one, progress=False)
    b = cache.embed(TEXTS, two, progress=False)
    assert len(two.calls) == 1  # the first model's vectors were not reused
    np.testing.assert_array_equal(a, expected(one, TEXTS))
    np.testing.assert_array_equal(b, expected(two, TEXTS))
    np.testing.assert_array_equal(EmbeddingCache(tmp_path).embed(TEXTS, one, progress=False), a)
    assert len(one.calls) == 1


def _corrupt_truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 7])


def _corrupt_flip_vector_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))


def _corrupt_header(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[:8] = b"garbage!"
    path.write_bytes(bytes(data))


def _corrupt_empty(path: Path) -> None:
    path.write_bytes(b"")


@pytest.mark.parametrize(
    "corrupt",
    [_corrupt_truncate, _corrupt_flip_vector_byte, _corrupt_header, _corrupt_empty],
    ids=["truncated", "flipped-byte", "bad-magic", "empty"],
)
def test_corrupt_shard_is_detected_and_rebuilt(tmp_path: Path, corrupt) -> None:
    bb = CountingBackbone()
    EmbeddingCache(tmp_path).embed(TEXTS, bb, progress=False)
    (shard,) = shard_files(tmp_path)
    corrupt(shard)

    cache = EmbeddingCache(tmp_path)
    with pytest.warns(CacheCorruptionWarning, match="corrupt"):
        out = cache.embed(TEXTS, bb, progress=False)
    np.testing.assert_array_equal(out, expected(bb, TEXTS))
    assert bb.calls == [TEXTS, TEXTS] and cache.stats.corrupt_files == 1
    # Rebuilt: the next run is warm again and silent.
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_array_equal(
            EmbeddingCache(tmp_path).embed(TEXTS, bb, progress=False), out
        )
    assert len(bb.calls) == 2


def test_wrong_width_shard_is_never_served(tmp_path: Path) -> None:
    narrow = CountingBackbone("same-name", dim=3)
    EmbeddingCache(tmp_path).embed(TEXTS, narrow, progress=False)
    wide = CountingBackbone("same-name", dim=5)
    with pytest.warns(CacheCorruptionWarning, match="width"):
        out = EmbeddingCache(tmp_path).embed(TEXTS, wide, progress=False)
    assert out.shape == (4, 5)
    np.testing.assert_array_equal(out, expected(wide, TEXTS))


def test_shard_of_another_backbone_is_rejected(tmp_path: Path) -> None:
    """A shard copied into the wrong folder (or a folder-name collision) is not trusted."""
    bb = CountingBackbone("mine")
    cache = EmbeddingCache(tmp_path)
    cache.embed(["x"], bb, progress=False)
    (shard,) = shard_files(tmp_path)
    alien_vec = np.full((1, 4), 9.0, dtype=np.float32)
    keys = np.frombuffer(text_digest("y"), dtype=np.uint8).reshape(1, 32)
    (shard.parent / f"0-alien{SHARD_SUFFIX}").write_bytes(encode_shard("other", keys, alien_vec))
    with pytest.warns(CacheCorruptionWarning, match="another backbone"):
        out = EmbeddingCache(tmp_path).embed(["y"], bb, progress=False)
    np.testing.assert_array_equal(out[0], bb.vector("y"))


def test_non_finite_model_output_is_not_cached(tmp_path: Path) -> None:
    class NaNBackbone(CountingBackbone):
        def encode(self, texts: list[str], batch_size: int, progress: bool) -> np.ndarray:
            out = super().encode(texts, batch_size, progress)
            out[0, 0] = np.nan
            return out

    with pytest.raises(RuntimeError, match="non-finite"):
        EmbeddingCache(tmp_path).embed(TEXTS, NaNBackbone(), progress=False)
    assert shard_files(tmp_path) == []


def test_chunks_and_compaction_keep_every_vector(tmp_path: Path) -> None:
    bb = CountingBackbone()
    cache = EmbeddingCache(tmp_path, flush_every=3, max_shards=2)
    texts = [f"t{i}" for i in range(10)]
    cache.embed(texts[:7], bb, progress=False)  # chunks of 3, 3, 1 -> merged into one shard
    assert [len(c) for c in bb.calls] == [3, 3, 1]
    assert len(shard_files(tmp_path)) == 1
    cache.embed(texts[7:], bb, progress=False)
    out = EmbeddingCache(tmp_path).embed(texts, bb, progress=False)
    np.testing.assert_array_equal(out, expected(bb, texts))
    assert len(bb.seen) == 10


def test_second_cache_object_sees_shards_written_by_the_first(tmp_path: Path) -> None:
    bb = CountingBackbone()
    reader, writer = EmbeddingCache(tmp_path), EmbeddingCache(tmp_path)
    reader.embed(["a"], bb, progress=False)
    writer.embed(["b"], bb, progress=False)
    reader.embed(["a", "b"], bb, progress=False)
    assert bb.seen == ["a", "b"]


def test_stale_temp_files_are_removed_young_ones_kept(tmp_path: Path) -> None:
    bb = CountingBackbone()
    EmbeddingCache(tmp_path).embed(["a"], bb, progress=False)
    (shard,) = shard_files(tmp_path)
    old, young = shard.parent / ".tmp-old", shard.parent / ".tmp-young"
    old.write_bytes(b"x")
    young.write_bytes(b"x")
    os.utime(old, (time.time() - 3 * 86400,) * 2)
    EmbeddingCache(tmp_path).embed(["a"], bb, progress=False)
    assert not old.exists() and young.exists()


def test_bad_input_and_roots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = EmbeddingCache(tmp_path)
    with pytest.raises(DataFormatError, match="text 1"):
        cache.embed(["ok", None], CountingBackbone(), progress=False)  # type: ignore[list-item]
    with pytest.raises(ConfigError):
        EmbeddingCache("/work/shared/data/cache")
    monkeypatch.setenv("FEDVPA_CACHE", str(tmp_path / "c"))
    assert default_cache_root() == tmp_path / "c" / "embeddings"
    monkeypatch.delenv("FEDVPA_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert default_cache_root() == tmp_path / "x" / "fedvpa" / "embeddings"


def test_real_backbone_warm_run_never_loads_the_model(tmp_path: Path) -> None:
    texts = ["How do I bake bread?\nMix flour, water, yeast.", "Tell me a joke.\nNo."]
    cold_bb = MiniLMBackbone("cpu")
    cold = EmbeddingCache(tmp_path).embed(texts + texts[:1], cold_bb, progress=False)
    assert cold.shape == (3, 384) and cold_bb._model is not None
    np.testing.assert_array_equal(cold[0], cold[2])

    warm_bb = MiniLMBackbone("cpu")
    cache = EmbeddingCache(tmp_path)
    warm = cache.embed(texts, warm_bb, progress=False)
    assert warm_bb._model is None and cache.stats.model_calls == 0
    np.testing.assert_array_equal(warm, cold[:2])
    np.testing.assert_allclose(warm, cold_bb.encode(texts, 2, False), atol=1e-6)


def _write_pairs(path: Path, flip: bool) -> None:
    import json

    rows = []
    for t in ("a", "b"):
        for i in range(40):
            good, bad = f"answer {i} for {t}", f"other {i} for {t}"
            chosen, rejected = (bad, good) if (t == "b") != flip else (good, bad)
            rows.append({"prompt": f"question {i} {t}", "chosen": chosen, "rejected": rejected,
                         "type": t})  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_prepared_tensors_of_a_data_file_edited_in_place_are_rebuilt(tmp_path: Path) -> None:
    """Regression: prepared client tensors are keyed by the data's path, so after the file was
    edited in place they were reused, embeddings of the old texts under the new partition."""
    import torch

    from fedvpa.experiment import ExperimentConfig, prepare_clients

    data = tmp_path / "pairs.jsonl"

    def prepare(cache: Path):
        flat = {"data": str(data), "num-clients": 10, "pairs-per-client": 6,
                "cache-dir": str(cache)}  # fmt: skip
        exp = ExperimentConfig.from_flat(flat, source="test")
        return prepare_clients(exp.data, exp.embedding, 0, progress=False)

    def same(a, b) -> bool:
        return all(
            torch.equal(x.context.emb_a, y.context.emb_a)
            and torch.equal(x.test.label, y.test.label)
            for x, y in zip(a.clients, b.clients, strict=True)
        )

    _write_pairs(data, flip=False)
    first = prepare(tmp_path / "cache")
    stamp = first.path.with_name(first.path.name + ".partition")
    assert stamp.is_file()
    built = first.path.stat().st_mtime_ns
    again = prepare(tmp_path / "cache")
    assert again.path == first.path and again.path.stat().st_mtime_ns == built  # reused
    _write_pairs(data, flip=True)  # every chosen and rejected exchanged, same path
    edited = prepare(tmp_path / "cache")
    assert edited.path == first.path  # same key: a resumed run's identity is unchanged
    assert same(edited, prepare(tmp_path / "fresh")) and not same(edited, first)
    # Tensors without a digest (an older version's) are not trusted either.
    stamp.unlink()
    rebuilt = prepare(tmp_path / "cache")
    assert stamp.is_file() and same(rebuilt, edited)


def test_backbone_identity_follows_a_local_checkpoint_rewritten_in_place(tmp_path: Path) -> None:
    from fedvpa.embeddings.backbone import backbone_identity

    ckpt = tmp_path / "model"
    ckpt.mkdir()
    (ckpt / "config.json").write_text("{}")
    (ckpt / "model.safetensors").write_bytes(b"\0" * 16)
    first = backbone_identity(f"st:{ckpt}")
    assert first.startswith(f"st:{ckpt}#") and backbone_identity(f"st:{ckpt}") == first
    (ckpt / "model.safetensors").write_bytes(b"\0" * 32)  # weights rewritten in place
    assert backbone_identity(f"st:{ckpt}") != first
    assert backbone_identity(f"causal-lm:{ckpt}").startswith(f"causal-lm:{ckpt}#")
    assert backbone_identity("minilm") == "minilm"  # pinned by its package version
    assert backbone_identity("st:org/model") == "st:org/model"  # a hub name: no files here


def test_prepared_tensors_follow_the_backbones_identity(tmp_path: Path, monkeypatch) -> None:
    """A local checkpoint rewritten in place keeps its spec (the tensors' key) but not its
    identity: the tensors are rebuilt, not reused."""
    import fedvpa.embeddings.backbone as backbone
    from fedvpa.experiment import ExperimentConfig, prepare_clients

    data = tmp_path / "pairs.jsonl"
    _write_pairs(data, flip=False)
    flat = {"data": str(data), "num-clients": 10, "pairs-per-client": 6,
            "cache-dir": str(tmp_path / "cache")}  # fmt: skip
    exp = ExperimentConfig.from_flat(flat, source="test")
    first = prepare_clients(exp.data, exp.embedding, 0, progress=False)
    built = first.path.stat().st_mtime_ns
    assert prepare_clients(exp.data, exp.embedding, 0, progress=False).path.stat().st_mtime_ns == (
        built
    )
    time.sleep(0.01)
    monkeypatch.setattr(backbone, "backbone_identity", lambda spec: f"{spec}#rewritten")
    again = prepare_clients(exp.data, exp.embedding, 0, progress=False)
    assert again.path == first.path and again.path.stat().st_mtime_ns != built
