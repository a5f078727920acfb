"""Evaluation of any Predictor: per-type accuracy in both A/B orders."""

from fedvpa.evaluation.accuracy import evaluate, evaluate_client, merge_counts

__all__ = ["evaluate", "evaluate_client", "merge_counts"]
