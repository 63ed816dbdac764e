"""Ranking metrics on one score per sample: AUROC, average precision, F1-max. Undefined -> None."""

from __future__ import annotations

import numpy as np

from .curves import binary_clf_curve, curve_ap, curve_auroc, curve_f1


def both_classes(labels: np.ndarray) -> bool:
    labels = np.asarray(labels).astype(bool)
    return bool(labels.any() and (~labels).any())


def auroc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """Area under the ROC curve (ties count one half); None if only one class is present."""
    return curve_auroc(*binary_clf_curve(labels, scores)[:2]) if both_classes(labels) else None


def average_precision(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """Average precision as scikit-learn computes it; None if only one class is present."""
    return curve_ap(*binary_clf_curve(labels, scores)[:2]) if both_classes(labels) else None


def f1_max(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """Maximum F1 over all thresholds; None if there is no positive sample."""
    return f1_max_threshold(labels, scores)[0]


def f1_max_threshold(labels: np.ndarray, scores: np.ndarray) -> tuple[float | None, float | None]:
    """(F1-max, the threshold reaching it: score >= threshold is anomalous); (None, None) without positives."""
    if not np.asarray(labels).astype(bool).any():
        return None, None
    fps, tps, thr = binary_clf_curve(labels, scores)
    f1 = curve_f1(fps, tps)
    best = int(np.argmax(f1))
    return float(f1[best]), float(thr[best])
