"""Stage 3: refine image scores by smoothing them over each image's nearest images.

Images that look alike should have alike scores: each image's score is replaced by the similarity-weighted
mean of the scores of its k most similar images (itself included), averaged over several window sizes k.
Works for scores from any method: array in, array out. The variants (`MuScConfig.rescoring`) differ in what
"look alike" is measured on:
- `rscin` (MuSc): the image embeddings (class token, or CLIP's projected embedding).
- `rscon` (MuSc-V2): each image's most anomalous patch, the aggregated patch vector of the second-to-last
  tapped block at the arg-max of the image's patch scores (`salient_patch_vectors`).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


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
    unit = embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
    similarity = unit @ unit.T
    return np.mean([knn_smoothing(normed, similarity, k) for k in windows], axis=0)


def salient_patch_vectors(patch_vectors: np.ndarray, patch_scores: np.ndarray) -> np.ndarray:
    """RsCon's image descriptors: (N, L, C) patch vectors and (N, L) patch scores -> (N, C), the vector of each
    image's highest-scoring patch."""
    patch_vectors, patch_scores = np.asarray(patch_vectors), np.asarray(patch_scores)
    return patch_vectors[np.arange(patch_vectors.shape[0]), patch_scores.argmax(axis=1)]


__all__ = ["rscin", "knn_smoothing", "minmax", "salient_patch_vectors"]
