"""On-disk embedding cache: a backbone runs once per distinct text, ever.

Layout: ``<root>/<sha256(backbone.name)[:16]>/`` holds ``backbone.json`` (the full name, for
people) and shard files ``*.emb``, each a self-checking block of (text digest, vector) rows:

    magic "FVPAEMB1" | n (u64) | dim (u64) | sha256(backbone name) | sha256(everything else)
    | n x 32-byte SHA-256 text digests | n x dim float32 little-endian

Each call that misses writes one new shard (temp file + ``os.replace``, so a reader never sees a
half-written file and concurrent writers never clobber each other); when a backbone has more
than ``max_shards`` shards they are merged into one. A shard whose size, magic, backbone, width
or checksum is wrong is reported once, deleted, and its texts are embedded again: the cache may
cost time, never correctness.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import time
import uuid
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fedvpa.embeddings.backbone import Backbone
from fedvpa.errors import ConfigError, DataFormatError

MAGIC = b"FVPAEMB1"
_HEADER = struct.Struct("<8sQQ32s32s")
_DIGEST = 32
SHARD_SUFFIX = ".emb"
_TMP_PREFIX = ".tmp-"
_FORBIDDEN_ROOTS = (Path("/work/shared"),)


class CacheCorruptionWarning(UserWarning):
    """A cache file was unreadable or inconsistent and is being rebuilt."""


def default_cache_root() -> Path:
    """``$FEDVPA_CACHE/embeddings``, else ``$XDG_CACHE_HOME/fedvpa/embeddings`` (~/.cache)."""
    env = os.environ.get("FEDVPA_CACHE")
    if env:
        return Path(env).expanduser() / "embeddings"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "fedvpa" / "embeddings"


def text_digest(text: str) -> bytes:
    # surrogatepass: scraped text can hold lone surrogates; they must hash, not crash.
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()


def _name_digest(name: str) -> bytes:
    return hashlib.sha256(name.encode("utf-8")).digest()


def _checksum(n: int, dim: int, keys: bytes, vecs: bytes) -> bytes:
    h = hashlib.sha256(struct.pack("<QQ", n, dim))
    h.update(keys)
    h.update(vecs)
    return h.digest()


def encode_shard(name: str, keys: np.ndarray, vecs: np.ndarray) -> bytes:
    """Serialise ``keys`` [n, 32] uint8 and ``vecs`` [n, dim] float32 into one shard blob."""
    n, dim = vecs.shape
    kb = np.ascontiguousarray(keys, dtype=np.uint8).tobytes()
    vb = np.ascontiguousarray(vecs, dtype="<f4").tobytes()
    head = _HEADER.pack(MAGIC, n, dim, _name_digest(name), _checksum(n, dim, kb, vb))
    return head + kb + vb


class ShardError(ValueError):
    """Why a shard blob was rejected (message is the reason)."""


def decode_shard(blob: bytes, name: str, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Parse and verify a shard blob; raise ``ShardError`` saying what is wrong."""
    if len(blob) < _HEADER.size:
        raise ShardError(f"truncated header ({len(blob)} bytes)")
    magic, n, file_dim, name_hash, checksum = _HEADER.unpack_from(blob)
    if magic != MAGIC:
        raise ShardError("bad magic")
    if name_hash != _name_digest(name):
        raise ShardError("written by another backbone")
    expected = _HEADER.size + n * _DIGEST + n * file_dim * 4
    if len(blob) != expected:
        raise ShardError(f"size {len(blob)} != {expected} for n={n}, dim={file_dim}")
    if file_dim != dim:
        raise ShardError(f"vector width {file_dim} != backbone width {dim}")
    kb = blob[_HEADER.size : _HEADER.size + n * _DIGEST]
    vb = blob[_HEADER.size + n * _DIGEST :]
    if _checksum(n, file_dim, kb, vb) != checksum:
        raise ShardError("checksum mismatch")
    keys = np.frombuffer(kb, dtype=np.uint8).reshape(n, _DIGEST)
    vecs = np.frombuffer(vb, dtype="<f4").reshape(n, file_dim)
    if not np.isfinite(vecs).all():  # cannot pass the checksum unless written so; still refuse
        raise ShardError("non-finite values")
    return keys, vecs


@dataclass
class CacheStats:
    """Counters since the cache object was created.

    ``hits``/``misses`` count distinct texts per call (a duplicate inside one call is counted in
    ``duplicates`` instead); ``model_calls`` counts ``backbone.encode`` calls and
    ``texts_embedded`` the texts they were given.
    """

    hits: int = 0
    misses: int = 0
    duplicates: int = 0
    model_calls: int = 0
    texts_embedded: int = 0
    corrupt_files: int = 0
    shards_written: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass
class _Shard:
    vecs: np.ndarray  # [n, dim] float32, read-only


@dataclass
class _Store:
    """What is known on disk for one backbone: its shards and a text-digest index into them."""

    directory: Path
    name: str
    dim: int
    shards: dict[str, _Shard] = field(default_factory=dict)
    index: dict[bytes, tuple[str, int]] = field(default_factory=dict)


class EmbeddingCache:
    """Embeds texts with a backbone, reading known vectors from disk and storing new ones."""

    def __init__(
        self,
        root: Path | str | None = None,
        *,
        flush_every: int = 16384,
        max_shards: int = 64,
    ) -> None:
        self.root = Path(root).expanduser() if root is not None else default_cache_root()
        resolved = self.root.resolve()
        for bad in _FORBIDDEN_ROOTS:
            if resolved == bad or bad in resolved.parents:
                raise ConfigError(
                    f"embedding cache must not live under {bad} (shared read-only data)",
                    field="cache",
                )
        if flush_every < 1 or max_shards < 1:
            raise ConfigError("flush_every and max_shards must be >= 1", field="cache")
        # Missing texts go to the model in chunks of this many, each saved as it finishes, so a
        # long GPU run that dies keeps what it had done. Large, because the sentence-transformers
        # encoder sorts by length within one call.
        self.flush_every = flush_every
        self.max_shards = max_shards
        self.stats = CacheStats()
        self._stores: dict[str, _Store] = {}
        self._warned: set[str] = set()

    # -- public -------------------------------------------------------------------------------

    def embed(
        self,
        texts: Sequence[str],
        backbone: Backbone,
        batch_size: int = 64,
        progress: bool = True,
    ) -> np.ndarray:
        """``[len(texts), dim]`` float32, in order; only texts never seen go to the model."""
        texts = list(texts)
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise DataFormatError(f"text {i} is {type(t).__name__}, expected str", field="text")
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}", field="batch_size")

        position: dict[str, int] = {}
        inverse = np.fromiter(
            (position.setdefault(t, len(position)) for t in texts), dtype=np.int64, count=len(texts)
        )
        unique = list(position)
        self.stats.duplicates += len(texts) - len(unique)

        dim = int(backbone.dim)
        store = self._refresh(backbone.name, dim)
        digests = [text_digest(t) for t in unique]
        out = np.empty((len(unique), dim), dtype=np.float32)
        missing = self._fill_hits(store, digests, out)
        self.stats.hits += len(unique) - len(missing)
        self.stats.misses += len(missing)

        for s in range(0, len(missing), self.flush_every):
            chunk = missing[s : s + self.flush_every]
            vecs = self._call_model(backbone, [unique[j] for j in chunk], dim, batch_size, progress)
            keys = np.frombuffer(b"".join(digests[j] for j in chunk), dtype=np.uint8)
            self._write_shard(store, keys.reshape(len(chunk), _DIGEST), vecs)
            out[chunk] = vecs
        if len(store.shards) > self.max_shards:
            self._compact(store)
        return out[inverse]

    def clear(self, backbone: Backbone | None = None) -> None:
        """Delete the stored vectors of one backbone, or of all backbones."""
        if backbone is not None:
            dirs = [self._dir_for(backbone.name)]
        else:
            dirs = [p for p in self.root.glob("*") if p.is_dir()]
        for d in dirs:
            for f in d.glob("*"):
                if f.is_file() and (f.suffix == SHARD_SUFFIX or f.name.startswith(_TMP_PREFIX)):
                    f.unlink(missing_ok=True)
        self._stores.clear()

    # -- internals ------------------------------------------------------------------------------

    def _dir_for(self, name: str) -> Path:
        return self.root / _name_digest(name).hex()[:16]

    def _warn(self, path: Path, reason: str) -> None:
        self.stats.corrupt_files += 1
        key = f"{path}:{reason}"
        if key in self._warned:
            return
        self._warned.add(key)
        warnings.warn(
            f"embedding cache file {path} is corrupt ({reason}); rebuilding its entries",
            CacheCorruptionWarning,
            stacklevel=4,
        )

    def _refresh(self, name: str, dim: int) -> _Store:
        """Load shards not yet in memory (other processes may have written some)."""
        directory = self._dir_for(name)
        store = self._stores.get(name)
        if store is None or store.dim != dim:
            store = _Store(directory, name, dim)
            self._stores[name] = store
            _remove_stale_temp_files(directory)
        if not directory.is_dir():
            return store
        on_disk = {p.name for p in directory.glob(f"*{SHARD_SUFFIX}")}
        if set(store.shards) - on_disk:  # merged or deleted elsewhere: rebuild the index
            store.shards.clear()
            store.index.clear()
        for fname in sorted(on_disk - set(store.shards)):
            path = directory / fname
            try:
                blob = path.read_bytes()
            except FileNotFoundError:  # compacted away by another process meanwhile
                continue
            try:
                keys, vecs = decode_shard(blob, name, dim)
            except ShardError as e:
                self._warn(path, str(e))
                path.unlink(missing_ok=True)
                continue
            self._add(store, fname, keys, vecs)
        return store

    @staticmethod
    def _add(store: _Store, fname: str, keys: np.ndarray, vecs: np.ndarray) -> None:
        store.shards[fname] = _Shard(vecs)
        index = store.index
        for row, key in enumerate(keys):
            index[key.tobytes()] = (fname, row)

    @staticmethod
    def _fill_hits(store: _Store, digests: list[bytes], out: np.ndarray) -> list[int]:
        """Copy known vectors into ``out``; return the positions that still need the model."""
        missing: list[int] = []
        by_shard: dict[str, tuple[list[int], list[int]]] = {}
        for j, d in enumerate(digests):
            loc = store.index.get(d)
            if loc is None:
                missing.append(j)
            else:
                dst, rows = by_shard.setdefault(loc[0], ([], []))
                dst.append(j)
                rows.append(loc[1])
        for fname, (dst, rows) in by_shard.items():
            out[dst] = store.shards[fname].vecs[rows]
        return missing

    def _call_model(
        self, backbone: Backbone, texts: list[str], dim: int, batch_size: int, progress: bool
    ) -> np.ndarray:
        self.stats.model_calls += 1
        self.stats.texts_embedded += len(texts)
        vecs = np.asarray(backbone.encode(texts, batch_size=batch_size, progress=progress))
        if vecs.shape != (len(texts), dim):
            raise RuntimeError(
                f"backbone {backbone.name} returned shape {vecs.shape}, "
                f"expected {(len(texts), dim)}"
            )
        if not np.isfinite(vecs).all():
            # Caching NaNs would poison every later run; fail loudly instead.
            raise RuntimeError(f"backbone {backbone.name} returned non-finite embeddings")
        return vecs.astype(np.float32, copy=False)

    def _write_shard(self, store: _Store, keys: np.ndarray, vecs: np.ndarray) -> None:
        directory = store.directory
        directory.mkdir(parents=True, exist_ok=True)
        meta = directory / "backbone.json"
        if not meta.exists():
            _atomic_write(meta, json.dumps({"name": store.name, "dim": store.dim}).encode())
        fname = f"{time.time_ns():020d}-{os.getpid()}-{uuid.uuid4().hex[:8]}{SHARD_SUFFIX}"
        _atomic_write(directory / fname, encode_shard(store.name, keys, vecs))
        self.stats.shards_written += 1
        self._add(store, fname, keys, np.array(vecs, dtype=np.float32))

    def _compact(self, store: _Store) -> None:
        """Merge all shards into one so loading stays one read per backbone."""
        old = list(store.shards)
        items = list(store.index.items())
        keys = np.frombuffer(b"".join(k for k, _ in items), dtype=np.uint8).reshape(-1, _DIGEST)
        vecs = np.empty((len(items), store.dim), dtype=np.float32)
        for i, (_, (fname, row)) in enumerate(items):
            vecs[i] = store.shards[fname].vecs[row]
        store.shards.clear()
        store.index.clear()
        self._write_shard(store, keys, vecs)
        for fname in old:
            (store.directory / fname).unlink(missing_ok=True)


def _remove_stale_temp_files(directory: Path, max_age_s: float = 24 * 3600) -> None:
    """Temp files left by a killed writer; old ones only, a young one may still be in use."""
    now = time.time()
    for f in directory.glob(f"{_TMP_PREFIX}*"):
        try:
            if now - f.stat().st_mtime > max_age_s:
                f.unlink()
        except FileNotFoundError:
            pass


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f"{_TMP_PREFIX}{uuid.uuid4().hex}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
