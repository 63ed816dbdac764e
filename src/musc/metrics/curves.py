"""Exact threshold curves from one sort: the building block of every metric here."""

from __future__ import annotations

import numpy as np


def sort_scores(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(order, last, thresholds): scores sorted descending by `order`; `last[t]` is the final sorted position
    holding the t-th distinct score, `thresholds[t]` that score. Cumulative sums at `last` count the samples
    with score >= thresholds[t]."""
    scores = np.asarray(scores).ravel()
    if not np.isfinite(scores).all():
        raise ValueError("scores contain NaN or infinite values")
    order = np.argsort(scores)[::-1]  # tie order is irrelevant: only the boundaries between distinct values count
    s = scores[order]
    last = np.r_[np.flatnonzero(s[1:] != s[:-1]), s.size - 1] if s.size else np.empty(0, dtype=np.int64)
    return order, last, s[last]


def binary_clf_curve(labels: np.ndarray, scores: np.ndarray | None = None,
                     sorted_: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(false positives, true positives, thresholds) at every distinct score, thresholds descending.

    Give `scores`, or the result of `sort_scores(scores)` to reuse one sort for several curves.
    """
    labels = np.asarray(labels).ravel().astype(bool)
    if sorted_ is None:
        if scores is None or np.asarray(scores).size != labels.size:
            raise ValueError(f"labels and scores differ in size: {labels.size} vs {np.asarray(scores).size}")
        sorted_ = sort_scores(scores)
    order, last, thresholds = sorted_
    if order.size != labels.size:
        raise ValueError(f"labels and scores differ in size: {labels.size} vs {order.size}")
    tps = np.cumsum(labels[order], dtype=np.int64)[last]
    fps = (last + 1) - tps
    return fps, tps, thresholds


def curve_auroc(fps: np.ndarray, tps: np.ndarray) -> float:
    fpr = np.r_[0.0, fps / fps[-1]]
    tpr = np.r_[0.0, tps / tps[-1]]
    return float(np.sum(0.5 * (tpr[1:] + tpr[:-1]) * np.diff(fpr)))


def curve_ap(fps: np.ndarray, tps: np.ndarray) -> float:
    """Sum over thresholds of (recall step) x precision, no interpolation (as scikit-learn)."""
    precision = tps / (tps + fps)
    return float(np.sum(np.diff(np.r_[0.0, tps / tps[-1]]) * precision))


def curve_f1(fps: np.ndarray, tps: np.ndarray) -> np.ndarray:
    """F1 at every threshold."""
    return 2 * tps / (tps + fps + tps[-1])


def trapezoid_to(x: np.ndarray, y: np.ndarray, x_max: float) -> float:
    """Area under the piecewise linear curve (x ascending) from x[0] to x_max, interpolating y at x_max."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    inside = x <= x_max
    xs, ys = x[inside], y[inside]
    area = float(np.sum(0.5 * (ys[1:] + ys[:-1]) * np.diff(xs)))
    if xs.size and xs[-1] < x_max and xs.size < x.size:
        x0, y0 = xs[-1], ys[-1]
        x1, y1 = x[xs.size], y[xs.size]
        y_at = y0 + (y1 - y0) * (x_max - x0) / (x1 - x0)
        area += 0.5 * (y0 + y_at) * (x_max - x0)
    return area
