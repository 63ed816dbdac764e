"""Heatmaps and overlays a person can look at."""

from __future__ import annotations

import numpy as np
from PIL import Image


def jet(values: np.ndarray) -> np.ndarray:
    """Map values in [0, 1] to RGB uint8 with the 'jet' colour scale (blue = low, red = high)."""
    v = np.clip(np.asarray(values, dtype=np.float32), 0.0, 1.0)[..., None]
    rgb = np.clip(1.5 - np.abs(4.0 * v - np.array([3.0, 2.0, 1.0], dtype=np.float32)), 0.0, 1.0)
    return (rgb * 255.0 + 0.5).astype(np.uint8)


def normalise(anomaly_map: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Scale a map to [0, 1] with fixed bounds (use the same bounds for a whole batch so maps compare)."""
    span = hi - lo
    if span <= 0:
        return np.zeros_like(anomaly_map, dtype=np.float32)
    return np.clip((anomaly_map - lo) / span, 0.0, 1.0).astype(np.float32)


def heatmap(anomaly_map: np.ndarray, lo: float, hi: float) -> Image.Image:
    """A colour heatmap image of an anomaly map."""
    return Image.fromarray(jet(normalise(anomaly_map, lo, hi)), mode="RGB")


def overlay(image: Image.Image, anomaly_map: np.ndarray, lo: float, hi: float, alpha: float = 0.5) -> Image.Image:
    """The heatmap blended onto the image (map resized to the image if needed); alpha = heatmap weight."""
    heat = heatmap(anomaly_map, lo, hi)
    if heat.size != image.size:
        heat = heat.resize(image.size, Image.BILINEAR)
    return Image.blend(image.convert("RGB"), heat, alpha)


__all__ = ["jet", "normalise", "heatmap", "overlay"]
