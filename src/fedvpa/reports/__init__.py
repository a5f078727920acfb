"""Reports of a ``fedvpa compare`` run: pure functions from a results dict to files.

Nothing here trains or talks to Flower, so a report can be rebuilt from ``results.json`` alone.
The results structure is documented in :mod:`fedvpa.reports.aggregate`.
"""

from __future__ import annotations

from fedvpa.reports.aggregate import ResultsFormatError, summarise, validate_results
from fedvpa.reports.markdown import compute_findings, render_table, write_report
from fedvpa.reports.plots import plot_accuracy_per_round, plot_k_curve, plot_latents

__all__ = [
    "ResultsFormatError",
    "compute_findings",
    "plot_accuracy_per_round",
    "plot_k_curve",
    "plot_latents",
    "render_table",
    "summarise",
    "validate_results",
    "write_report",
]
