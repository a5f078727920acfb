"""The align folder's files: written atomically (a kill leaves the old file or the new, never
half of one) and fingerprinted, so that ``--resume`` can tell a finished step from a stale one."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fedvpa.protocol.run_folder import atomic_write_text

# the run folder's write-then-rename (with fsync), so stage 2 keeps stage 1's guarantee
write_atomic = atomic_write_text


def replace_dir(source: Path, target: Path) -> None:
    """Move a finished directory (an adapter written next to the align folder) into place,
    replacing an older one: the rename is atomic, so a kill leaves the old one or the new."""
    if target.exists():
        shutil.rmtree(target)
    os.replace(source, target)


def write_jsonl(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    write_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_json(path: Path, value: Any) -> None:
    write_atomic(path, json.dumps(value, indent=2, ensure_ascii=False) + "\n")


def fingerprint(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())
