"""Evaluation: the paper's metrics, classical baselines, ``evaluate`` and paper-style reports."""

from cellduality.evaluation.metrics import (
    KNN_KS,
    MALFORMED,
    accuracy,
    gap_closed,
    generation_metrics,
    gw_distance,
    knn_accuracy,
    macro_f1,
    mmd,
    reward_validity_auc,
    scfid,
    wasserstein,
)

__all__ = [
    "KNN_KS",
    "MALFORMED",
    "accuracy",
    "gap_closed",
    "generation_metrics",
    "gw_distance",
    "knn_accuracy",
    "macro_f1",
    "mmd",
    "reward_validity_auc",
    "scfid",
    "wasserstein",
]
