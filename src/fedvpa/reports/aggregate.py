"""Validation and seed-aggregation of a ``fedvpa compare`` results dict.

The compare runner trains every method with several seeds and hands the reporting layer one
plain, JSON-able dict. Everything in ``fedvpa.reports`` reads only this dict, so a report can be
rebuilt later from ``results.json`` alone, without retraining. The structure is::

    results = {
      "config": {...},            # the flat experiment config: "data", "num-clients",
                                  # "num-server-rounds", "backbone", ... (reported, not checked)
      "runs": [                   # one entry per (method, seed); (method, seed) is unique
        {
          "method": "fedvpa-gp",  # any non-empty string; METHOD_ORDER fixes the table order
          "seed": 0,              # int
          "seconds": 41.2,        # wall time of the run, >= 0
          "user_types": ["harmless", "helpful"],   # the same list in every run
          "history": [            # per evaluated round, rounds strictly increasing;
            {                     # empty for the references (oracle, centralised-vpl)
              "round": 5,
              "seen_macro": 0.71, "unseen_macro": 0.66,            # in [0, 1] or null
              "seen_per_type": {"harmless": 0.7, "helpful": 0.72}, # optional
              "unseen_per_type": {...},                            # optional
              "kl": 1.3, "active_units": 4,                        # optional, or null
              "num_groups": 4,        # optional int: prototype groups the server used that
            }, ...                    # round (latent methods that group their clients)
          ],
          "final": {
            "seen":   {"per_type": {type: acc or null}, "macro": 0.8,
                       "conflict": 0.75 or null, "n": 320},
            "unseen": {... same keys ...},
            "kl": 2.1 or null, "active_units": 5 or null, "silhouette": 0.4 or null,
            "bytes_up_per_client_round": 12345.0 or null,
            "seen_last10_mean": 0.79 or null,  # optional: mean and sample std of seen_macro
            "seen_last10_std": 0.012 or null,  # over the history's last 10 evaluations
          },
          "latent": null or {"mu": [[d floats], ...],          # one row per client
                             "user_type": ["helpful", ...],    # one per row of mu
                             "unseen": [false, ...],           # one per row of mu
                             "prototypes": [[d floats], ...] or null},
          "k_curve": null or {"k": [1, 2, 4, 8], "unseen_macro": [0.55, 0.6, 0.68, 0.74]},
        }, ...
      ],
      "headroom": {"0": {...}, ...}  # optional, per seed: fedvpa.evaluation.headroom's
    }                                # client_headroom dict, or {"error": ...} (not validated)

Accuracies are fractions in [0, 1]; the report shows them in percent. ``macro`` is the unweighted
mean of the per-type accuracies that are not null; validation checks that it is (to within
``MACRO_TOLERANCE``), because a table whose macro column disagrees with its per-type columns
would be quietly wrong. ``latent`` and ``k_curve`` may be absent as well as null.

``seen_last10_mean`` / ``seen_last10_std`` summarise how a run ended rather than where its last
round happened to land: a method that swings from round to round has a final-round accuracy that
is one draw of that swing. They are derived from ``history`` (see ``seen_stability``) and, when
present, must agree with it, for the same reason as ``macro``; results written before they
existed lack them and are read as not measured (null), as is an absent ``num_groups``.

Standard deviations are sample standard deviations over seeds (ddof=1). With a single value the
std is ``None``, not 0: the spread of one seed is unknown, and 0 would claim a precision that was
never measured. Seeds whose value is null (e.g. no KL for a method without a latent) are left out
of that statistic, and ``n`` says how many seeds it is over.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any, NoReturn

from fedvpa.errors import DataFormatError

METHOD_ORDER: tuple[str, ...] = (
    "oracle",
    "centralised-vpl",
    "fedavg-bt",
    "fedbiscuit",
    "fedvpl",
    "fedvpl+ortho",
    "fedvpl+gp",
    "fedvpa-gp",
)
REFERENCE_METHODS: frozenset[str] = frozenset({"oracle", "centralised-vpl"})

MACRO_TOLERANCE = 1e-3
COLLAPSE_KL = 0.05  # below this mean KL(q || prior), z carries (almost) nothing

SPLITS: tuple[str, ...] = ("seen", "unseen")
SCALARS: tuple[str, ...] = ("kl", "active_units", "silhouette", "bytes_up_per_client_round")
# The window of the end-of-training summary; the result keys name it, so changing it means
# renaming them (old results files would otherwise silently mean a different window).
STABILITY_WINDOW = 10
STABILITY_MEAN = "seen_last10_mean"
STABILITY_STD = "seen_last10_std"
STABILITY_KEYS: tuple[str, ...] = (STABILITY_MEAN, STABILITY_STD)

Stat = dict[str, Any]  # {"mean": float | None, "std": float | None, "n": int}


class ResultsFormatError(DataFormatError, ValueError):
    """A malformed results dict.

    A ``DataFormatError`` so the CLI prints it as one line and exits 2, and a ``ValueError`` so
    callers that only know the reporting API can catch the ordinary exception for bad values.
    """


def _fail(where: str, field: str, reason: str) -> NoReturn:
    raise ResultsFormatError(reason, path=where, field=field)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _check_number(
    where: str,
    field: str,
    value: Any,
    *,
    nullable: bool = False,
    low: float | None = None,
    high: float | None = None,
) -> None:
    if value is None and nullable:
        return
    if not _is_number(value):
        expected = "a finite number or null" if nullable else "a finite number"
        _fail(where, field, f"expected {expected}, got {value!r}")
    if low is not None and value < low:
        _fail(where, field, f"must be >= {low}, got {value!r}")
    if high is not None and value > high:
        _fail(where, field, f"must be <= {high}, got {value!r}")


def _check_accuracy(where: str, field: str, value: Any, *, nullable: bool) -> None:
    _check_number(where, field, value, nullable=nullable, low=0.0, high=1.0)


def _check_per_type(where: str, field: str, value: Any, user_types: Sequence[str]) -> None:
    if not isinstance(value, Mapping):
        _fail(where, field, f"expected an object of user type -> accuracy, got {value!r}")
    for key, acc in value.items():
        if key not in user_types:
            _fail(where, field, f"unknown user type {key!r} (user_types: {list(user_types)})")
        _check_accuracy(where, f"{field}.{key}", acc, nullable=True)


def macro_of(per_type: Mapping[str, float | None]) -> float | None:
    """The unweighted mean over user types, so a majority type cannot hide a neglected one."""
    values = [v for v in per_type.values() if v is not None]
    return sum(values) / len(values) if values else None


def _check_split(where: str, field: str, value: Any, user_types: Sequence[str]) -> None:
    if not isinstance(value, Mapping):
        _fail(where, field, f"expected an object, got {value!r}")
    for key in ("per_type", "macro", "n"):
        if key not in value:
            _fail(where, f"{field}.{key}", "missing")
    _check_per_type(where, f"{field}.per_type", value["per_type"], user_types)
    _check_accuracy(where, f"{field}.macro", value["macro"], nullable=True)
    _check_accuracy(where, f"{field}.conflict", value.get("conflict"), nullable=True)
    n = value["n"]
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        _fail(where, f"{field}.n", f"expected a non-negative int, got {n!r}")
    expected = macro_of(value["per_type"])
    macro = value["macro"]
    if (expected is None) != (macro is None) or (
        expected is not None and abs(expected - macro) > MACRO_TOLERANCE
    ):
        _fail(
            where,
            f"{field}.macro",
            f"{macro!r} is not the unweighted mean of per_type ({expected!r})",
        )


def _check_matrix(where: str, field: str, value: Any, width: int | None) -> int:
    """Rows of equal length of finite numbers; returns the row length."""
    if not isinstance(value, Sequence) or isinstance(value, str) or not value:
        _fail(where, field, "expected a non-empty list of rows")
    for i, row in enumerate(value):
        if not isinstance(row, Sequence) or isinstance(row, str) or not row:
            _fail(where, f"{field}[{i}]", "expected a non-empty list of numbers")
        if width is not None and len(row) != width:
            _fail(where, f"{field}[{i}]", f"expected {width} values, got {len(row)}")
        width = len(row)
        for j, x in enumerate(row):
            _check_number(where, f"{field}[{i}][{j}]", x)
    assert width is not None
    return width


def _check_latent(where: str, value: Any, user_types: Sequence[str]) -> None:
    if value is None:
        return
    if not isinstance(value, Mapping):
        _fail(where, "latent", f"expected an object or null, got {value!r}")
    for key in ("mu", "user_type", "unseen"):
        if key not in value:
            _fail(where, f"latent.{key}", "missing")
    width = _check_matrix(where, "latent.mu", value["mu"], None)
    rows = len(value["mu"])
    for key in ("user_type", "unseen"):
        column = value[key]
        if not isinstance(column, Sequence) or isinstance(column, str) or len(column) != rows:
            _fail(where, f"latent.{key}", f"expected a list of {rows} values (one per row of mu)")
    for i, t in enumerate(value["user_type"]):
        if t not in user_types:
            _fail(where, f"latent.user_type[{i}]", f"unknown user type {t!r}")
    for i, flag in enumerate(value["unseen"]):
        if not isinstance(flag, bool):
            _fail(where, f"latent.unseen[{i}]", f"expected true/false, got {flag!r}")
    if value.get("prototypes") is not None:
        _check_matrix(where, "latent.prototypes", value["prototypes"], width)


def _check_k_curve(where: str, value: Any) -> None:
    if value is None:
        return
    if not isinstance(value, Mapping) or "k" not in value or "unseen_macro" not in value:
        _fail(where, "k_curve", "expected null or an object with 'k' and 'unseen_macro'")
    ks, accs = value["k"], value["unseen_macro"]
    if not isinstance(ks, Sequence) or not isinstance(accs, Sequence) or len(ks) != len(accs):
        _fail(where, "k_curve", "'k' and 'unseen_macro' must be lists of the same length")
    if not ks:
        _fail(where, "k_curve.k", "empty")
    for i, k in enumerate(ks):
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            _fail(where, f"k_curve.k[{i}]", f"expected a positive int, got {k!r}")
        if i and k <= ks[i - 1]:
            _fail(where, f"k_curve.k[{i}]", "k must be strictly increasing")
    for i, acc in enumerate(accs):
        _check_accuracy(where, f"k_curve.unseen_macro[{i}]", acc, nullable=False)


def _check_history(where: str, value: Any, user_types: Sequence[str]) -> None:
    if not isinstance(value, Sequence) or isinstance(value, str):
        _fail(where, "history", "expected a list (empty for references)")
    last = None
    for i, entry in enumerate(value):
        here = f"history[{i}]"
        if not isinstance(entry, Mapping):
            _fail(where, here, "expected an object")
        rnd = entry.get("round")
        if not isinstance(rnd, int) or isinstance(rnd, bool) or rnd < 0:
            _fail(where, f"{here}.round", f"expected a non-negative int, got {rnd!r}")
        if last is not None and rnd <= last:
            _fail(where, f"{here}.round", f"rounds must increase ({rnd} after {last})")
        last = rnd
        for split in SPLITS:
            _check_accuracy(
                where, f"{here}.{split}_macro", entry.get(f"{split}_macro"), nullable=True
            )
            if entry.get(f"{split}_per_type") is not None:
                _check_per_type(
                    where, f"{here}.{split}_per_type", entry[f"{split}_per_type"], user_types
                )
        _check_number(where, f"{here}.kl", entry.get("kl"), nullable=True, low=0.0)
        _check_number(
            where, f"{here}.active_units", entry.get("active_units"), nullable=True, low=0
        )
        _check_count(where, f"{here}.num_groups", entry.get("num_groups"))


def _check_count(where: str, field: str, value: Any) -> None:
    """Null or a non-negative int: a count of groups is never fractional, and 4.0 is refused
    rather than rounded so a writer that produces it gets fixed instead of silently trusted."""
    if value is None:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        _fail(where, field, f"expected a non-negative int or null, got {value!r}")


def last_seen_macros(
    history: Sequence[Mapping[str, Any]], window: int = STABILITY_WINDOW
) -> list[float]:
    """The seen macro accuracy of the last ``window`` evaluations that measured it.

    Evaluations without a seen value (null) are skipped rather than counted, so the window
    always holds up to ``window`` real measurements.
    """
    values = [float(e["seen_macro"]) for e in history if e.get("seen_macro") is not None]
    return values[-window:] if window > 0 else []


def seen_stability(history: Sequence[Mapping[str, Any]]) -> dict[str, float | None]:
    """``{seen_last10_mean, seen_last10_std}`` of a run's history.

    The std (sample, ddof=1 like every std here) measures how much the method swings between
    evaluations at the end of training; the mean is a less noisy summary than the final round.
    The mean needs one evaluation, the std two; the references (no history) get None for both.
    """
    stat = mean_std(last_seen_macros(history))
    return {STABILITY_MEAN: stat["mean"], STABILITY_STD: stat["std"]}


def _check_stability(where: str, final: Mapping[str, Any], history: Sequence[Any]) -> None:
    """The stored summary is optional (older results) but, when present, must be the history's."""
    expected = seen_stability(history)
    for key, want in expected.items():
        if key not in final:
            continue
        got = final[key]
        _check_number(where, f"final.{key}", got, nullable=True, low=0.0, high=1.0)
        if (got is None) != (want is None) or (
            got is not None and want is not None and abs(got - want) > MACRO_TOLERANCE
        ):
            _fail(
                where,
                f"final.{key}",
                f"{got!r} disagrees with the last {STABILITY_WINDOW} seen_macro values of "
                f"history ({want!r})",
            )


def _check_run(i: int, run: Any, user_types: Sequence[str] | None) -> list[str]:
    where = f"runs[{i}]"
    if not isinstance(run, Mapping):
        _fail(where, "", "expected an object")
    for key in ("method", "seed", "seconds", "user_types", "history", "final"):
        if key not in run:
            _fail(where, key, "missing")
    method = run["method"]
    if not isinstance(method, str) or not method.strip():
        _fail(where, "method", f"expected a non-empty string, got {method!r}")
    where = f"runs[{i}] ({method})"
    seed = run["seed"]
    if not isinstance(seed, int) or isinstance(seed, bool):
        _fail(where, "seed", f"expected an int, got {seed!r}")
    _check_number(where, "seconds", run["seconds"], low=0.0)
    types = run["user_types"]
    if (
        not isinstance(types, Sequence)
        or isinstance(types, str)
        or not types
        or not all(isinstance(t, str) and t for t in types)
        or len(set(types)) != len(types)
    ):
        _fail(where, "user_types", f"expected a non-empty list of distinct names, got {types!r}")
    if user_types is not None and list(types) != list(user_types):
        _fail(where, "user_types", f"{list(types)} differs from runs[0]: {list(user_types)}")
    _check_history(where, run["history"], types)
    final = run["final"]
    if not isinstance(final, Mapping):
        _fail(where, "final", "expected an object")
    for split in SPLITS:
        if split not in final:
            _fail(where, f"final.{split}", "missing")
        _check_split(where, f"final.{split}", final[split], types)
    _check_number(where, "final.kl", final.get("kl"), nullable=True, low=0.0)
    _check_number(where, "final.active_units", final.get("active_units"), nullable=True, low=0)
    _check_number(where, "final.silhouette", final.get("silhouette"), nullable=True, low=-1, high=1)
    _check_number(
        where,
        "final.bytes_up_per_client_round",
        final.get("bytes_up_per_client_round"),
        nullable=True,
        low=0,
    )
    _check_stability(where, final, run["history"])
    _check_latent(where, run.get("latent"), types)
    _check_k_curve(where, run.get("k_curve"))
    return list(types)


def validate_results(results: Any) -> None:
    """Refuse a malformed results dict before anything is written.

    Raises ``ResultsFormatError`` (a ``ValueError``) naming the run and the field, e.g.
    ``runs[3] (fedvpl): field 'final.seen.macro': expected a finite number or null, got 'x'``.
    """
    if not isinstance(results, Mapping):
        _fail("results", "", f"expected an object, got {type(results).__name__}")
    if not isinstance(results.get("config"), Mapping):
        _fail("results", "config", "missing or not an object")
    runs = results.get("runs")
    if not isinstance(runs, Sequence) or isinstance(runs, str) or not runs:
        _fail("results", "runs", "missing, not a list, or empty")
    user_types: list[str] | None = None
    seen: dict[tuple[str, int], int] = {}
    for i, run in enumerate(runs):
        user_types = _check_run(i, run, user_types)
        key = (run["method"], run["seed"])
        if key in seen:
            _fail(
                f"runs[{i}]", "seed", f"duplicate (method, seed) {key}, first at runs[{seen[key]}]"
            )
        seen[key] = i


def method_sort_key(method: str) -> tuple[int, str]:
    """Known methods in METHOD_ORDER (references first, the proposal last); unknown ones after."""
    try:
        return (METHOD_ORDER.index(method), "")
    except ValueError:
        return (len(METHOD_ORDER), method)


def ordered_methods(results: Mapping[str, Any]) -> list[str]:
    return sorted({run["method"] for run in results["runs"]}, key=method_sort_key)


def runs_of(results: Mapping[str, Any], method: str) -> list[Mapping[str, Any]]:
    """The runs of one method, by seed, so 'the first seed' means the same thing everywhere."""
    return sorted((r for r in results["runs"] if r["method"] == method), key=lambda r: r["seed"])


def mean_std(values: Sequence[float | None]) -> Stat:
    """Mean and sample std (ddof=1) of the non-null values; std is None below two values."""
    xs = [float(v) for v in values if v is not None]
    n = len(xs)
    if n == 0:
        return {"mean": None, "std": None, "n": 0}
    mean = sum(xs) / n
    std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1)) if n > 1 else None
    return {"mean": mean, "std": std, "n": n}


def is_collapsed(kl: float | None, active_units: float | None) -> bool:
    """Posterior collapse: z carries (almost) no information about the client."""
    return (kl is not None and kl < COLLAPSE_KL) or (active_units is not None and active_units == 0)


def last_num_groups(history: Sequence[Mapping[str, Any]]) -> int | None:
    """The number of prototype groups of the latest evaluated round that recorded one.

    None for methods that do not group clients and for runs written before it was recorded.
    """
    for entry in reversed(history):
        if entry.get("num_groups") is not None:
            return int(entry["num_groups"])
    return None


def mode_of(values: Sequence[int | None]) -> int | None:
    """The most common non-null value; a tie goes to the smallest, so reports are reproducible."""
    counts = Counter(v for v in values if v is not None)
    if not counts:
        return None
    top = max(counts.values())
    return min(v for v, c in counts.items() if c == top)


def ideal_accuracy(entry: Any, group: str) -> tuple[int, float] | None:
    """``(k, accuracy)`` of one seed's ideal personalised predictor at the k a ``group`` client
    reads, from a ``client_headroom`` entry; None where it was not measured.

    The headroom block is optional and not validated with the runs (it explains the results, it
    is not one of them), so anything malformed reads as not measured instead of failing a report.
    """
    if not isinstance(entry, Mapping) or "error" in entry:
        return None
    sizes = entry.get("context_sizes")
    k = sizes.get(group) if isinstance(sizes, Mapping) else None
    points = entry.get("points")
    if not isinstance(k, int) or isinstance(k, bool) or not isinstance(points, Sequence):
        return None
    for point in points:
        if isinstance(point, Mapping) and point.get("k") == k:
            acc = point.get("macro_accuracy")
            return (k, float(acc)) if _is_number(acc) else None
    return None


def _headroom_of(results: Mapping[str, Any]) -> Mapping[str, Any]:
    headroom = results.get("headroom")
    return headroom if isinstance(headroom, Mapping) else {}


def ideal_gap(run: Mapping[str, Any], headroom: Mapping[str, Any], split: str) -> float | None:
    """``ideal - final macro`` of one run on its own seed's partition (None if either is absent).

    Paired per seed, because each seed draws its own partition and so its own ideal.
    """
    ideal = ideal_accuracy(headroom.get(str(run["seed"])), split)
    macro = run["final"][split]["macro"]
    return None if ideal is None or macro is None else ideal[1] - macro


def _summarise_method(
    runs: Sequence[Mapping[str, Any]],
    user_types: Sequence[str],
    headroom: Mapping[str, Any],
) -> dict:
    out: dict[str, Any] = {
        "n_seeds": len(runs),
        "seeds": [r["seed"] for r in runs],
        "reference": runs[0]["method"] in REFERENCE_METHODS,
        "seconds": mean_std([r["seconds"] for r in runs]),
    }
    for split in SPLITS:
        finals = [r["final"][split] for r in runs]
        out[f"{split}_macro"] = mean_std([f["macro"] for f in finals])
        out[f"{split}_conflict"] = mean_std([f.get("conflict") for f in finals])
        out[f"{split}_per_type"] = {
            t: mean_std([f["per_type"].get(t) for f in finals]) for t in user_types
        }
    for key in SCALARS + STABILITY_KEYS:
        out[key] = mean_std([r["final"].get(key) for r in runs])
    for split in SPLITS:
        out[f"{split}_ideal_gap"] = mean_std([ideal_gap(r, headroom, split) for r in runs])
    per_seed = [last_num_groups(r["history"]) for r in runs]
    out["num_groups"] = {"mode": mode_of(per_seed), "per_seed": per_seed}
    out["collapsed_seeds"] = [
        r["seed"]
        for r in runs
        if is_collapsed(r["final"].get("kl"), r["final"].get("active_units"))
    ]
    return out


def _ideal_summary(headroom: Mapping[str, Any], seeds: Sequence[int]) -> dict[str, Any]:
    """Per group, the k values the ideal was read at (one per partition size) and its accuracy."""
    out: dict[str, Any] = {}
    for split in SPLITS:
        found = [ideal_accuracy(headroom.get(str(s)), split) for s in seeds]
        points = [p for p in found if p is not None]
        out[split] = {
            "k": sorted({k for k, _ in points}),
            "accuracy": mean_std([acc for _, acc in points]),
            "seeds": [s for s, p in zip(seeds, found, strict=True) if p is not None],
        }
    return out


def summarise(results: Mapping[str, Any]) -> dict[str, Any]:
    """Per method, mean / std / n over seeds of every final metric.

    Returns ``{"methods": [...in table order], "user_types": [...], "seeds": [...all seeds],
    "ideal": {"seen": {"k": [...], "accuracy": stat, "seeds": [...measured]}, "unseen": ...},
    "per_method": {method: {"n_seeds", "seeds", "reference", "seconds", "seen_macro",
    "unseen_macro", "seen_per_type": {type: stat}, "unseen_per_type", "seen_conflict",
    "unseen_conflict", "kl", "active_units", "silhouette", "bytes_up_per_client_round",
    "seen_last10_mean", "seen_last10_std", "seen_ideal_gap", "unseen_ideal_gap",
    "num_groups": {"mode", "per_seed"}, "collapsed_seeds"}}}`` where each stat is
    ``{"mean", "std", "n"}`` (std None below 2 values). ``*_ideal_gap`` is the headroom's ideal
    personalised accuracy minus the method's final macro, paired per seed (n 0 without
    headroom); ``num_groups.per_seed`` follows ``seeds``.
    """
    validate_results(results)
    user_types = list(results["runs"][0]["user_types"])
    methods = ordered_methods(results)
    headroom = _headroom_of(results)
    seeds = sorted({r["seed"] for r in results["runs"]})
    return {
        "methods": methods,
        "user_types": user_types,
        "seeds": seeds,
        "ideal": _ideal_summary(headroom, seeds),
        "per_method": {
            m: _summarise_method(runs_of(results, m), user_types, headroom) for m in methods
        },
    }
