"""Metrics as pure functions returning floats or None (undefined, never silently 0)."""

from __future__ import annotations

import numpy as np

from .image import AurocDifference, auroc, auroc_difference, average_precision, f1_max, f1_max_threshold
from .pixel import pixel_metrics
from .pro import pro_score

METRIC_COLUMNS = ("auroc_cls", "f1_max_cls", "ap_cls", "auroc_segm", "f1_max_segm", "ap_segm", "pro_segm")
"""The paper's column order."""
METRIC_TITLES = ("AUROC-cls", "F1-max-cls", "AP-cls", "AUROC-segm", "F1-max-segm", "AP-segm", "PRO-segm")


def image_metrics(labels: np.ndarray, scores: np.ndarray) -> dict[str, float | None]:
    return {"auroc_cls": auroc(labels, scores), "f1_max_cls": f1_max(labels, scores),
            "ap_cls": average_precision(labels, scores)}


def all_metrics(labels: np.ndarray, scores: np.ndarray, masks: list[np.ndarray] | None,
                maps: list[np.ndarray] | None) -> dict[str, float | None]:
    """The seven metrics in the paper's order; pixel metrics None when no masks are given."""
    out = image_metrics(labels, scores)
    if masks is None or maps is None:
        out.update({k: None for k in METRIC_COLUMNS[3:]})
    else:
        out.update(pixel_metrics(masks, maps))
    return {k: out[k] for k in METRIC_COLUMNS}


__all__ = ["auroc", "auroc_difference", "AurocDifference", "average_precision", "f1_max", "f1_max_threshold",
           "pixel_metrics", "pro_score", "image_metrics", "all_metrics", "METRIC_COLUMNS", "METRIC_TITLES"]
