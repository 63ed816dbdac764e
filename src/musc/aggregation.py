"""LNAMD (stage 1 of MuSc): LayerNorm, r x r neighbourhood mean, L2 normalisation of each patch.

A patch vector at aggregation degree r describes the patch together with its neighbours, so
defects of different sizes are matched at the scale where they stand out.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import torch
import torch.nn.functional as F

LAYER_NORM_EPS = 1e-5


def layer_norm_map(tokens: torch.Tensor) -> torch.Tensor:
    """LayerNorm of each image's whole (C, H, W) token map, without learned affine: (N, C, H, W)."""
    return F.layer_norm(tokens, tokens.shape[1:], eps=LAYER_NORM_EPS)


def neighbourhood_mean(tokens: torch.Tensor, r: int) -> torch.Tensor:
    """r x r mean around each patch, stride 1, zero padding r//2 counted in the mean; r = 1 is the identity."""
    if r < 1 or r % 2 == 0:
        raise ValueError(f"aggregation degree r must be a positive odd integer, got {r}")
    if r == 1:
        return tokens
    return F.avg_pool2d(tokens, kernel_size=r, stride=1, padding=r // 2, count_include_pad=True)


def to_patch_vectors(tokens: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N, H*W, C) with each patch vector scaled to unit length."""
    n, c, h, w = tokens.shape
    return F.normalize(tokens.reshape(n, c, h * w).transpose(1, 2).contiguous(), dim=-1)


LNAMD_CHUNK_BYTES = 64 * 2**20
"""Float32 token bytes aggregated at once: LayerNorm and pooling transients stay this small whatever N is."""


def lnamd_iter(tokens: torch.Tensor, r_values: Sequence[int],
               chunk_bytes: int = LNAMD_CHUNK_BYTES) -> Iterator[torch.Tensor]:
    """Like `lnamd`, one r at a time, so only one aggregated copy of the features exists at once.

    Every step is per image, so images are aggregated a chunk at a time into the (N, H*W, C) output:
    the LayerNorm and pooling intermediates never hold all N images.
    """
    n, c, h, w = tokens.shape
    step = max(1, chunk_bytes // max(1, 4 * c * h * w))
    for r in r_values:
        out = torch.empty((n, h * w, c), dtype=torch.float32, device=tokens.device)
        for i0 in range(0, n, step):
            out[i0:i0 + step] = to_patch_vectors(neighbourhood_mean(layer_norm_map(tokens[i0:i0 + step].float()), r))
        yield out
        del out  # the consumer's copy is the only one left while the next r is computed


def lnamd(tokens: torch.Tensor, r_values: Sequence[int]) -> list[torch.Tensor]:
    """One tapped block's tokens (N, C, H, W) -> per r, unit patch vectors (N, H*W, C) row-major over the grid."""
    return list(lnamd_iter(tokens, r_values))


__all__ = ["layer_norm_map", "neighbourhood_mean", "to_patch_vectors", "lnamd", "lnamd_iter"]
