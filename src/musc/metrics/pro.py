"""PRO: area under the per-region-overlap curve up to a false positive rate of 0.3, normalised (MVTec's definition).

Regions are the 8-connected components of each ground-truth mask. At a threshold t, the FPR is taken
over all normal pixels of all images and PRO is the mean, over all regions of the dataset, of the
fraction of the region's pixels scoring >= t. The curve is integrated with the trapezoid rule, with
the value at exactly FPR = limit interpolated, and divided by the limit. Exact: one sort of all pixel
scores gives every threshold at once.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .curves import binary_clf_curve, sort_scores, trapezoid_to

EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def region_weights(masks: list[np.ndarray]) -> tuple[np.ndarray, int]:
    """Per pixel (all masks flattened in order): 1 / (n_regions * size of its region), 0 outside regions."""
    labelled = [ndimage.label(np.asarray(m, dtype=bool), structure=EIGHT_CONNECTED) for m in masks]
    n_regions = sum(count for _, count in labelled)
    weight = np.zeros(sum(np.asarray(m).size for m in masks), dtype=np.float64)
    if n_regions == 0:
        return weight, 0
    offset = 0
    for lab, count in labelled:
        flat = lab.ravel()
        if count:
            sizes = np.bincount(flat, minlength=count + 1).astype(np.float64)
            per_region = np.zeros(count + 1)
            per_region[1:] = 1.0 / (n_regions * sizes[1:])
            weight[offset:offset + flat.size] = per_region[flat]
        offset += flat.size
    return weight, n_regions


def pro_from_sorted(weight: np.ndarray, fps: np.ndarray, order: np.ndarray, last: np.ndarray,
                    fpr_limit: float = 0.3) -> float:
    """PRO score from per-pixel region weights and an existing sort (fps: false positives per threshold)."""
    fpr = np.r_[0.0, np.minimum(fps / fps[-1], 1.0)]
    pro = np.r_[0.0, np.minimum(np.cumsum(weight[order])[last], 1.0)]
    return trapezoid_to(fpr, pro, fpr_limit) / fpr_limit


def pro_score(masks: list[np.ndarray], maps: list[np.ndarray], fpr_limit: float = 0.3) -> float | None:
    """Normalised area under the PRO curve for FPR in [0, fpr_limit]; None if no region or no normal pixel."""
    if len(masks) != len(maps) or any(np.shape(m) != np.shape(a) for m, a in zip(masks, maps)):
        raise ValueError("masks and maps must match in number and shape")
    labels = np.concatenate([np.asarray(m, dtype=bool).ravel() for m in masks])
    weight, n_regions = region_weights(masks)
    if n_regions == 0 or labels.all():
        return None
    sorted_ = sort_scores(np.concatenate([np.asarray(a).ravel() for a in maps]))
    fps, _, _ = binary_clf_curve(labels, sorted_=sorted_)
    return pro_from_sorted(weight, fps, sorted_[0], sorted_[1], fpr_limit)
