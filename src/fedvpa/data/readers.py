"""Readers for every on-disk preference format, all producing ``PreferencePair`` lists.

Each format has one *row parser* (a record dict -> ``PreferencePair``) and every source, a local
``.jsonl``/``.jsonl.gz`` file or a Hugging Face dataset, goes through ``pairs_from_records`` with
that parser. So a hub record and a line of the same file are validated by the same code and fail
with the same reasons.

Files are read as bytes and decoded line by line, so one bad byte is reported at its line instead
of aborting the whole file with a decoder offset. Without ``skip_invalid`` the first bad row raises
``DataFormatError`` naming file, line and field; with it, bad rows are skipped and counted by
reason in a ``ReadReport``. Reasons never quote the texts (HH-RLHF contains offensive content).
"""

from __future__ import annotations

import gzip
import json
import logging
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedvpa.data.family import FAMILY, generate_family
from fedvpa.data.schema import PreferencePair, randomise_order
from fedvpa.data.transcript import TranscriptError, normalise_prompt, split_transcripts
from fedvpa.errors import ConfigError, DataFormatError

log = logging.getLogger(__name__)

FILE_FORMATS = ("generic", "hh-rlhf", "relabeled-hh")
SYNTHETIC_FORMATS = ("synthetic-2", "synthetic-4")
FAMILY_FORMATS = tuple(FAMILY)  # plural-2, plural-3, plural-4, plural-6 (fedvpa.data.family)
FORMATS = ("auto", *FILE_FORMATS, *SYNTHETIC_FORMATS, *FAMILY_FORMATS)


class RowError(ValueError):
    """One record that fails validation; ``field`` is the record field at fault, if any."""

    def __init__(self, reason: str, field: str | None = None, detail: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason if detail is None else f"{reason} ({detail})"
        self.field = field
        # Counter key: the same for every row failing the same way (no positions, no content).
        self.key = f"{field}: {reason}" if field else reason


@dataclass
class ReadReport:
    """What a read did: rows seen (non-blank lines or records), kept, skipped and why."""

    source: str = ""
    format: str = ""
    rows: int = 0
    kept: int = 0
    skipped: int = 0
    reasons: Counter[str] = field(default_factory=Counter)


RowParser = Callable[[Mapping[str, Any]], PreferencePair]


# ---------------------------------------------------------------- field validation helpers


def _record(value: object) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise RowError(f"expected a JSON object, got {type(value).__name__}")
    return value


def _text(rec: Mapping[str, Any], name: str, *, allow_empty: bool = False) -> str:
    if name not in rec:
        raise RowError("missing", name)
    value = rec[name]
    if value is None:
        raise RowError("null", name)
    if not isinstance(value, str):
        raise RowError(f"expected a string, got {type(value).__name__}", name)
    if not allow_empty and not value.strip():
        raise RowError("empty", name)
    return value


def _optional_text(rec: Mapping[str, Any], name: str) -> str | None:
    value = rec.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise RowError(f"expected a string or null, got {type(value).__name__}", name)
    return value.strip() or None


def _label(value: object, name: str = "label") -> int:
    # bool is an int subclass: true/false would silently read as 1/0.
    if isinstance(value, bool) or not isinstance(value, int) or value not in (0, 1):
        raise RowError(f"expected 0 or 1, got {value!r:.20}", name)
    return value


# ---------------------------------------------------------------------------- row parsers


def parse_generic_row(rec: Mapping[str, Any]) -> PreferencePair:
    """``{"prompt", "chosen", "rejected", "user"?, "type"?, "conflict"?}``."""
    rec = _record(rec)
    prompt = _text(rec, "prompt")
    chosen = _text(rec, "chosen").strip()
    rejected = _text(rec, "rejected").strip()
    if chosen == rejected:
        raise RowError("identical to 'chosen'", "rejected")
    conflict = rec.get("conflict")
    if conflict is not None and not isinstance(conflict, bool):
        raise RowError(f"expected true, false or null, got {type(conflict).__name__}", "conflict")
    return PreferencePair(
        prompt=normalise_prompt(prompt),
        response_a=chosen,
        response_b=rejected,
        preferred=0,
        user=_optional_text(rec, "user"),
        user_type=_optional_text(rec, "type"),
        conflict=conflict,
    )


def parse_hh_row(rec: Mapping[str, Any]) -> PreferencePair:
    """Raw HH-RLHF: ``{"chosen": transcript, "rejected": transcript}``."""
    rec = _record(rec)
    chosen = _text(rec, "chosen")
    rejected = _text(rec, "rejected")
    try:
        prompt, chosen_reply, rejected_reply = split_transcripts(chosen, rejected)
    except TranscriptError as err:
        raise RowError(err.reason, err.field) from None
    return PreferencePair(prompt, chosen_reply, rejected_reply, preferred=0)


def parse_relabeled_row(rec: Mapping[str, Any]) -> PreferencePair:
    """Relabeled HH-RLHF (VPL): ``prompt``, ``responses[2]``, ``label``, ``objective``.

    ``objective`` is the user type and ``label`` indexes the reply that type prefers. The stored
    prompt lacks the final Assistant marker; it is normalised to the raw HH-RLHF form.
    """
    rec = _record(rec)
    prompt = _text(rec, "prompt")
    responses = rec.get("responses")
    if responses is None:
        raise RowError("missing", "responses")
    if not isinstance(responses, list) or len(responses) != 2:
        raise RowError("expected a list of two strings", "responses")
    if not all(isinstance(r, str) for r in responses):
        raise RowError("expected a list of two strings", "responses")
    a, b = responses[0].strip(), responses[1].strip()
    if a == b:
        raise RowError("the two responses are identical", "responses")
    if "label" not in rec:
        raise RowError("missing", "label")
    label = _label(rec["label"])
    objective = _text(rec, "objective").strip()
    return PreferencePair(
        prompt=normalise_prompt(prompt),
        response_a=a,
        response_b=b,
        preferred=label,
        user_type=objective,
    )


ROW_PARSERS: dict[str, RowParser] = {
    "generic": parse_generic_row,
    "hh-rlhf": parse_hh_row,
    "relabeled-hh": parse_relabeled_row,
}


# ------------------------------------------------------------------ the one shared pipeline


def pairs_from_records(
    records: Iterable[tuple[int, object]],
    source: str,
    fmt: str,
    *,
    seed: int = 0,
    skip_invalid: bool = False,
    report: ReadReport | None = None,
) -> list[PreferencePair]:
    """Parse ``(line, record)`` items with the row parser of ``fmt``; randomise A/B by ``seed``.

    A record may be a ``RowError`` already (a line that was not valid UTF-8 or JSON), so decoding
    failures are counted and reported exactly like validation failures.
    """
    if fmt not in ROW_PARSERS:
        raise ConfigError(f"unknown record format {fmt!r}; expected one of {list(ROW_PARSERS)}")
    parse = ROW_PARSERS[fmt]
    rep = report if report is not None else ReadReport()
    rep.source, rep.format = source, fmt
    pairs: list[PreferencePair] = []
    for line, rec in records:
        rep.rows += 1
        try:
            if isinstance(rec, RowError):
                raise rec
            pair = parse(rec)  # type: ignore[arg-type]
        except RowError as err:
            if not skip_invalid:
                raise DataFormatError(
                    f"{err.reason}; --skip-invalid (skip-invalid = true) skips and counts "
                    "such rows",
                    path=source,
                    line=line,
                    field=err.field,
                ) from None
            rep.skipped += 1
            rep.reasons[err.key] += 1
            continue
        pairs.append(_with_source(pair, f"{source}:{line}"))
    rep.kept = len(pairs)
    if rep.skipped:
        log.warning(
            "%s: skipped %d of %d rows: %s", source, rep.skipped, rep.rows, dict(rep.reasons)
        )
    return randomise_order(pairs, seed)


def _with_source(pair: PreferencePair, source: str) -> PreferencePair:
    return PreferencePair(
        pair.prompt,
        pair.response_a,
        pair.response_b,
        pair.preferred,
        pair.user,
        pair.user_type,
        source,
        pair.conflict,
    )


# ------------------------------------------------------------------------------ file layer


def _read_bytes(path: Path) -> bytes:
    if not path.is_file():
        raise DataFormatError("file not found", path=str(path))
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as err:
            raise DataFormatError(f"corrupt gzip data ({err})", path=str(path)) from None
    return raw


def _json_lines(data: bytes) -> Iterator[tuple[int, object]]:
    """(1-based line, decoded JSON or RowError) for every non-blank line."""
    for number, raw in enumerate(data.split(b"\n"), start=1):
        if not raw.strip():
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            yield number, RowError("invalid UTF-8", detail=f"byte {err.start}")
            continue
        try:
            yield number, json.loads(text)
        except json.JSONDecodeError as err:
            yield number, RowError("malformed JSON", detail=f"{err.msg}, column {err.colno}")
        except ValueError:  # an integer literal of more than 4300 digits
            yield number, RowError("malformed JSON", detail="number too long")
        except RecursionError:
            yield number, RowError("malformed JSON", detail="nested too deeply")


def _read_file(
    path: str | Path, fmt: str, seed: int, skip_invalid: bool, report: ReadReport | None
) -> list[PreferencePair]:
    p = Path(path)
    return pairs_from_records(
        _json_lines(_read_bytes(p)),
        str(p),
        fmt,
        seed=seed,
        skip_invalid=skip_invalid,
        report=report,
    )


def read_generic_jsonl(
    path: str | Path,
    seed: int = 0,
    skip_invalid: bool = False,
    report: ReadReport | None = None,
) -> list[PreferencePair]:
    """``{"prompt","chosen","rejected","user"?,"type"?,"conflict"?}`` per line."""
    return _read_file(path, "generic", seed, skip_invalid, report)


def read_hh_rlhf(
    path: str | Path,
    seed: int = 0,
    skip_invalid: bool = False,
    report: ReadReport | None = None,
) -> list[PreferencePair]:
    """Raw HH-RLHF ``{"chosen": transcript, "rejected": transcript}`` per line."""
    return _read_file(path, "hh-rlhf", seed, skip_invalid, report)


def read_relabeled_hh(
    path: str | Path,
    seed: int = 0,
    skip_invalid: bool = False,
    report: ReadReport | None = None,
) -> list[PreferencePair]:
    """Relabeled HH-RLHF (VPL): ``objective`` is the user type, ``label`` its preferred reply."""
    return _read_file(path, "relabeled-hh", seed, skip_invalid, report)


# ------------------------------------------------------------------------------- hub layer

DatasetLoader = Callable[..., Iterable[Mapping[str, Any]]]


def _default_loader() -> DatasetLoader:
    try:
        import datasets
    except ImportError:
        raise ConfigError(
            "loading from the Hugging Face hub needs the 'datasets' package: "
            "pip install 'fedvpa[hub]'"
        ) from None
    return datasets.load_dataset


def load_hf_hh_rlhf(
    data_dir: str | None = None,
    split: str = "train",
    *,
    seed: int = 0,
    skip_invalid: bool = False,
    report: ReadReport | None = None,
    dataset_name: str = "Anthropic/hh-rlhf",
    loader: DatasetLoader | None = None,
) -> list[PreferencePair]:
    """HH-RLHF from the hub (``datasets.load_dataset(name, data_dir=..., split=...)``).

    Every record goes through ``parse_hh_row``, the parser of ``read_hh_rlhf``. ``loader`` and
    ``dataset_name`` are injectable so tests (and offline users) can feed local files through
    this exact path; sources read ``hf:<name>[/<data_dir>]:<split>:<row>`` with 1-based rows.
    """
    load = loader if loader is not None else _default_loader()
    source = f"hf:{dataset_name}" + (f"/{data_dir}" if data_dir else "") + f":{split}"
    try:
        dataset = load(dataset_name, data_dir=data_dir, split=split)
    except (ConfigError, DataFormatError):
        raise
    except Exception as err:  # the hub raises many unrelated types; name the source instead
        raise DataFormatError(
            f"could not load dataset ({type(err).__name__}: {err})", path=source
        ) from None
    return pairs_from_records(
        enumerate(dataset, start=1),
        source,
        "hh-rlhf",
        seed=seed,
        skip_invalid=skip_invalid,
        report=report,
    )


# ---------------------------------------------------------------------------- dispatching


def sniff_format(path: str | Path) -> str:
    """Format of a JSONL file from the keys of its first line that is a JSON object."""
    p = Path(path)
    for line, rec in _json_lines(_read_bytes(p)):
        if not isinstance(rec, Mapping):
            continue
        keys = set(rec)
        if {"responses", "label"} <= keys:
            return "relabeled-hh"
        if {"prompt", "chosen", "rejected"} <= keys:
            return "generic"
        if {"chosen", "rejected"} <= keys:
            return "hh-rlhf"
        raise DataFormatError(
            f"cannot tell the format from keys {sorted(keys)}; pass format= one of "
            f"{list(FILE_FORMATS)}",
            path=str(p),
            line=line,
        )
    raise DataFormatError("no JSON object rows found", path=str(p))


def read_pairs(
    path_or_name: str | Path,
    format: str = "auto",
    *,
    seed: int = 0,
    skip_invalid: bool = False,
    report: ReadReport | None = None,
) -> list[PreferencePair]:
    """Read a file, or generate a named set (``synthetic-2``/``-4``, ``plural-2/3/4/6``).

    ``format="auto"`` takes the generated names literally and sniffs files by the keys of their
    first JSON object; the generated sets use their default sizes with ``seed``.
    """
    if format not in FORMATS:
        raise ConfigError(
            f"unknown data format {format!r}; expected one of {list(FORMATS)}", field="format"
        )
    name = str(path_or_name)
    if format == "auto" and name in (*SYNTHETIC_FORMATS, *FAMILY_FORMATS):
        format = name
    if format in FAMILY_FORMATS:
        pairs = generate_family(format, seed=seed)
        if report is not None:
            report.source, report.format = format, format
            report.rows = report.kept = len(pairs)
        return pairs
    if format in SYNTHETIC_FORMATS:
        from fedvpa.data.synthetic import generate_synthetic

        pairs = generate_synthetic(num_types=int(format.rsplit("-", 1)[1]), seed=seed)
        if report is not None:
            report.source, report.format = format, format
            report.rows = report.kept = len(pairs)
        return pairs
    if format == "auto":
        format = sniff_format(name)
    return _read_file(name, format, seed, skip_invalid, report)
