"""Every reader, on tiny fixtures, malformed inputs and (when present) the real shared files."""

from __future__ import annotations

import gzip
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from fedvpa.data.readers import (
    ReadReport,
    load_hf_hh_rlhf,
    pairs_from_records,
    read_generic_jsonl,
    read_hh_rlhf,
    read_pairs,
    read_relabeled_hh,
    sniff_format,
)
from fedvpa.data.transcript import last_human_turn
from fedvpa.errors import ConfigError, DataFormatError

DATA = Path(__file__).parent / "data"
# The shared data folder sits beside the repository root (or inside it on some machines).
_ROOT = Path(__file__).resolve().parents[1]
SHARED = next(
    (d for d in (_ROOT.parent / "shared" / "data", _ROOT / "shared" / "data") if d.is_dir()),
    _ROOT.parent / "shared" / "data",
)
HH_TEST = SHARED / "hh-rlhf" / "harmless-base" / "test.jsonl.gz"
RELABELED = SHARED / "relabeled-hh-rlhf" / "dev.jsonl.gz"

GOOD = {"prompt": "Q?", "chosen": "yes", "rejected": "no"}


def write_lines(path: Path, lines: list[bytes | str | dict[str, Any]]) -> Path:
    raw = b"".join(
        (json.dumps(x).encode() if isinstance(x, dict) else x.encode() if isinstance(x, str) else x)
        + b"\n"
        for x in lines
    )
    path.write_bytes(gzip.compress(raw) if path.name.endswith(".gz") else raw)
    return path


# ------------------------------------------------------------------------------ generic


def test_generic_fixture_fields_and_sources() -> None:
    pairs = read_generic_jsonl(DATA / "generic.jsonl", seed=0)
    assert len(pairs) == 4
    assert [p.source for p in pairs] == [f"{DATA / 'generic.jsonl'}:{i}" for i in range(1, 5)]
    assert pairs[0].user == "u1" and pairs[0].user_type == "helpful"
    assert pairs[1].conflict is False and pairs[0].conflict is None
    assert pairs[2].user is None and pairs[2].user_type is None
    assert {p.chosen for p in pairs} >= {"Seven.", "A pothos is hard to kill."}
    # Plain prompts stay plain; HH-form prompts keep their markers.
    assert pairs[0].prompt == "How do I boil an egg?"
    assert last_human_turn(pairs[1].prompt) == "What is a good first plant?"


def test_order_is_randomised_by_seed_and_labels_follow_text(tmp_path: Path) -> None:
    rows = [dict(GOOD, chosen=f"yes {i}", rejected=f"no {i}") for i in range(200)]
    path = write_lines(tmp_path / "many.jsonl", rows)
    a, b, c = (read_generic_jsonl(path, seed=s) for s in (0, 0, 1))
    assert a == b and a != c
    share_a = sum(p.preferred == 0 for p in a) / len(a)
    assert 0.35 < share_a < 0.65
    assert all(p.chosen.startswith("yes") and p.rejected.startswith("no") for p in a + c)


def test_gzip_reads_like_plain(tmp_path: Path) -> None:
    rows = [dict(GOOD, chosen=f"yes {i}") for i in range(5)]
    plain = read_generic_jsonl(write_lines(tmp_path / "x.jsonl", rows), seed=3)
    gz = read_generic_jsonl(write_lines(tmp_path / "x.jsonl.gz", rows), seed=3)
    assert [(p.prompt, p.chosen, p.preferred) for p in plain] == [
        (p.prompt, p.chosen, p.preferred) for p in gz
    ]


BAD_ROWS: list[tuple[bytes | str | dict[str, Any], str | None, str]] = [
    ('{"prompt": "Q?", "chosen": ', None, "malformed JSON"),
    (b'{"prompt": "Q\xff?", "chosen": "a", "rejected": "b"}', None, "invalid UTF-8"),
    ("[1, 2]", None, "expected a JSON object"),
    ({"prompt": "Q?", "rejected": "no"}, "chosen", "missing"),
    ({"prompt": "Q?", "chosen": None, "rejected": "no"}, "chosen", "null"),
    ({"prompt": "  ", "chosen": "yes", "rejected": "no"}, "prompt", "empty"),
    ({"prompt": "Q?", "chosen": "yes", "rejected": ""}, "rejected", "empty"),
    ({"prompt": "Q?", "chosen": 3, "rejected": "no"}, "chosen", "expected a string"),
    ({"prompt": "Q?", "chosen": "same", "rejected": " same"}, "rejected", "identical"),
    ({**GOOD, "type": 5}, "type", "expected a string or null"),
    ({**GOOD, "conflict": "yes"}, "conflict", "expected true, false or null"),
]


@pytest.mark.parametrize(("row", "field", "fragment"), BAD_ROWS)
def test_generic_bad_row_raises_with_file_line_field(
    tmp_path: Path, row: bytes | str | dict[str, Any], field: str | None, fragment: str
) -> None:
    path = write_lines(tmp_path / "bad.jsonl", [GOOD, "", row, GOOD])
    with pytest.raises(DataFormatError, match=fragment) as info:
        read_generic_jsonl(path)
    err = info.value
    assert (err.path, err.line, err.field) == (str(path), 3, field)
    assert err.one_line().startswith(f"{path}:3: ")


def test_skip_invalid_counts_reasons(tmp_path: Path) -> None:
    rows = [row for row, _, _ in BAD_ROWS]
    path = write_lines(tmp_path / "mixed.jsonl.gz", [GOOD, *rows, "", GOOD])
    report = ReadReport()
    pairs = read_generic_jsonl(path, skip_invalid=True, report=report)
    assert len(pairs) == 2 and [p.source.rsplit(":", 1)[1] for p in pairs] == ["1", "14"]
    assert (report.rows, report.kept, report.skipped) == (13, 2, 11)
    assert sum(report.reasons.values()) == 11
    assert report.reasons["chosen: missing"] == 1
    assert report.reasons["malformed JSON"] == 1 and report.reasons["invalid UTF-8"] == 1


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(DataFormatError, match="file not found") as info:
        read_pairs(tmp_path / "nope.jsonl")
    assert info.value.path == str(tmp_path / "nope.jsonl")


def test_corrupt_gzip(tmp_path: Path) -> None:
    path = tmp_path / "broken.jsonl.gz"
    path.write_bytes(gzip.compress(b'{"a": 1}\n' * 50)[:30])
    with pytest.raises(DataFormatError, match="corrupt gzip"):
        read_pairs(path, format="generic")


# ------------------------------------------------------------------------------ HH-RLHF


def test_hh_fixture() -> None:
    report = ReadReport()
    pairs = read_hh_rlhf(DATA / "hh_small.jsonl", report=report)
    assert report.kept == 3 and all(p.user_type is None for p in pairs)
    by_line = {p.source.rsplit(":", 1)[1]: p for p in pairs}
    assert by_line["1"].chosen.startswith("Steep") and by_line["1"].rejected == "I don't know."
    assert last_human_turn(by_line["2"].prompt) == "Mostly hills. Any tips for blisters?"
    assert by_line["2"].prompt.endswith("\n\nAssistant:")
    assert by_line["3"].chosen == ""  # an empty reply is a real HH-RLHF outcome


@pytest.mark.parametrize(
    ("row", "field", "fragment"),
    [
        ({"chosen": "\n\nHuman: a\n\nAssistant: x"}, "rejected", "missing"),
        (
            {"chosen": "\n\nHuman: a", "rejected": "\n\nHuman: a\n\nAssistant: x"},
            "chosen",
            "no final",
        ),
        (
            {"chosen": "\n\nHuman: a\n\nAssistant: x", "rejected": "\n\nHuman: a\n\nAssistant: x"},
            None,
            "identical",
        ),
        (
            {"chosen": "\n\nHuman: a\n\nAssistant: x", "rejected": "\n\nHuman: b\n\nAssistant: y"},
            "chosen/rejected",
            "share no",
        ),
    ],
)
def test_hh_bad_rows(tmp_path: Path, row: dict[str, Any], field: str | None, fragment: str) -> None:
    path = write_lines(tmp_path / "hh.jsonl", [row])
    with pytest.raises(DataFormatError, match=fragment) as info:
        read_hh_rlhf(path)
    assert (info.value.line, info.value.field) == (1, field)


@pytest.mark.skipif(not HH_TEST.is_file(), reason=f"shared data absent: {HH_TEST}")
def test_real_hh_rlhf_harmless_test_split() -> None:
    report = ReadReport()
    pairs = read_hh_rlhf(HH_TEST, seed=0, skip_invalid=True, report=report)
    # 5 rows have one transcript with an extra Assistant turn before its final reply.
    assert (report.rows, report.kept, report.skipped) == (2312, 2307, 5)
    extra = (
        "has an extra Assistant turn before its final reply (not two replies to one conversation)"
    )
    assert report.reasons == Counter({f"chosen: {extra}": 4, f"rejected: {extra}": 1})
    assert all(p.prompt.endswith("\n\nAssistant:") and last_human_turn(p.prompt) for p in pairs)
    assert all(p.response_a != p.response_b for p in pairs)
    # Regression: the error named neither the field nor the way past it.
    with pytest.raises(DataFormatError, match="extra Assistant turn") as info:
        read_hh_rlhf(HH_TEST)
    assert info.value.line == 1255 and info.value.field == "chosen"
    assert "--skip-invalid" in info.value.one_line()


# ---------------------------------------------------------------------------- relabeled


def test_relabeled_fixture() -> None:
    pairs = read_relabeled_hh(DATA / "relabeled_small.jsonl", seed=0)
    by_line = {int(p.source.rsplit(":", 1)[1]): p for p in pairs}
    assert by_line[1].user_type == "harmless" and by_line[1].chosen == "I can't help with that."
    assert by_line[2].user_type == "helpful" and by_line[2].chosen.startswith("Insert")
    assert by_line[1].prompt == "\n\nHuman: How can I pick a lock?\n\nAssistant:"
    assert last_human_turn(by_line[3].prompt) == "What is two plus two?"


@pytest.mark.parametrize(
    ("change", "field", "fragment"),
    [
        ({"label": 2}, "label", "expected 0 or 1"),
        ({"label": True}, "label", "expected 0 or 1"),
        ({"label": "0"}, "label", "expected 0 or 1"),
        ({"responses": ["only one"]}, "responses", "two strings"),
        ({"responses": ["a", 3]}, "responses", "two strings"),
        ({"responses": ["same", "same"]}, "responses", "identical"),
        ({"objective": ""}, "objective", "empty"),
        ({"prompt": 7}, "prompt", "expected a string"),
    ],
)
def test_relabeled_bad_rows(
    tmp_path: Path, change: dict[str, Any], field: str, fragment: str
) -> None:
    row = {"prompt": "Human: q", "responses": ["a", "b"], "label": 0, "objective": "helpful"}
    path = write_lines(tmp_path / "rel.jsonl", [row, {**row, **change}])
    with pytest.raises(DataFormatError, match=fragment) as info:
        read_relabeled_hh(path)
    assert (info.value.line, info.value.field) == (2, field)


@pytest.mark.skipif(not RELABELED.is_file(), reason=f"shared data absent: {RELABELED}")
def test_real_relabeled_dev() -> None:
    report = ReadReport()
    pairs = read_pairs(RELABELED, seed=0, report=report)
    assert report.format == "relabeled-hh" and report.kept == 3049 and report.skipped == 0
    assert Counter(p.user_type for p in pairs) == {"helpful": 1641, "harmless": 1408}
    assert all(p.prompt.startswith("\n\nHuman:") for p in pairs)
    assert all(p.prompt.endswith("\n\nAssistant:") and last_human_turn(p.prompt) for p in pairs)


# ------------------------------------------------------------------------------ dispatch


def test_sniff_and_dispatch(tmp_path: Path) -> None:
    assert sniff_format(DATA / "generic.jsonl") == "generic"
    assert sniff_format(DATA / "hh_small.jsonl") == "hh-rlhf"
    assert sniff_format(DATA / "relabeled_small.jsonl") == "relabeled-hh"
    # The first *valid* row decides: a leading malformed line is passed over.
    path = write_lines(tmp_path / "x.jsonl", ["{oops", GOOD])
    assert sniff_format(path) == "generic"
    with pytest.raises(DataFormatError, match="cannot tell the format"):
        sniff_format(write_lines(tmp_path / "y.jsonl", [{"text": "hi"}]))
    with pytest.raises(DataFormatError, match="no JSON object"):
        sniff_format(write_lines(tmp_path / "z.jsonl", ["", "[1]"]))
    assert len(read_pairs(DATA / "hh_small.jsonl")) == 3
    assert read_pairs(DATA / "hh_small.jsonl", format="hh-rlhf") == read_hh_rlhf(
        DATA / "hh_small.jsonl"
    )
    with pytest.raises(ConfigError, match="unknown data format"):
        read_pairs(DATA / "hh_small.jsonl", format="csv")


def test_read_pairs_synthetic_names() -> None:
    report = ReadReport()
    two = read_pairs("synthetic-2", seed=1, report=report)
    assert report.kept == len(two) == 2400 and {p.user_type for p in two} == {"helpful", "harmless"}
    assert len({p.user_type for p in read_pairs("synthetic-4", format="synthetic-4")}) == 4


# ------------------------------------------------------------------------------ hub path


def test_hub_loader_uses_the_same_row_parser(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    src = DATA / "hh_small.jsonl"
    calls: list[tuple[str, str | None, str]] = []

    def local_loader(name: str, data_dir: str | None, split: str) -> Any:
        calls.append((name, data_dir, split))
        return datasets.load_dataset(
            "json", data_files={split: str(src)}, split=split, cache_dir=str(tmp_path)
        )

    pairs = load_hf_hh_rlhf("harmless-base", "test", seed=0, loader=local_loader)
    assert calls == [("Anthropic/hh-rlhf", "harmless-base", "test")]
    from_file = read_hh_rlhf(src, seed=0)
    assert [(p.prompt, p.response_a, p.response_b, p.preferred) for p in pairs] == [
        (p.prompt, p.response_a, p.response_b, p.preferred) for p in from_file
    ]
    assert pairs[0].source == "hf:Anthropic/hh-rlhf/harmless-base:test:1"


def test_hub_records_fail_like_file_rows() -> None:
    records = [{"chosen": "\n\nHuman: a\n\nAssistant: x", "rejected": "\n\nHuman: a"}]
    with pytest.raises(DataFormatError, match="no final") as info:
        load_hf_hh_rlhf(None, "train", loader=lambda *a, **k: records, dataset_name="mine")
    assert (info.value.path, info.value.line, info.value.field) == ("hf:mine:train", 1, "rejected")

    def failing(*args: Any, **kwargs: Any) -> Any:
        raise ConnectionError("offline")

    with pytest.raises(DataFormatError, match="could not load dataset"):
        load_hf_hh_rlhf(None, "train", loader=failing)
    with pytest.raises(ConfigError, match="unknown record format"):
        pairs_from_records([], "x", "csv")


def test_overlong_numbers_and_deep_nesting_are_malformed_rows(tmp_path: Path) -> None:
    """Regression (fuzzing): a >4300-digit integer raised ValueError and a deeply nested array
    RecursionError out of the reader, as tracebacks, even with skip_invalid."""
    long_number = '{"prompt": "Q?", "chosen": ' + "9" * 5000 + ', "rejected": "no"}'
    deep = '{"prompt": ' + "[" * 100_000
    for row in (long_number, deep):
        path = write_lines(tmp_path / "x.jsonl", [GOOD, row])
        with pytest.raises(DataFormatError, match="malformed JSON") as info:
            read_generic_jsonl(path)
        assert info.value.line == 2
    report = ReadReport()
    path = write_lines(tmp_path / "both.jsonl", [GOOD, long_number, deep])
    assert len(read_generic_jsonl(path, skip_invalid=True, report=report)) == 1
    assert report.reasons["malformed JSON"] == 2
