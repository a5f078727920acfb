"""The three figures of a comparison report, drawn from a validated results dict.

Each function writes one PNG and returns its path, or returns ``None`` (and writes nothing) when
the results hold nothing to draw, so a report never embeds an empty figure. A method keeps the
same colour in every figure, so the reader can match curves across them. Figures are bare
``matplotlib.figure.Figure`` objects rendered by the Agg canvas, never pyplot: no global backend
switch, no open-figure registry to leak from a long compare run or a test session.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FixedLocator, NullLocator
from sklearn.decomposition import PCA

from fedvpa.reports.aggregate import (
    REFERENCE_METHODS,
    SPLITS,
    mean_std,
    ordered_methods,
    runs_of,
    validate_results,
)

DPI = 100
# The proposal red, its ancestors in greens and purples, the references in black and grey.
METHOD_COLOURS: dict[str, str] = {
    "oracle": "#000000",
    "centralised-vpl": "#7f7f7f",
    "fedavg-bt": "#1f77b4",
    "fedbiscuit": "#ff7f0e",
    "fedvpl": "#2ca02c",
    "fedvpl+ortho": "#9467bd",
    "fedvpl+gp": "#8c564b",
    "fedvpa-gp": "#d62728",
}
_EXTRA = ("#e377c2", "#17becf", "#bcbd22", "#393b79", "#637939", "#843c39")
_TYPE_COLOURS = matplotlib.colormaps["tab10"].colors


def method_colour(method: str, methods: Sequence[str]) -> str:
    """Stable per method across figures; unknown names take extra colours in table order."""
    if method in METHOD_COLOURS:
        return METHOD_COLOURS[method]
    unknown = [m for m in methods if m not in METHOD_COLOURS]
    return _EXTRA[unknown.index(method) % len(_EXTRA)]


def _save(fig: Figure, path: str | Path) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=DPI, bbox_inches="tight", format="png")
    return out


def _round_curve(
    runs: Sequence[Mapping[str, Any]], key: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean and std over seeds per round; a round counts the seeds that evaluated it."""
    by_round: dict[int, list[float | None]] = {}
    for run in runs:
        for entry in run["history"]:
            by_round.setdefault(entry["round"], []).append(entry.get(key))
    xs, means, stds = [], [], []
    for rnd in sorted(by_round):
        stat = mean_std(by_round[rnd])
        if stat["mean"] is None:
            continue
        xs.append(rnd)
        means.append(100 * stat["mean"])
        stds.append(100 * stat["std"] if stat["std"] is not None else 0.0)
    return np.array(xs), np.array(means), np.array(stds)


def plot_accuracy_per_round(results: Mapping[str, Any], path: str | Path) -> Path | None:
    """Seen (solid) and unseen (dashed) macro accuracy against the round, mean +- std band.

    The references have no rounds; their final seen macro accuracy is drawn as a dotted
    horizontal line, so the federated curves can be read against the ceiling.
    """
    validate_results(results)
    methods = ordered_methods(results)
    fig = Figure(figsize=(8, 5))
    ax = fig.subplots()
    drawn = False
    for method in methods:
        runs = runs_of(results, method)
        colour = method_colour(method, methods)
        label: str | None = method  # on the first curve drawn, even if only unseen was evaluated
        for split, style in zip(SPLITS, ("-", "--"), strict=True):
            xs, means, stds = _round_curve(runs, f"{split}_macro")
            if xs.size == 0:
                continue
            ax.plot(xs, means, style, color=colour, label=label, marker="." if xs.size < 15 else "")
            ax.fill_between(xs, means - stds, means + stds, color=colour, alpha=0.15, lw=0)
            drawn = True
            label = None
    if not drawn:
        return None
    for method in methods:
        if method not in REFERENCE_METHODS:
            continue
        stat = mean_std([r["final"]["seen"]["macro"] for r in runs_of(results, method)])
        if stat["mean"] is not None:
            ax.axhline(
                100 * stat["mean"],
                color=method_colour(method, methods),
                ls=":",
                lw=1.5,
                label=f"{method} (final, seen)",
            )
    handles, _ = ax.get_legend_handles_labels()
    handles += [
        Line2D([], [], color="black", ls="-", label="seen clients"),
        Line2D([], [], color="black", ls="--", label="unseen clients"),
    ]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9)
    ax.set_xlabel("server round")
    ax.set_ylabel("macro accuracy (%)")
    ax.set_title("Macro accuracy per round (mean ± std over seeds)")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def _latent_run(
    results: Mapping[str, Any], method: str, seed: int | None
) -> Mapping[str, Any] | None:
    for run in runs_of(results, method):
        if run.get("latent") is not None and (seed is None or run["seed"] == seed):
            return run
    return None


def _project(
    mu: np.ndarray, prototypes: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray | None, list[str]]:
    """PCA fitted on the clients only: prototypes are placed in the clients' own view.

    Fully collapsed posteriors (every client at the same mean) have no principal direction: they
    are drawn at the origin of the centred space, and the axis labels say so.
    """
    centre = mu.mean(axis=0)
    if np.allclose(mu, centre, rtol=0.0, atol=1e-12):
        protos = None
        if prototypes is not None:
            protos = np.zeros((prototypes.shape[0], 2))
            protos[:, 0] = np.linalg.norm(prototypes - centre, axis=1)  # distance, not direction
        labels = ["(all clients at one point)", "(no spread)"]
        return np.zeros((mu.shape[0], 2)), protos, labels
    components = min(2, mu.shape[1], mu.shape[0])
    pca = PCA(n_components=components).fit(mu)
    ratios = [
        f"PC{i + 1} ({100 * r:.0f}% var)" for i, r in enumerate(pca.explained_variance_ratio_)
    ]
    pad = 2 - components

    def two_d(x: np.ndarray) -> np.ndarray:
        z = pca.transform(x)
        return np.hstack([z, np.zeros((z.shape[0], pad))]) if pad else z

    protos = two_d(prototypes) if prototypes is not None else None
    return two_d(mu), protos, ratios + ["(no second direction)"] * pad


def plot_latents(
    results: Mapping[str, Any],
    path: str | Path,
    methods: Sequence[str] = ("fedvpl", "fedvpa-gp"),
    seed: int | None = None,
) -> Path | None:
    """PCA of the clients' posterior means, one panel per method, coloured by user type.

    ``seed=None`` takes the first (lowest) seed of each method that recorded a latent. Unseen
    clients are crosses, prototypes stars. Methods without a latent (or absent) get no panel.
    """
    validate_results(results)
    panels = [(m, run) for m in methods if (run := _latent_run(results, m, seed)) is not None]
    panels = [(m, run) for m, run in panels if len(run["latent"]["mu"]) >= 2]
    if not panels:
        return None
    user_types = list(results["runs"][0]["user_types"])
    type_colour = {t: _TYPE_COLOURS[i % len(_TYPE_COLOURS)] for i, t in enumerate(user_types)}
    fig = Figure(figsize=(5.5 * len(panels), 5))
    axes = fig.subplots(1, len(panels), squeeze=False)
    for ax, (method, run) in zip(axes[0], panels, strict=True):
        latent = run["latent"]
        mu = np.asarray(latent["mu"], dtype=float)
        protos = latent.get("prototypes")
        proto_arr = np.asarray(protos, dtype=float) if protos is not None else None
        xy, proto_xy, axis_labels = _project(mu, proto_arr)
        types = np.asarray(latent["user_type"])
        unseen = np.asarray(latent["unseen"], dtype=bool)
        for t in user_types:
            for mask, marker, size in ((~unseen, "o", 30), (unseen, "X", 60)):
                sel = (types == t) & mask
                if sel.any():
                    ax.scatter(
                        xy[sel, 0], xy[sel, 1], c=[type_colour[t]], marker=marker, s=size,
                        alpha=0.75, edgecolors="black", linewidths=0.4,
                    )  # fmt: skip
        if proto_xy is not None:
            ax.scatter(
                proto_xy[:, 0], proto_xy[:, 1], marker="*", s=350, c="gold",
                edgecolors="black", linewidths=1.0, zorder=5,
            )  # fmt: skip
        ax.set_title(f"{method} (seed {run['seed']}, {len(mu)} clients)")
        ax.set_xlabel(axis_labels[0])
        ax.set_ylabel(axis_labels[1])
        ax.grid(alpha=0.3)
    handles = [
        Line2D([], [], ls="", marker="o", color=type_colour[t], markeredgecolor="black", label=t)
        for t in user_types
    ]
    handles += [
        Line2D([], [], ls="", marker="o", color="grey", label="seen client"),
        Line2D([], [], ls="", marker="X", color="grey", markersize=9, label="unseen client"),
        Line2D(
            [], [], ls="", marker="*", color="gold", markeredgecolor="black", markersize=14,
            label="prototype",
        ),
    ]  # fmt: skip
    axes[0][-1].legend(handles=handles, fontsize=9, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.suptitle("Client posterior means E_q[z] (PCA)")
    return _save(fig, path)


def plot_k_curve(results: Mapping[str, Any], path: str | Path) -> Path | None:
    """Unseen-client macro accuracy against the number of context pairs k, mean +- std."""
    validate_results(results)
    methods = ordered_methods(results)
    fig = Figure(figsize=(7, 5))
    ax = fig.subplots()
    all_k: set[int] = set()
    for method in methods:
        curves = [r["k_curve"] for r in runs_of(results, method) if r.get("k_curve") is not None]
        if not curves:
            continue
        by_k: dict[int, list[float]] = {}
        for curve in curves:
            for k, acc in zip(curve["k"], curve["unseen_macro"], strict=True):
                by_k.setdefault(k, []).append(acc)
        ks = sorted(by_k)
        stats = [mean_std(by_k[k]) for k in ks]
        means = np.array([100 * s["mean"] for s in stats])
        stds = np.array([100 * s["std"] if s["std"] is not None else 0.0 for s in stats])
        colour = method_colour(method, methods)
        ax.plot(
            ks,
            means,
            "-o",
            color=colour,
            label=f"{method} ({len(curves)} seed{'s' if len(curves) > 1 else ''})",
        )
        ax.fill_between(ks, means - stds, means + stds, color=colour, alpha=0.15, lw=0)
        all_k.update(ks)
    if not all_k:
        return None
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_locator(FixedLocator(sorted(all_k)))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels([str(k) for k in sorted(all_k)])
    ax.set_xlabel("context pairs k of the unseen client (log2 scale)")
    ax.set_ylabel("unseen-client macro accuracy (%)")
    ax.set_title("Accuracy on unseen clients vs context size (mean ± std over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=9, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _save(fig, path)
