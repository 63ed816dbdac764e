"""Label-free decisions: which images are defective, and which pixels, from one batch's own scores.

MuSc scores are relative: they rank images within a batch. To act on them without labels we assume
what a production batch usually is, mostly normal, and find where the score distribution leaves
its normal bulk. Image thresholds:

- `gmm` (default): a two-component Gaussian mixture on the scores; the threshold is where the upper
  component becomes more probable. One component (no separation) means nothing is flagged. Chosen
  as the default from measurements on real batches (BENCHMARKS.md: best image F1 on the 50% and 10%
  defective batches, nothing flagged on the all-normal one).
- `mad`: median + k x 1.4826 x MAD of the scores (a robust z-score; the normal bulk defines the scale,
  so a handful of defects cannot move the threshold).
- `otsu`: Otsu's split of the score histogram (maximal between-class variance).
- `rate`: the user's expected defect rate (the top fraction is flagged).
- `fixed`: the user's threshold.

Pixel thresholds turn each map into a defect mask:
- `image` (default): the image method applied to the map maxima; a pixel is defective when it scores
  above that threshold, so an image is flagged exactly when its mask is non-empty (on raw scores).
- `mebin`: per flagged image, the threshold in the middle of the widest stable interval of the number
  of connected regions (after MEBin, AnomalyNCD, CVPR 2025); unflagged images get empty masks.

The assumption is checked, not trusted: when the upper mixture component holds most images, or more
than half of the batch is flagged, the decision says that its assumption does not hold.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
from scipy import ndimage

from .errors import ConfigError

IMAGE_METHODS = ("mad", "gmm", "otsu", "rate", "fixed")
MIN_LABEL_FREE_IMAGES = 10
"""Below this many images a label-free threshold rests on too few scores to be trusted, and the decision says so."""
PIXEL_METHODS = ("image", "mebin")
MAD_SCALE = 1.4826


@dataclass
class Decision:
    """Image decisions (True = defective) with the threshold used and how it was chosen."""

    defective: np.ndarray
    threshold: float
    method: str
    detail: str
    warnings: list[str] = field(default_factory=list)

    @property
    def count(self) -> int:
        return int(self.defective.sum())

    def to_dict(self) -> dict:
        return {"method": self.method, "threshold": self.threshold, "detail": self.detail,
                "defective": self.count, "total": int(self.defective.size), "warnings": self.warnings}


def threshold_mad(scores: np.ndarray, k: float = 3.0) -> tuple[float, str]:
    med = float(np.median(scores))
    mad = float(np.median(np.abs(scores - med))) * MAD_SCALE
    if mad == 0:
        mad = float(np.std(scores)) or 1e-12
    return med + k * mad, f"median {med:.4g} + {k:g} x {mad:.4g} (scaled MAD)"


def fit_gmm(x: np.ndarray, iters: int = 200, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """EM for a 1-D two-component Gaussian mixture: (weights, means, stds), means ascending."""
    x = np.asarray(x, dtype=np.float64)
    lo, hi = np.quantile(x, [0.25, 0.9])
    w, mu = np.array([0.5, 0.5]), np.array([lo, hi])
    sd = np.full(2, max(float(np.std(x)), 1e-6) / 2)
    floor = max(float(np.std(x)), 1e-12) * 1e-3
    for _ in range(iters):
        dens = w / (sd * np.sqrt(2 * np.pi)) * np.exp(-0.5 * ((x[:, None] - mu) / sd) ** 2)
        resp = dens / np.maximum(dens.sum(axis=1, keepdims=True), 1e-300)
        nk = resp.sum(axis=0) + 1e-12
        w_new, mu_new = nk / x.size, (resp * x[:, None]).sum(axis=0) / nk
        sd_new = np.sqrt(np.maximum((resp * (x[:, None] - mu_new) ** 2).sum(axis=0) / nk, floor ** 2))
        converged = np.allclose(mu_new, mu, atol=1e-9) and np.allclose(sd_new, sd, atol=1e-9)
        w, mu, sd = w_new, mu_new, sd_new
        if converged:
            break
    order = np.argsort(mu)
    return w[order], mu[order], sd[order]


def threshold_gmm(scores: np.ndarray) -> tuple[float, str, float]:
    """(threshold, detail, weight of the upper component). Threshold = +inf when the fit finds one group."""
    w, mu, sd = fit_gmm(scores)
    grid = np.linspace(mu[0], max(mu[1], mu[0]) + 4 * sd[1], 4000)
    log_p = [np.log(w[i] + 1e-300) - np.log(sd[i]) - 0.5 * ((grid - mu[i]) / sd[i]) ** 2 for i in range(2)]
    upper = np.flatnonzero(log_p[1] > log_p[0])
    separated = abs(mu[1] - mu[0]) > 2 * min(sd) and w.min() > 0.005
    if not separated or upper.size == 0:
        return float("inf"), f"one group (means {mu[0]:.4g}, {mu[1]:.4g}; sds {sd[0]:.3g}, {sd[1]:.3g})", float(w[1])
    t = float(grid[upper[0]])
    return t, f"two groups: {w[0]:.0%} at {mu[0]:.4g} (sd {sd[0]:.3g}), {w[1]:.0%} at {mu[1]:.4g} (sd {sd[1]:.3g})", float(w[1])


def threshold_otsu(scores: np.ndarray, bins: int = 256) -> tuple[float, str]:
    hist, edges = np.histogram(scores, bins=bins)
    centers = 0.5 * (edges[1:] + edges[:-1])
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centers) / np.maximum(w0, 1)
    m1 = ((hist * centers).sum() - np.cumsum(hist * centers)) / np.maximum(w1, 1)
    between = w0 * w1 * (m0 - m1) ** 2
    best = int(np.argmax(between[:-1]))
    return float(edges[best + 1]), f"Otsu split of a {bins}-bin histogram"


def decide_images(scores: Sequence[float], method: str = "gmm", k: float = 3.0, rate: float | None = None,
                  threshold: float | None = None) -> Decision:
    """Flag defective images (score > threshold) from the batch's own scores."""
    scores = np.asarray(scores, dtype=np.float64)
    if method not in IMAGE_METHODS:
        raise ConfigError(f"decision method must be one of {', '.join(IMAGE_METHODS)}, got {method!r}")
    if scores.ndim != 1 or scores.size < 2:
        raise ConfigError("decisions need at least 2 image scores")
    warnings: list[str] = []
    if method == "fixed":
        if threshold is None:
            raise ConfigError("the fixed decision method needs a threshold")
        t, detail = float(threshold), "given by the user"
    elif method == "rate":
        if rate is None or not 0.0 <= rate <= 1.0:
            raise ConfigError(f"the rate decision method needs an expected defect rate in [0, 1], got {rate}")
        n_flag = int(round(rate * scores.size))
        ordered = np.sort(scores)[::-1]
        t = float(ordered[n_flag - 1]) - 1e-12 if n_flag > 0 else float(ordered[0])
        detail = f"expected defect rate {rate:.1%}: the top {n_flag} images"
    elif method == "mad":
        t, detail = threshold_mad(scores, k)
    elif method == "gmm":
        t, detail, _ = threshold_gmm(scores)
    else:
        t, detail = threshold_otsu(scores)
    defective = scores > t
    if method in ("mad", "gmm", "otsu"):
        warnings += assumption_warnings(scores, defective)
    return Decision(defective, t, method, detail, warnings)


def assumption_warnings(scores: np.ndarray, defective: np.ndarray) -> list[str]:
    """Say when the batch does not look mostly normal, the assumption of every label-free method here."""
    out = []
    if scores.size < MIN_LABEL_FREE_IMAGES:
        out.append(f"only {scores.size} images: too few to tell defective from normal without labels, so the "
                   "automatic decision is unreliable; score a larger batch, or set --threshold or --expected-defect-rate")
    if defective.mean() > 0.5:
        out.append(f"{defective.mean():.0%} of the images are flagged: the batch does not look mostly normal, "
                   "so the automatic threshold is unreliable; set --expected-defect-rate or --threshold")
    w, mu, sd = fit_gmm(scores)
    if w[1] > 0.5 and abs(mu[1] - mu[0]) > 2 * min(sd):
        out.append(f"the higher-scoring group holds {w[1]:.0%} of the images: most of the batch may be defective, "
                   "and scores relative to the batch cannot tell; set --expected-defect-rate or --threshold")
    return out


def mebin_threshold(amap: np.ndarray, steps: int = 64, lo: float | None = None) -> float:
    """MEBin-style: the middle of the widest threshold interval over which the number of regions stays constant."""
    hi = float(amap.max())
    lo = float(amap.min()) if lo is None else lo
    if hi <= lo:
        return hi
    levels = np.linspace(hi, lo, steps + 1)[1:]
    counts = np.array([ndimage.label(amap > t, structure=np.ones((3, 3)))[1] for t in levels])
    best_len, best_mid, i = 0, levels[0], 0
    while i < len(levels):
        j = i
        while j + 1 < len(levels) and counts[j + 1] == counts[i]:
            j += 1
        if counts[i] > 0 and j - i + 1 > best_len:
            best_len, best_mid = j - i + 1, float(levels[(i + j) // 2])
        i = j + 1
    return best_mid


def pixel_masks(maps: np.ndarray, raw_scores: np.ndarray, decision: Decision, method: str = "image",
                image_method: str = "gmm", k: float = 3.0, threshold: float | None = None
                ) -> tuple[np.ndarray, dict]:
    """Binary defect masks (N, H, W) and a description of the pixel threshold(s)."""
    if method not in PIXEL_METHODS:
        raise ConfigError(f"pixel method must be one of {', '.join(PIXEL_METHODS)}, got {method!r}")
    if threshold is not None:
        return maps > threshold, {"method": "fixed", "threshold": float(threshold)}
    if method == "image":
        raw_method = image_method if image_method in ("mad", "gmm", "otsu") else "mad"
        raw = decide_images(raw_scores, raw_method, k=k)
        if not np.isfinite(raw.threshold):  # one group among the map maxima: fall back to the robust z-score
            raw_method, raw = "mad", decide_images(raw_scores, "mad", k=k)
        t = raw.threshold
        masks = (maps > t) & decision.defective[:, None, None]
        return masks, {"method": "image", "threshold": float(t), "detail": f"{raw_method} on map maxima: {raw.detail}"}
    floor = float(np.median(raw_scores))
    masks = np.zeros(maps.shape, dtype=bool)
    per_image = {}
    for i in np.flatnonzero(decision.defective):
        t = mebin_threshold(maps[i], lo=floor)
        masks[i] = maps[i] > t
        per_image[int(i)] = t
    return masks, {"method": "mebin", "thresholds": per_image, "floor": floor}


__all__ = ["Decision", "decide_images", "pixel_masks", "mebin_threshold", "fit_gmm", "threshold_mad",
           "threshold_gmm", "threshold_otsu", "IMAGE_METHODS", "PIXEL_METHODS"]
