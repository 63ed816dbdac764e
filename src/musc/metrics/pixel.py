"""Pixel-level metrics over all pixels of all images of a category, all from one sort."""

from __future__ import annotations

import numpy as np

from .curves import binary_clf_curve, curve_ap, curve_auroc, curve_f1, sort_scores
from .pro import pro_from_sorted, region_weights


def pixel_metrics(masks: list[np.ndarray], maps: list[np.ndarray], pro_limit: float = 0.3) -> dict[str, float | None]:
    """AUROC, F1-max, AP and PRO over all pixels; each None where undefined (no defect or no normal pixel)."""
    if len(masks) != len(maps) or any(np.shape(m) != np.shape(a) for m, a in zip(masks, maps)):
        raise ValueError("masks and maps must match in number and shape")
    labels = np.concatenate([np.asarray(m, dtype=bool).ravel() for m in masks])
    out: dict[str, float | None] = dict.fromkeys(("auroc_segm", "f1_max_segm", "ap_segm", "pro_segm"))
    if not labels.any():
        return out
    sorted_ = sort_scores(np.concatenate([np.asarray(a, dtype=np.float32).ravel() for a in maps]))
    fps, tps, _ = binary_clf_curve(labels, sorted_=sorted_)
    out["f1_max_segm"] = float(curve_f1(fps, tps).max())
    if labels.all():
        return out
    out["auroc_segm"] = curve_auroc(fps, tps)
    out["ap_segm"] = curve_ap(fps, tps)
    weight, _ = region_weights(masks)
    out["pro_segm"] = pro_from_sorted(weight, fps, sorted_[0], sorted_[1], pro_limit)
    return out
