"""Ranking metrics on one score per sample: AUROC, average precision, F1-max. Undefined -> None."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata

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


@dataclass(frozen=True)
class AurocDifference:
    """AUROC(a) - AUROC(b) on the same samples, with a paired bootstrap interval at `level`."""

    delta: float
    low: float
    high: float
    level: float


def _auroc_rows(labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """AUROC of each row of `scores` (R, N) against one label vector (ties count one half), by ranks."""
    ranks = rankdata(scores, axis=1)
    n_pos = int(labels.sum())
    n_neg = labels.size - n_pos
    return (ranks[:, labels].sum(axis=1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def auroc_difference(labels: np.ndarray, scores_a: np.ndarray, scores_b: np.ndarray, resamples: int = 2000,
                     level: float = 0.9, seed: int = 0) -> AurocDifference | None:
    """How much better method a ranks than method b, and how sure that is on this many samples.

    The bootstrap resamples normal and defective samples separately (each resample keeps both classes in
    their counts) and scores both methods on the same resample, so what the two share cancels. None if only
    one class is present.
    """
    labels = np.asarray(labels).astype(bool)
    a, b = np.asarray(scores_a, dtype=np.float64), np.asarray(scores_b, dtype=np.float64)
    if a.shape != labels.shape or b.shape != labels.shape:
        raise ValueError(f"labels and both score vectors must have one shape, got {labels.shape}, {a.shape}, {b.shape}")
    if not both_classes(labels):
        return None
    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(labels), np.flatnonzero(~labels)
    index = np.concatenate([rng.choice(pos, (resamples, pos.size)), rng.choice(neg, (resamples, neg.size))], axis=1)
    boot_labels = np.r_[np.ones(pos.size, bool), np.zeros(neg.size, bool)]
    deltas = _auroc_rows(boot_labels, a[index]) - _auroc_rows(boot_labels, b[index])
    delta = float(_auroc_rows(labels, a[None])[0] - _auroc_rows(labels, b[None])[0])
    low, high = np.quantile(deltas, [(1 - level) / 2, (1 + level) / 2])
    return AurocDifference(delta, float(low), float(high), level)
