"""Hostile input (issue 13): generated malformed readers input, config keys and command lines.

A person's typo or a corrupt download must end in one line on stderr and exit code 2, never a
traceback, and must not touch an earlier run. Hand-written cases only cover the failures someone
thought of; these properties are checked on generated inputs instead.

Generated inputs: 1,150 in all, fixed by ``derandomize=True`` so CI sees the same ones each run:

- 250 JSONL files through the reader functions (must raise the project's own errors only);
- 150 malformed JSONL files through ``fedvpa run --data`` (must name file, line and field);
- 250 ``--set key=value`` with an invalid value for a random known key;
- 100 ``--set`` with an unknown key, or without ``=``;
- 150 ``--config`` TOML files with random content;
- 250 random command lines over ``run``, ``compare``, ``headroom``, ``embed``,
  ``data summary`` and ``keys``.

Every command runs in-process through ``fedvpa.cli.main(argv)``. Loading a backbone and starting a
federation are replaced by a guard, so no generated input can start real work: the reader and key
properties fail if the guard is reached (their inputs are invalid by construction); the random
command lines may be valid, and then only the guard or exit code 0 is accepted.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, get_type_hints

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedvpa.cli import main
from fedvpa.config import DataConfig, EmbeddingConfig, FederationSettings
from fedvpa.data.readers import (
    ReadReport,
    read_generic_jsonl,
    read_hh_rlhf,
    read_pairs,
    read_relabeled_hh,
    sniff_format,
)
from fedvpa.errors import FedvpaInputError
from fedvpa.experiment import key_groups


def fuzz(n: int) -> Callable[[Any], Any]:
    """Deterministic, deadline-free settings: the first example pays for imports."""
    return settings(
        max_examples=n,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


# ------------------------------------------------------------------------------ workspace


class ReachedWork(BaseException):
    """Raised instead of loading a backbone or starting a federation (BaseException, so that
    no ``except Exception`` on the way can turn it into an ordinary failure)."""


def _guard(*args: object, **kwargs: object) -> None:
    raise ReachedWork


@dataclass
class Workspace:
    root: Path
    inputs: Path  # generated files; the only folder a command may find changed
    existing: Path  # an earlier run folder: must never change
    missing: Path  # a data file that does not exist


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workspace]:
    root = tmp_path_factory.mktemp("fuzz")
    inputs = root / "inputs"
    inputs.mkdir()
    missing = root / "no-such-data.jsonl"
    existing = root / "runs" / "existing"
    (existing / "fedvpa-gp").mkdir(parents=True)
    # Its data is missing, so a fuzzed --resume of it fails at reading like any other input.
    config = {"config": {"data": str(missing)}, "explicit": ["data"], "seed": 0}
    (existing / "config.json").write_text(json.dumps(config))
    (existing / "summary.json").write_text('{"methods": {}}')
    (existing / "fedvpa-gp" / "metrics.jsonl").write_text('{"round": 1}\n')
    (existing / "fedvpa-gp" / "checkpoint.pt").write_bytes(b"\0" * 64)
    environ = dict(os.environ)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)  # a default runs/<method>-seed0 would appear here
        mp.setenv("FEDVPA_CACHE", str(root / "cache"))
        mp.setenv("FLWR_HOME", str(root / "cache" / "flwr-home"))
        mp.setattr("fedvpa.embeddings.backbone.make_backbone", _guard)
        mp.setattr("fedvpa.federation.runtime.run_federated", _guard)
        yield Workspace(root, inputs, existing, missing)
    os.environ.clear()
    os.environ.update(environ)  # set_runtime_env() sets Flower's variables in-process


def snapshot(root: Path, skip: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under ``root`` (but ``skip``) with its size and mtime."""
    out: dict[str, tuple[int, int]] = {}
    for path in root.rglob("*"):
        if path == skip or skip in path.parents:
            continue
        st_ = path.stat()
        out[str(path.relative_to(root))] = (st_.st_size if path.is_file() else -1, st_.st_mtime_ns)
    return out


@dataclass
class Outcome:
    code: int | None  # None: the guard was reached (the input was valid)
    stderr: str
    changed: bool  # a file or folder outside the inputs appeared, changed or vanished


def invoke(ws: Workspace, argv: list[str]) -> Outcome:
    before = snapshot(ws.root, ws.inputs)
    out, err = io.StringIO(), io.StringIO()
    code: int | None = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(argv)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
        except ReachedWork:
            code = None
    return Outcome(code, err.getvalue(), snapshot(ws.root, ws.inputs) != before)


def assert_refused(outcome: Outcome, *names: str) -> str:
    """Exit 2, one line naming ``names``, no traceback and nothing written; the line."""
    assert outcome.code is not None, "a generated invalid input reached the backbone/federation"
    assert "Traceback" not in outcome.stderr, outcome.stderr
    lines = [line for line in outcome.stderr.splitlines() if line.strip()]
    assert outcome.code == 2, outcome.stderr
    assert len(lines) == 1 and lines[0].startswith("fedvpa: error: "), outcome.stderr
    for name in names:
        assert name in lines[0], (name, lines[0])
    assert not outcome.changed, "a refused command wrote files"
    return lines[0]


# -------------------------------------------------------------------------- JSONL inputs

GOOD = {"prompt": "How do I boil an egg?", "chosen": "Ten minutes.", "rejected": "No idea."}
REQUIRED = ("prompt", "chosen", "rejected")
OPTIONAL = ("user", "type", "conflict")


def good_line(i: int) -> bytes:
    return json.dumps({**GOOD, "chosen": f"Ten minutes, {i}."}).encode()


no_newline = st.binary(max_size=60).map(lambda b: b.replace(b"\n", b" "))
json_junk = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)
not_text = json_junk.filter(lambda v: not isinstance(v, str) and v is not None)
huge_literal = st.integers(19, 6000).map(lambda n: "9" * n) | st.sampled_from(["1e999", "-1e999"])


@st.composite
def bad_generic_line(draw: st.DrawFn) -> tuple[bytes, str | None]:
    """One line no generic reader may accept, and the field its error must name (if any)."""
    kind = draw(
        st.sampled_from(
            ["utf8", "bytes", "truncated", "type", "optional", "missing", "empty", "huge", "deep"]
        )
    )
    if kind == "utf8":
        return b"\xff" + draw(no_newline), None
    if kind == "bytes":  # starts like JSON, never a whole valid record
        return draw(st.sampled_from([b"{", b"[", b'"', b"#", b"n"])) + draw(no_newline), None
    if kind == "truncated":
        text = json.dumps(GOOD).encode()
        return text[: draw(st.integers(1, len(text) - 1))], None
    if kind == "type":
        name = draw(st.sampled_from(REQUIRED))
        return json.dumps({**GOOD, name: draw(not_text)}).encode(), name
    if kind == "optional":
        name = draw(st.sampled_from(OPTIONAL))
        value = draw(not_text.filter(lambda v: name != "conflict" or not isinstance(v, bool)))
        return json.dumps({**GOOD, name: value}).encode(), name
    if kind == "missing":
        gone = draw(st.lists(st.sampled_from(REQUIRED), min_size=1, unique=True))
        rec = {k: v for k, v in GOOD.items() if k not in gone}
        first = next(k for k in REQUIRED if k in gone)
        return json.dumps(rec).encode(), first
    if kind == "empty":
        name = draw(st.sampled_from(REQUIRED))
        return json.dumps({**GOOD, name: draw(st.sampled_from(["", " ", "\t\n"]))}).encode(), name
    if kind == "huge":
        name = draw(st.sampled_from(REQUIRED))
        rec = json.dumps({**GOOD, name: "@"}).replace('"@"', draw(huge_literal))
        # over 4300 digits, Python's int() refuses the literal: the line is malformed JSON
        return rec.encode(), name if len(rec) < 4300 else None
    depth = draw(st.integers(1000, 30000))
    return b'{"prompt": ' + b"[" * depth, None


@st.composite
def jsonl_file(draw: st.DrawFn) -> tuple[bytes, int, str | None, bool]:
    """(content, 1-based line of the one bad row, its field, gzip?) with good rows around it
    and blank or CRLF lines mixed in; line numbers count blank lines, as the reader does."""
    blank = st.sampled_from([b"", b"   ", b"\r", b"\t"])
    before = draw(st.lists(st.one_of(st.integers(0, 99).map(good_line), blank), max_size=4))
    after = draw(st.lists(st.one_of(st.integers(0, 99).map(good_line), blank), max_size=3))
    bad, field = draw(bad_generic_line())
    crlf = draw(st.booleans())
    lines = [line + b"\r" if crlf and line.strip() else line for line in [*before, bad, *after]]
    return b"\n".join(lines) + b"\n", len(before) + 1, field, draw(st.booleans())


def write_input(ws: Workspace, content: bytes, gz: bool, name: str = "data") -> Path:
    path = ws.inputs / (f"{name}.jsonl.gz" if gz else f"{name}.jsonl")
    path.write_bytes(gzip.compress(content, mtime=0) if gz else content)
    return path


any_line = st.one_of(
    st.integers(0, 9).map(good_line),
    bad_generic_line().map(lambda t: t[0]),
    st.just(b""),
    st.builds(
        lambda rec: json.dumps(rec).encode(),
        st.fixed_dictionaries(
            {"prompt": json_junk, "responses": json_junk, "label": json_junk},
            optional={"objective": json_junk, "chosen": json_junk, "rejected": json_junk},
        ),
    ),
    no_newline,
)
READERS: dict[str, Callable[..., list[Any]]] = {
    "generic": read_generic_jsonl,
    "hh-rlhf": read_hh_rlhf,
    "relabeled-hh": read_relabeled_hh,
}


@fuzz(250)
@given(
    lines=st.lists(any_line, max_size=6),
    reader=st.sampled_from([*READERS, "auto", "sniff"]),
    skip=st.booleans(),
    gz=st.booleans(),
)
def test_reader_functions_raise_only_project_errors(
    ws: Workspace, lines: list[bytes], reader: str, skip: bool, gz: bool
) -> None:
    path = write_input(ws, b"\n".join(lines), gz, "direct")
    report = ReadReport()
    try:
        if reader == "sniff":
            sniff_format(path)
            return
        if reader == "auto":
            read_pairs(path, seed=1, skip_invalid=skip, report=report)
            return
        pairs = READERS[reader](path, seed=1, skip_invalid=skip, report=report)
    except FedvpaInputError as err:
        assert err.path == str(path)
        assert err.line is None or 1 <= err.line <= len(lines)
        assert not (skip and reader in READERS), f"skip-invalid still raised: {err}"
        return
    # Anything else (KeyError, TypeError, UnicodeDecodeError, RecursionError...) fails the test.
    assert report.rows == report.kept + report.skipped == sum(bool(x.strip()) for x in lines)
    assert len(pairs) == report.kept


@fuzz(150)
@given(case=jsonl_file())
def test_run_names_file_line_and_field_of_a_malformed_data_file(
    ws: Workspace, case: tuple[bytes, int, str | None, bool]
) -> None:
    content, line, field, gz = case
    path = write_input(ws, content, gz)
    argv = ["--out", str(ws.root / "fresh"), "run", "--data", str(path)]
    argv += ["--set", "data-format=generic"]
    refused = assert_refused(invoke(ws, argv), f"{path}:{line}: ")
    if field is not None:
        assert f"field '{field}'" in refused


# ------------------------------------------------------------------------ config keys


def key_types() -> dict[str, str]:
    """Every known key and the text of its field's type hint."""
    from fedvpa.methods.local_config import LocalConfig
    from fedvpa.model.config import ModelConfig

    known = set().union(*key_groups().values())
    out: dict[str, str] = {}
    for cls in (DataConfig, EmbeddingConfig, FederationSettings, LocalConfig, ModelConfig):
        hints = get_type_hints(cls)
        for f in fields(cls):
            key = f.name.replace("_", "-")
            if key in known:
                out[key] = str(hints[f.name])
    return out


KEY_TYPES = key_types()


@dataclass(frozen=True)
class Raw:
    """A TOML literal written as is (integers too long for ``str(int)``)."""

    text: str


def toml_value(value: object) -> str:
    if isinstance(value, Raw):
        return value.text
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return {"nan": "nan", "inf": "inf", "-inf": "-inf"}.get(repr(value), repr(value))
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(value)


plain_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
words = st.text("abcdxyz-_ #@!", min_size=1, max_size=10)
non_finite = st.sampled_from([float("nan"), float("inf"), float("-inf")])
huge_int = st.integers(19, 4000).map(lambda n: Raw(("-" if n % 2 else "") + "9" * n))
fraction = st.floats(allow_nan=False, allow_infinity=False).filter(lambda x: not x.is_integer())
scalars = st.one_of(st.integers(-5, 5), st.booleans(), plain_text, fraction)


def bad_value(hint: str) -> st.SearchStrategy[object]:
    """Values that no key of this type accepts (by construction, not by luck)."""
    lists = st.lists(st.one_of(words, st.booleans()), min_size=1, max_size=3)
    if "tuple" in hint:
        junk_text = words.filter(lambda s: any(c in s for c in "xyz#@!"))
        return st.one_of(junk_text, non_finite, huge_int, lists, st.booleans())
    if "bool" in hint:
        text = plain_text.filter(lambda s: s.strip().lower() not in ("true", "false"))
        return st.one_of(st.integers(), fraction, text, non_finite, lists)
    if "int | str" in hint:  # num-prototypes: a positive integer or "auto"
        return st.one_of(fraction, st.booleans(), words, non_finite, lists)
    if "float" in hint:
        text = plain_text if "None" not in hint else plain_text.filter(bool)
        return st.one_of(text, st.booleans(), non_finite, huge_int, lists)
    if "int" in hint:
        return st.one_of(plain_text, fraction, st.booleans(), non_finite, huge_int, lists)
    return st.one_of(st.integers(), fraction, st.booleans(), non_finite, lists.map(list))


key_and_bad_value = st.sampled_from(sorted(KEY_TYPES)).flatmap(
    lambda k: st.tuples(st.just(k), bad_value(KEY_TYPES[k]))
)


@fuzz(250)
@given(item=key_and_bad_value)
def test_set_with_an_invalid_value_names_the_key(ws: Workspace, item: tuple[str, object]) -> None:
    key, value = item
    argv = ["--out", str(ws.root / "fresh"), "run", "--set", f"{key}={toml_value(value)}"]
    line = assert_refused(invoke(ws, argv))
    # model validation names its fields as declared (latent_dim), the key table hyphenated
    assert f"'{key}'" in line or f"'{key.replace('-', '_')}'" in line, line


@fuzz(100)
@given(
    key=plain_text.filter(lambda k: "=" not in k and k.strip() not in KEY_TYPES),
    value=scalars.map(toml_value),
    sep=st.sampled_from(["=", ""]),
)
def test_set_with_an_unknown_key_or_no_equals_is_refused(
    ws: Workspace, key: str, value: str, sep: str
) -> None:
    argv = ["--out", str(ws.root / "fresh"), "run", "--set", f"{key}{sep}{value}"]
    if not sep and "=" in value:
        return  # "key" + a value holding "=" is a key=value pair after all
    line = assert_refused(invoke(ws, argv))
    assert ("unknown key" in line) if sep else ("expected KEY=VALUE" in line), line


toml_table = st.dictionaries(
    st.one_of(st.sampled_from(sorted(KEY_TYPES)), words),
    st.one_of(scalars, non_finite, huge_int, st.lists(scalars, max_size=3)),
    max_size=4,
).map(lambda d: "\n".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in d.items()))
toml_content = st.one_of(
    st.binary(max_size=80),
    plain_text.map(str.encode),
    toml_table.map(str.encode),
    toml_table.map(lambda t: ("[tool.flwr.app.config]\n" + t).encode()),
    st.sampled_from(["[tool]\nflwr = 3", "tool = 1", "[a]\nb = 1", "x = [[[1]]]"]).map(str.encode),
    huge_int.map(lambda r: f"num-clients = {r.text}".encode()),
)


@fuzz(150)
@given(content=toml_content)
def test_config_files_with_random_content_are_refused(ws: Workspace, content: bytes) -> None:
    path = ws.inputs / "conf.toml"
    path.write_bytes(content)
    # A config that happens to be valid still fails: its data is missing.
    argv = ["--out", str(ws.root / "fresh"), "run", "--config", str(path)]
    line = assert_refused(invoke(ws, [*argv, "--set", f"data={ws.missing}"]))
    assert str(path) in line or str(ws.missing) in line or "field '" in line, line


# ---------------------------------------------------------------------------- command lines

HOSTILE = ["", "-1", "0", "abc", "1e999", "nan", "inf", "3.5", "99999999999999999999999", "\n"]
SMALL = ["2", "3", "10"]
COMMANDS: dict[str, list[str]] = {
    "run": ["--config", "--method", "--data", "--num-clients", "--rounds", "--clients-per-round",
            "--baseline", "--resume", "--set"],
    "compare": ["--config", "--methods", "--seeds", "--data", "--num-clients", "--rounds",
                "--clients-per-round", "--pairs-per-client", "--type-ratio", "--reference-steps",
                "--set", "--no-headroom"],
    "headroom": ["--format", "--skip-invalid", "--backbone", "--cache-dir", "--ks", "--trials",
                 "--folds", "--conflict-share"],
    "embed": ["--format", "--skip-invalid", "--backbone", "--cache-dir", "--batch-size"],
    "data summary": ["--format", "--skip-invalid", "--num-clients", "--pairs-per-client",
                     "--max-pairs-per-client", "--type-ratio", "--fraction-unseen",
                     "--no-partition"],
    "keys": ["--toml"],
}  # fmt: skip
FLAGS = {"--skip-invalid", "--no-headroom", "--no-partition", "--toml"}


@st.composite
def command_line(draw: st.DrawFn, ws: Workspace) -> list[str]:
    bad = ws.inputs / "argv.jsonl"
    bad.write_bytes(good_line(0) + b"\n{oops\n")
    paths = [str(ws.missing), str(bad), str(ws.existing), str(ws.inputs), "synthetic-2", "plural-2"]
    values = st.sampled_from([*HOSTILE, *SMALL, *paths]) | words | plain_text
    setting = st.sampled_from(sorted(KEY_TYPES)).map(lambda k: k + "=") | words
    command = draw(st.sampled_from(sorted(COMMANDS)))
    argv: list[str] = []
    if draw(st.booleans()):
        argv += ["--seed", draw(st.sampled_from([*HOSTILE, "1"]))]
    if draw(st.booleans()):
        argv += ["--out", draw(st.sampled_from([str(ws.existing), str(ws.root / "fresh")]))]
    argv += command.split()
    if command in ("headroom", "embed", "data summary") and draw(st.booleans()):
        argv.append(draw(st.sampled_from(paths)))
    for _ in range(draw(st.integers(0, 4))):
        option = draw(st.sampled_from([*COMMANDS[command], "--bogus", "--"]) | words)
        argv.append(option)
        if option == "--set":
            argv.append(draw(setting) + draw(values))
        elif option.startswith("--") and option not in FLAGS and draw(st.integers(0, 9)):
            argv.append(draw(values))
    return argv


@fuzz(250)
@given(data=st.data())
def test_random_command_lines_fail_in_one_line_or_are_valid(ws: Workspace, data: Any) -> None:
    argv = data.draw(command_line(ws))
    outcome = invoke(ws, argv)
    if outcome.code is None or outcome.code == 0:
        assert "Traceback" not in outcome.stderr
        if outcome.code is None:
            assert not outcome.changed, "a run folder was written before the work started"
        return
    assert_refused(outcome)
