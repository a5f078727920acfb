"""Rewrite the generated key tables (pyproject's [tool.flwr.app.config] and the README's key
table) from the config dataclasses, after adding or changing a key.

    .venv/bin/python scripts/regenerate_keys.py
"""

from __future__ import annotations

import re
from pathlib import Path

from fedvpa.experiment import render_flower_table, render_key_table

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    pyproject = ROOT / "pyproject.toml"
    text = pyproject.read_text()
    start = text.index("[tool.flwr.app.config]\n")
    match = re.compile(r"^\[(?!tool\.flwr\.app\.config\])", re.M).search(text, start + 1)
    end = match.start() if match else len(text)
    table = render_flower_table()
    pyproject.write_text(text[:start] + table + ("\n" if match else "") + text[end:])
    readme = ROOT / "README.md"
    text = readme.read_text()
    head = text.index("-->", text.index("<!-- keys:start")) + 4
    tail = text.index("<!-- keys:end -->")
    readme.write_text(text[:head] + render_key_table() + text[tail:])


if __name__ == "__main__":
    main()
