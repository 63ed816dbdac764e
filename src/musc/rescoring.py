"""Stage 3: image scores from the maps, refined by smoothing them over each image's nearest images.

An image's score before refinement is picked by name (`MuScConfig.image_score`, registry `IMAGE_SCORES`):
- `max` (MuSc): the maximum of its anomaly map.
- `scale-max` (this project): the strongest of its per-view maxima. Each view (LNAMD: each r) has its own map
  (mean over blocks); each view's per-image maxima are scaled to [0, 1] over the batch and the image takes the
  largest. A small defect stands out at r = 1 and a wide one at r = 5, and the mean over r dilutes either; the
  maps themselves are left to `MuScConfig.map_rule`. With one view, or fewer than 2 images, it ranks as `max` does
  on the mean map.
- `finest-max` (this project): the maximum of its finest view's map (LNAMD's r = 1), whatever the map rule. An
  option, mainly for tiled batches (`MuScConfig.tile_image_score`): at native resolution a thin defect stands out
  most at r = 1, and a wide one less.
- `z-blend` (this project): each view's per-image maxima as robust z-scores over the batch (less the median, over
  the normal spread, 1.4826 x MAD), then the mean of two opinions: the finest view's, and the mean of all views'.
  The finest view weighs most (2/3 with three views) because small defects show there first; the coarser views
  keep wide ones from being missed, and no single view's extreme image sets the scale as min-max scaling lets it.
- `finest-top3` (this project): the mean of its finest view's map over its strongest TOP_PATCHES patches' area (on
  tiles: that many patches' worth of pixels of the blended map): a lone patch of noise moves the maximum but hardly
  a mean over three patches' area, while a defect as large or larger fills it.
- `finest-top3-level` (this project): `finest-top3` less half the image's own level (LEVEL_SHARE x the
  LEVEL_QUANTILE quantile of the same map). The default preset's for tiled batches: normal images of one product
  differ as a whole (lighting, the part's own surface) and a high level raises their strongest region with it;
  taking all of the level off also scores down defects that raise a whole image; half of it ranked KolektorSDD
  higher and the other tiled sets measured within a few tenths of a point (README, How it works).

Images that look alike should have alike scores: each image's score is replaced by the similarity-weighted
mean of the scores of its k most similar images (itself included), averaged over several window sizes k.
Works for scores from any method: array in, array out. The variants (`MuScConfig.rescoring`) differ in what
"look alike" is measured on:
- `rscin` (MuSc): the image embeddings (class token, or CLIP's projected embedding).
- `rscon` (MuSc-V2): each image's most anomalous patch, the aggregated patch vector of the second-to-last
  tapped block at the arg-max of the image's patch scores (`salient_patch_vectors`).
A tiled batch may use another variant, or none (`MuScConfig.tile_rescoring`; musc.tiling).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from .scoring import lower_quantile


def minmax(scores: np.ndarray) -> np.ndarray:
    """Scale to [0, 1] over the batch; a constant vector becomes all zeros."""
    scores = np.asarray(scores, dtype=np.float64)
    lo, hi = scores.min(), scores.max()
    return np.zeros_like(scores) if hi - lo <= 0 else (scores - lo) / (hi - lo)


def knn_smoothing(scores: np.ndarray, similarity: np.ndarray, k: int) -> np.ndarray:
    """Keep each row's k largest similarities (ties broken by index), normalise rows to sum 1, multiply with scores."""
    n = similarity.shape[0]
    k = min(k, n)
    order = np.argsort(-similarity, axis=1, kind="stable")[:, :k]
    weights = np.zeros_like(similarity)
    rows = np.arange(n)[:, None]
    weights[rows, order] = similarity[rows, order]
    sums = weights.sum(axis=1, keepdims=True)
    sums[sums == 0] = 1.0
    return (weights / sums) @ scores


def cosine_similarity(embeddings: np.ndarray) -> np.ndarray:
    """(N, N) cosine similarities of the rows of `embeddings` (N, D): how alike RsCIN / RsCon find two images."""
    embeddings = np.asarray(embeddings, dtype=np.float64)
    unit = embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
    return unit @ unit.T


def rscin(scores: Sequence[float] | np.ndarray, embeddings: np.ndarray, windows: Sequence[int] = (1, 2, 3)) -> np.ndarray:
    """Refined scores (N,) from raw scores (N,) and image embeddings (N, D); no windows = min-max scaling only."""
    scores = np.asarray(scores, dtype=np.float64)
    embeddings = np.asarray(embeddings, dtype=np.float64)
    if scores.ndim != 1:
        raise ValueError(f"scores must be a 1-D array, got shape {scores.shape}")
    if embeddings.ndim != 2 or embeddings.shape[0] != scores.shape[0]:
        raise ValueError(f"embeddings must have shape (N, D) with N = {scores.shape[0]}, got {embeddings.shape}")
    if any(k < 1 for k in windows):
        raise ValueError(f"RsCIN windows must be >= 1, got {list(windows)}")
    normed = minmax(scores)
    if not windows:
        return normed
    similarity = cosine_similarity(embeddings)
    return np.mean([knn_smoothing(normed, similarity, k) for k in windows], axis=0)


def scale_max(map_maxima: np.ndarray, view_maxima: np.ndarray) -> np.ndarray:
    """`scale-max` image scores (N,): each row of `view_maxima` (V, N) min-max scaled over the batch, then the
    largest per image; map maxima for fewer than 2 images (nothing to scale against)."""
    view_maxima = np.asarray(view_maxima, dtype=np.float64)
    if view_maxima.ndim != 2 or view_maxima.shape[1] != len(map_maxima):
        raise ValueError(f"view maxima must have shape (V, {len(map_maxima)}), got {view_maxima.shape}")
    if view_maxima.shape[1] < 2:
        return np.asarray(map_maxima, dtype=np.float64)
    return np.max([minmax(row) for row in view_maxima], axis=0)


def robust_z(values: np.ndarray) -> np.ndarray:
    """(values - median) / (1.4826 x MAD) over the batch: a z-score scaled by the spread of the typical (normal)
    values, not by the outliers. With no spread in the MAD (most values tied), the standard deviation scales;
    with none at all, every value becomes 0."""
    values = np.asarray(values, dtype=np.float64)
    centre = float(np.median(values))
    spread = 1.4826 * float(np.median(np.abs(values - centre)))
    if not spread > 0:
        spread = float(values.std())
    return np.zeros_like(values) if not spread > 0 else (values - centre) / spread


def z_blend(map_maxima: np.ndarray, view_maxima: np.ndarray, finest: int) -> np.ndarray:
    """`z-blend` image scores (N,): with z the robust z-scores of each row of `view_maxima` (V, N), the mean of
    z[finest] and the mean over views of z; map maxima for fewer than 2 images (nothing to scale against)."""
    view_maxima = _check_views(map_maxima, view_maxima, finest)
    if view_maxima.shape[1] < 2:
        return np.asarray(map_maxima, dtype=np.float64)
    z = np.stack([robust_z(row) for row in view_maxima])
    return 0.5 * (z[finest] + z.mean(axis=0))


def _check_views(map_maxima: np.ndarray, view_maxima: np.ndarray, finest: int) -> np.ndarray:
    view_maxima = np.asarray(view_maxima, dtype=np.float64)
    if view_maxima.ndim != 2 or view_maxima.shape[1] != len(map_maxima) or not 0 <= finest < view_maxima.shape[0]:
        raise ValueError(f"view maxima must have shape (V, {len(map_maxima)}) with a row {finest}, "
                         f"got {view_maxima.shape}")
    return view_maxima


def finest_max(map_maxima: np.ndarray, view_maxima: np.ndarray, finest: int) -> np.ndarray:
    """`finest-max` image scores (N,): the finest view's map maxima, row `finest` of `view_maxima` (V, N)."""
    return _check_views(map_maxima, view_maxima, finest)[finest].copy()


TOP_PATCHES = 3
"""`finest-top3` averages each image's finest-view map over this many patches' area, its strongest values."""


def peak(values: torch.Tensor, patch_area: float) -> torch.Tensor:
    """(..., P) map values -> (...,) their maximum: what the maxima-based image scores read of each view's map."""
    return values.amax(dim=-1)


def top_mean(values: torch.Tensor, patch_area: float, patches: int = TOP_PATCHES) -> torch.Tensor:
    """(..., P) map values -> (...,) the mean of the largest `patches` x `patch_area` of them (at least one), the
    strongest region of that many patches' area; `patch_area` is one patch's count of values (1 on patch grids,
    about (tile side / grid side)^2 pixels on upsampled maps)."""
    k = int(min(values.shape[-1], max(1, round(patches * patch_area))))
    return values.topk(k, dim=-1).values.mean(dim=-1)


LEVEL_QUANTILE = 0.9
"""`finest-top3-level` reads an image's level as this quantile of its finest view's map (most of an image is normal,
so a small defect hardly moves it)."""
LEVEL_SHARE = 0.5
"""`finest-top3-level` takes this share of the image's level off its `finest-top3` score: all of it ranks images
whose whole map stands high (lighting, the part's own surface) as normal, but also the defects that raise a whole
image; none of it ranks by the strongest region alone."""


def top_mean_less_level(values: torch.Tensor, patch_area: float, patches: int = TOP_PATCHES) -> torch.Tensor:
    """(..., P) map values -> (...,) `top_mean` less `LEVEL_SHARE` x their `LEVEL_QUANTILE` quantile
    (`musc.scoring.lower_quantile`)."""
    return top_mean(values, patch_area, patches) - LEVEL_SHARE * lower_quantile(values, LEVEL_QUANTILE)


@dataclass(frozen=True)
class ImageScore:
    """A rule for an image's score before re-scoring: `run(map_maxima (N,), view_values (V, N), finest) -> (N,)`,
    `finest` the row of the finest view (`musc.scoring.finest_view_index`). `view_values` are each view's map
    reduced per image by `reduce((..., P) values, patch area) -> (...,)`: the maxima (`peak`) unless the rule says
    otherwise. `uses_views` False: it reads the map maxima only (engines then skip each view's own map)."""

    name: str
    run: Callable[[np.ndarray, np.ndarray, int], np.ndarray]
    uses_views: bool
    reduce: Callable[[torch.Tensor, float], torch.Tensor] = peak


IMAGE_SCORES: dict[str, ImageScore] = {
    "max": ImageScore("max", lambda map_maxima, view_maxima, finest: np.asarray(map_maxima, dtype=np.float64), False),
    "scale-max": ImageScore("scale-max", lambda map_maxima, view_maxima, finest: scale_max(map_maxima, view_maxima),
                            True),
    "finest-max": ImageScore("finest-max", finest_max, True),
    "z-blend": ImageScore("z-blend", z_blend, True),
    "finest-top3": ImageScore("finest-top3", finest_max, True, top_mean),
    "finest-top3-level": ImageScore("finest-top3-level", finest_max, True, top_mean_less_level),
}


def get_image_score(name: str) -> ImageScore:
    try:
        return IMAGE_SCORES[name]
    except KeyError:
        raise ValueError(f"unknown image score {name!r}; known: {', '.join(IMAGE_SCORES)}") from None


def salient_patch_vectors(patch_vectors: np.ndarray, patch_scores: np.ndarray) -> np.ndarray:
    """RsCon's image descriptors: (N, L, C) patch vectors and (N, L) patch scores -> (N, C), the vector of each
    image's highest-scoring patch."""
    patch_vectors, patch_scores = np.asarray(patch_vectors), np.asarray(patch_scores)
    return patch_vectors[np.arange(patch_vectors.shape[0]), patch_scores.argmax(axis=1)]


__all__ = ["rscin", "cosine_similarity", "knn_smoothing", "minmax", "salient_patch_vectors", "scale_max", "finest_max",
           "z_blend", "robust_z", "peak",
           "top_mean", "top_mean_less_level", "TOP_PATCHES", "LEVEL_QUANTILE", "LEVEL_SHARE", "ImageScore",
           "IMAGE_SCORES", "get_image_score"]
