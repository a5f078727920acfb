"""The run folder, owned in one place: ``config.json``, ``metrics.jsonl``, the checkpoints,
``final.json``, and the resume rules.

Exact resume rests on one rule: every random draw in a round is a function of
``(seed, round, client id, purpose)`` (``protocol/seeds.py``), never of process history. Client
sampling, each client's local steps, evaluation and the server's aggregation all reseed from it,
so a resumed run replays the same draws as an uninterrupted one. The global RNG states are still
checkpointed (and restored) so that code outside our control that reads them between rounds sees
what it would have seen.

Checkpoints are files a killed run, a full disk or another person may have damaged, so they are
read as hostile input: ``checkpoint/round_<r>.ckpt`` holds a one-line JSON manifest (the SHA-256
of each part, and of itself) followed by the parts: ``state.json`` (round, info, metrics, RNG
states, identity) and two ``.npz`` archives (``ServerState.arrays`` / ``.extra``) read with
``allow_pickle=False``. Nothing in a file can execute code, and every digest is checked before any
part is parsed, so a truncated or altered file is detected and skipped whole, never half-loaded.
The newest two intact checkpoints are kept, so a damaged newest one still leaves one to resume
from. Client private-state files are ``.npz`` archives that end with their own SHA-256
(``seal_arrays``).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import re
import tempfile
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedvpa.errors import ConfigError
from fedvpa.methods.base import Arrays, ServerState
from fedvpa.protocol import seeds

CHECKPOINT_DIR = "checkpoint"
CHECKPOINT_SUFFIX = ".ckpt"
LEGACY_CHECKPOINT_FILE = "latest.pkl"  # fedvpa <= checkpoint version 1: a pickle, never read
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
FINAL_FILE = "final.json"
CHECKPOINT_VERSION = 2
KEEP_CHECKPOINTS = 2
CHECKPOINT_MAGIC = b"FEDVPA-CHECKPOINT\n"
SEAL_TAG = b"fedvpa-sha256:"  # a sealed .npz ends with this zip comment and the digest

_PARTS = ("state.json", "arrays.npz", "extra.npz")
_MAX_MANIFEST_BYTES = 64 * 1024
_CHECKPOINT_NAME = re.compile(r"^round_(\d+)\.ckpt$")
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")

log = logging.getLogger(__name__)


@dataclass
class Checkpoint:
    """Everything needed to continue after ``server_round``."""

    server_round: int
    state: ServerState
    metrics: list[dict[str, Any]]
    rng: dict[str, Any]  # JSON-able (``seeds.capture_rng_state``)
    config: dict[str, Any] = field(default_factory=dict)
    version: int = CHECKPOINT_VERSION


class DamagedFileError(Exception):
    """A run file that failed its integrity check. Callers skip the file and say so; it never
    reaches the user as a traceback."""


# ------------------------------------------------------------------ atomic writes


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write-then-rename: a reader (or a resumed run) never sees a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: Path, value: Any) -> None:
    atomic_write_text(path, json.dumps(value, indent=2, sort_keys=True) + "\n")


# ------------------------------------------------------------------ arrays without pickle


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def npz_bytes(arrays: Mapping[str, Any], comment: bytes = b"") -> bytes:
    """An ``.npz`` archive of ``arrays``. Object arrays are refused here, at write time, because
    they would need pickle to be read back (and ``read_npz`` never unpickles). Written member by
    member rather than through ``np.savez(**arrays)`` so no array name can collide with one of
    ``savez``'s own parameters."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        archive.comment = comment
        for key, value in arrays.items():
            array = np.asarray(value)
            if array.dtype.hasobject:
                raise TypeError(f"array {key!r} has dtype object: it cannot be stored safely")
            with archive.open(f"{key}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, array, allow_pickle=False)
    return buffer.getvalue()


def read_npz(data: bytes, source: Path | str) -> Arrays:
    """Every array of an ``.npz`` archive, fully in memory, or ``DamagedFileError``.

    ``allow_pickle=False`` keeps a hostile archive from running code. Any failure while parsing
    bytes we do not trust means "damaged", whatever exception the zip and npy readers raise for
    it (``BadZipFile``, ``ValueError``, ``EOFError``, ``zlib.error``, ``MemoryError``, ...).
    """
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:
            return {key: np.array(archive[key]) for key in archive.files}
    except Exception as exc:  # noqa: BLE001 - see the docstring
        raise DamagedFileError(f"{source}: unreadable arrays ({type(exc).__name__})") from exc


_SEAL_BYTES = len(SEAL_TAG) + 64


def seal_arrays(arrays: Mapping[str, Any]) -> bytes:
    """An ``.npz`` whose zip comment, the file's last bytes, is the SHA-256 of every byte before
    it: one file (so one atomic write), still an ordinary ``.npz`` for anyone inspecting it, and
    checked before the zip is parsed at all."""
    placeholder = SEAL_TAG + b"0" * 64  # the comment's length is part of the digested bytes
    body = npz_bytes(arrays, placeholder)[:-_SEAL_BYTES]
    return body + SEAL_TAG + sha256_hex(body).encode("ascii")


def unseal_arrays(data: bytes, source: Path | str) -> Arrays:
    """The arrays of a ``seal_arrays`` file, only if its digest matches (else
    ``DamagedFileError``): a truncated or altered file is never half-used."""
    if not data:
        raise DamagedFileError(f"{source}: empty file")
    body, seal = data[:-_SEAL_BYTES], data[-_SEAL_BYTES:]
    if len(data) <= _SEAL_BYTES or not seal.startswith(SEAL_TAG):
        raise DamagedFileError(f"{source}: no digest at the end (truncated, or not ours)")
    if seal[len(SEAL_TAG) :] != sha256_hex(body).encode("ascii"):
        raise DamagedFileError(f"{source}: SHA-256 mismatch")
    return read_npz(data, source)


# ------------------------------------------------------------------ checkpoint files


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR


def checkpoint_path(run_dir: Path) -> Path:
    """What exists once a run has checkpointed (the checkpoint folder): callers test it to
    decide whether to pass ``resume``. Use ``checkpoint_file`` for one round's file."""
    return checkpoint_dir(run_dir)


def checkpoint_file(run_dir: Path, server_round: int) -> Path:
    return checkpoint_dir(run_dir) / f"round_{int(server_round)}{CHECKPOINT_SUFFIX}"


def checkpoint_files(run_dir: Path) -> list[tuple[int, Path]]:
    """Every ``round_<r>.ckpt``, oldest first, intact or not."""
    folder = checkpoint_dir(run_dir)
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        match = _CHECKPOINT_NAME.match(path.name)
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found)


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode("utf-8")


def encode_checkpoint(checkpoint: Checkpoint) -> bytes:
    """Magic line, manifest line, then the parts the manifest names (sizes and digests)."""
    state = {
        "server_round": int(checkpoint.server_round),
        "info": checkpoint.state.info,
        "metrics": checkpoint.metrics,
        "rng": checkpoint.rng,
        "config": checkpoint.config,
    }
    try:
        state_json = json.dumps(state).encode("utf-8")
    except TypeError as exc:  # a bug in whoever put a non-JSON value there: say where
        raise TypeError(f"checkpoint state is not JSON-serialisable: {exc}") from exc
    parts = {
        "state.json": state_json,
        "arrays.npz": npz_bytes(checkpoint.state.arrays),
        "extra.npz": npz_bytes(checkpoint.state.extra),
    }
    body = {
        "format": CHECKPOINT_VERSION,
        "server_round": int(checkpoint.server_round),
        "parts": [
            {"name": name, "bytes": len(parts[name]), "sha256": sha256_hex(parts[name])}
            for name in _PARTS
        ],
    }
    manifest = {**body, "manifest_sha256": sha256_hex(_canonical(body))}
    return b"".join([CHECKPOINT_MAGIC, _canonical(manifest), b"\n", *parts.values()])


def _json(data: bytes, what: str) -> Any:
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise DamagedFileError(f"{what} is not valid JSON") from exc


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _manifest_parts(manifest: Any, expected_round: int | None) -> list[tuple[str, int, str]]:
    """The (name, size, digest) of each part, once the manifest itself has been verified."""
    if not isinstance(manifest, dict):
        raise DamagedFileError("manifest is not an object")
    if manifest.get("format") != CHECKPOINT_VERSION:
        raise DamagedFileError(
            f"checkpoint format {manifest.get('format')!r}, this fedvpa reads {CHECKPOINT_VERSION}"
        )
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    if manifest.get("manifest_sha256") != sha256_hex(_canonical(body)):
        raise DamagedFileError("manifest SHA-256 mismatch")
    server_round = body.get("server_round")
    if not _is_int(server_round) or (expected_round is not None and server_round != expected_round):
        raise DamagedFileError(f"manifest names round {server_round!r}, not {expected_round}")
    parts = body.get("parts")
    if not isinstance(parts, list) or [
        p.get("name") if isinstance(p, dict) else None for p in parts
    ] != list(_PARTS):
        raise DamagedFileError(f"manifest parts are not {list(_PARTS)}")
    entries = []
    for part in parts:
        size, digest = part.get("bytes"), part.get("sha256")
        if not _is_int(size) or size < 0 or not isinstance(digest, str):
            raise DamagedFileError(f"manifest entry for {part['name']} is malformed")
        if not _SHA256_HEX.match(digest):
            raise DamagedFileError(f"manifest digest for {part['name']} is malformed")
        entries.append((str(part["name"]), size, digest))
    return entries


def decode_checkpoint(data: bytes, expected_round: int | None = None) -> Checkpoint:
    """The checkpoint in ``data``, or ``DamagedFileError`` with the reason. Every digest is
    checked before any part is parsed, and nothing is returned unless every part parsed."""
    if not data:
        raise DamagedFileError("empty file")
    if not data.startswith(CHECKPOINT_MAGIC):
        if CHECKPOINT_MAGIC.startswith(data):
            raise DamagedFileError(f"truncated after {len(data)} bytes")
        raise DamagedFileError("not a fedvpa checkpoint")
    start = len(CHECKPOINT_MAGIC)
    end = data.find(b"\n", start, start + _MAX_MANIFEST_BYTES)
    if end < 0:
        raise DamagedFileError(f"truncated manifest ({len(data)} bytes)")
    manifest = _json(data[start:end], "manifest")
    entries = _manifest_parts(manifest, expected_round)
    expected_round = manifest["server_round"]  # checked: the file name's round, when it has one
    body = memoryview(data)[end + 1 :]
    expected = sum(size for _, size, _ in entries)
    if len(body) < expected:
        raise DamagedFileError(f"truncated: {len(body)} of {expected} bytes after the manifest")
    if len(body) > expected:
        raise DamagedFileError(f"{len(body) - expected} unexpected bytes after the parts")
    parts: dict[str, bytes] = {}
    offset = 0
    for name, size, digest in entries:
        chunk = bytes(body[offset : offset + size])
        offset += size
        if sha256_hex(chunk) != digest:
            raise DamagedFileError(f"{name}: SHA-256 mismatch")
        parts[name] = chunk
    state = _json(parts["state.json"], "state.json")
    if not isinstance(state, dict):
        raise DamagedFileError("state.json is not an object")
    server_round = state.get("server_round")
    info, metrics = state.get("info"), state.get("metrics")
    rng, config = state.get("rng"), state.get("config")
    if not _is_int(server_round) or (expected_round is not None and server_round != expected_round):
        raise DamagedFileError(f"state.json names round {server_round!r}, not {expected_round}")
    if not isinstance(info, dict) or not isinstance(config, dict) or not isinstance(rng, dict):
        raise DamagedFileError("state.json: info, rng or config is not an object")
    if not isinstance(metrics, list) or not all(isinstance(row, dict) for row in metrics):
        raise DamagedFileError("state.json: metrics is not a list of rows")
    try:
        seeds.rng_state_from_json(rng)  # restored later (RunFolder.begin): refuse it now
    except ValueError as exc:
        raise DamagedFileError(f"state.json: unusable RNG state ({exc})") from exc
    arrays = read_npz(parts["arrays.npz"], "arrays.npz")
    extra = read_npz(parts["extra.npz"], "extra.npz")
    return Checkpoint(
        server_round=server_round,
        state=ServerState(arrays=arrays, extra=extra, info=info),
        metrics=metrics,
        rng=rng,
        config=config,
    )


def _verify(path: Path) -> Checkpoint:
    """One ``round_<r>.ckpt`` file, verified whole; ``DamagedFileError`` gives the reason."""
    match = _CHECKPOINT_NAME.match(path.name)
    expected = int(match.group(1)) if match else None
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DamagedFileError(f"unreadable ({exc.strerror or exc})") from exc
    return decode_checkpoint(data, expected)


def read_checkpoint(path: Path) -> Checkpoint:
    """One ``round_<r>.ckpt`` file, verified whole (``DamagedFileError`` names the path)."""
    try:
        return _verify(path)
    except DamagedFileError as exc:
        raise DamagedFileError(f"{path}: {exc}") from exc


def _intact(path: Path) -> bool:
    try:
        _verify(path)
    except DamagedFileError:
        return False
    return True


def refuse_legacy_checkpoint(run_dir: Path) -> None:
    """A pickle checkpoint from an older fedvpa is refused by name, never opened: unpickling a
    file can run any code in it."""
    legacy = checkpoint_dir(run_dir) / LEGACY_CHECKPOINT_FILE
    if legacy.exists():
        raise ConfigError(
            "checkpoint written by an older fedvpa (a pickle, which this version never loads): "
            "start a new run folder",
            path=str(legacy),
        )


def save_checkpoint(run_dir: Path, checkpoint: Checkpoint) -> Path:
    """Write round ``server_round``'s checkpoint atomically, then keep it and the newest intact
    earlier one only (so a checkpoint damaged later still leaves one to resume from)."""
    path = checkpoint_file(run_dir, checkpoint.server_round)
    atomic_write_bytes(path, encode_checkpoint(checkpoint))
    keep = {path}
    for server_round, older in reversed(checkpoint_files(run_dir)):
        if len(keep) >= KEEP_CHECKPOINTS:
            break
        if server_round < checkpoint.server_round and _intact(older):
            keep.add(older)
    # Files past this round are leftovers of a run that was resumed from an earlier checkpoint
    # (they were damaged, or resume would have used them): this run is rewriting those rounds.
    for _, older in checkpoint_files(run_dir):
        if older not in keep:
            older.unlink(missing_ok=True)
    for stray in checkpoint_dir(run_dir).glob(f".round_*{CHECKPOINT_SUFFIX}.*.tmp"):
        stray.unlink(missing_ok=True)  # a write killed before its rename
    return path


_reported: set[tuple[str, str]] = set()


def _report_skipped(path: Path, reason: str, used: Path) -> None:
    """One stderr line per damaged file, even though a run checks its folder twice (before the
    simulation starts and again in the ServerApp, in the same process)."""
    key = (str(path), reason)
    if key in _reported:
        return
    _reported.add(key)
    log.warning("%s: damaged checkpoint skipped (%s); resuming from %s", path, reason, used.name)


def find_checkpoint(run_dir: Path) -> tuple[Path, Checkpoint] | None:
    """The newest intact checkpoint and its file; ``None`` when there is no checkpoint file at
    all. Damaged newer ones are skipped (one warning each); ``ConfigError`` when every
    checkpoint is damaged, or the folder holds an older fedvpa's pickle."""
    refuse_legacy_checkpoint(run_dir)
    files = checkpoint_files(run_dir)
    damaged: list[tuple[Path, str]] = []
    for _, path in reversed(files):
        try:
            found = _verify(path)
        except DamagedFileError as exc:
            damaged.append((path, str(exc)))
            continue
        for bad, reason in damaged:
            _report_skipped(bad, reason, path)
        return path, found
    if damaged:
        raise ConfigError(
            "no intact checkpoint to resume from: "
            + "; ".join(f"{path.name} ({reason})" for path, reason in damaged)
            + " (start a new run folder)",
            path=str(checkpoint_dir(run_dir)),
        )
    return None


def load_checkpoint(run_dir: Path) -> Checkpoint | None:
    """The newest intact checkpoint (see ``find_checkpoint``)."""
    found = find_checkpoint(Path(run_dir))
    return None if found is None else found[1]


# ------------------------------------------------------------------ metrics


def rewrite_metrics(run_dir: Path, rows: Iterable[dict[str, Any]]) -> None:
    """metrics.jsonl as of the checkpoint: drops rows a crashed run wrote past it."""
    text = "".join(json.dumps(row, sort_keys=True) + "\n" for row in rows)
    atomic_write_text(run_dir / METRICS_FILE, text)


def append_metrics(run_dir: Path, row: dict[str, Any]) -> None:
    with (run_dir / METRICS_FILE).open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(row, sort_keys=True) + "\n")


def finite_or_none(value: Any) -> float | None:
    """A finite Python float, or None for None / NaN / inf / anything not a number.

    Run files must be strict JSON (no NaN), and the reports read null as "not measured", which is
    what a NaN from an empty group means.
    """
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


# Identity keys that checkpoints of earlier versions do not hold: such a checkpoint still
# resumes (it was written before the key existed); one that holds another value does not.
LATER_IDENTITY = frozenset({"data_digest"})


class RunFolder:
    """One run's folder: starts it (or resumes it, under the same identity only), records each
    round (checkpoint, then the metrics row) and finishes it. ``identity`` is what a resumed run
    must share with the run it continues (``FederationConfig.identity``)."""

    def __init__(self, path: str | Path, identity: Mapping[str, Any], num_rounds: int) -> None:
        self.path = Path(path)
        self.identity = dict(identity)
        self.num_rounds = int(num_rounds)

    def check(self, resume: bool) -> Checkpoint | None:
        """The checkpoint to continue from (``None``: start fresh), refusing what cannot be
        continued, before any process starts or any file is written."""
        if not resume:
            refuse_legacy_checkpoint(self.path)
            if checkpoint_files(self.path):  # intact or not: never overwrite a run's files
                raise ConfigError(
                    "run folder already holds a checkpoint: resume it or choose another folder",
                    path=str(self.path),
                )
            return None
        located = find_checkpoint(self.path)
        if located is None:
            return None
        path, found = located
        diff = sorted(
            k
            for k, v in self.identity.items()
            if found.config.get(k) != v and not (k in LATER_IDENTITY and k not in found.config)
        )
        if diff:
            raise ConfigError(
                f"resume: configuration differs from the checkpointed run in {diff}",
                path=str(path),
            )
        if found.server_round >= self.num_rounds:
            raise ConfigError(
                f"checkpoint is at round {found.server_round}: nothing to do for "
                f"{self.num_rounds} rounds",
                path=str(self.path),
                field="num-server-rounds",
            )
        return found

    def begin(self, resume: bool, record: Mapping[str, Any]) -> Checkpoint | None:
        """Check, then write ``config.json`` (``record``) and the metrics as of the checkpoint;
        return the checkpoint to continue from (its RNG states restored)."""
        found = self.check(resume)
        self.path.mkdir(parents=True, exist_ok=True)
        rewrite_metrics(self.path, found.metrics if found else [])
        write_json(self.path / CONFIG_FILE, dict(record))
        if found is not None:
            seeds.restore_rng_state(found.rng)
        return found

    def record(self, server_round: int, state: ServerState, history: list[dict[str, Any]]) -> None:
        """Checkpoint after ``server_round`` (whose row is ``history[-1]``), then log the row: a
        crash between the two loses nothing (``begin`` rewrites the log from the checkpoint)."""
        save_checkpoint(
            self.path,
            Checkpoint(
                server_round=server_round,
                state=state,
                metrics=history,
                rng=seeds.capture_rng_state(),
                config=self.identity,
            ),
        )
        append_metrics(self.path, history[-1])

    def finish(self, final: Mapping[str, Any]) -> None:
        write_json(self.path / FINAL_FILE, dict(final))
