"""The align folder's files: written atomically (a kill leaves the old file or the new, never
half of one) and fingerprinted, so that ``--resume`` can tell a finished step from a stale one."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fedvpa.protocol.run_folder import atomic_write_text


def fresh_work_dir(parent: Path, prefix: str) -> Path:
    """A new work folder ``parent/<prefix>XXXX`` for a step that writes a directory, after
    removing the folders of that prefix an earlier, killed attempt left behind (a killed DPO
    step leaves its trainer checkpoints there; ``--resume`` redoes the step, and without this
    every killed attempt would keep its copy)."""
    for stale in parent.glob(f"{prefix}*"):
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
    return Path(tempfile.mkdtemp(dir=parent, prefix=prefix))


def replace_dir(source: Path, target: Path) -> None:
    """Move a finished directory (an adapter written in a work folder inside the align folder)
    into place, replacing an older one. The rename is atomic, so the target is never a
    half-written adapter; a kill between removing the old one and the rename leaves none, and
    ``--resume`` then redoes the step."""
    if target.exists():
        shutil.rmtree(target)
    os.replace(source, target)


def write_jsonl(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_json(path: Path, value: Any) -> None:
    atomic_write_text(path, json.dumps(value, indent=2, ensure_ascii=False) + "\n")


def fingerprint(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())
