"""Stage 1: patch aggregation. A patch vector describes the patch together with its neighbours, so defects
of different sizes are matched at the scale where they stand out.

Variants, picked by name (`MuScConfig.aggregation`, registry `AGGREGATIONS`):
- `lnamd` (MuSc, ICLR 2024): LayerNorm over each image's (C, H, W) map, r x r mean (zero padding counted),
  L2 normalisation; one set of patch vectors per r, each scored on its own.
- `snamd` (MuSc-V2): inside each r x r window, a mean weighted by exp(-||f - f_centre||) (zero padding, whose
  weight is exp(-||f_centre||)); the r results are averaged into one vector per patch, then L2-normalised.
  No LayerNorm. One set of patch vectors per tapped block: a third of LNAMD's mutual scoring for r = 1, 3, 5.
  The weights depend on the tokens' scale: between DINO taps' neighbours (distances of tens) they vanish, and
  SNAMD keeps each patch's own unit token (benchmarks/bench_snamd.py).
- `lnamd+snamd` (this project): both variants' sets, each scored, all averaged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

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


def similarity_weighted_mean(tokens: torch.Tensor, r_values: Sequence[int]) -> torch.Tensor:
    """SNAMD before normalisation: (N, C, H, W) -> (N, C, H*W), the mean over r of the exp(-distance)-weighted
    r x r window means around each patch (windows centred on the patch, zero padding)."""
    for r in r_values:
        if r < 1 or r % 2 == 0:
            raise ValueError(f"aggregation degree r must be a positive odd integer, got {r}")
    n, c, h, w = tokens.shape
    r_max = max(r_values)
    windows = F.unfold(tokens, kernel_size=r_max, padding=r_max // 2).view(n, c, r_max, r_max, h * w)
    centre = r_max // 2
    weights = torch.exp(-(windows - windows[:, :, centre:centre + 1, centre:centre + 1]).norm(dim=1, keepdim=True))
    out = torch.zeros((n, c, h * w), dtype=tokens.dtype, device=tokens.device)
    for r in r_values:
        lo, hi = centre - r // 2, centre + r // 2 + 1
        wr = weights[:, :, lo:hi, lo:hi]
        out += (windows[:, :, lo:hi, lo:hi] * wr).sum(dim=(2, 3)) / wr.sum(dim=(2, 3))
    return out / len(r_values)


def snamd_iter(tokens: torch.Tensor, r_values: Sequence[int],
               chunk_bytes: int = LNAMD_CHUNK_BYTES) -> Iterator[torch.Tensor]:
    """SNAMD of one tapped block's tokens (N, C, H, W): yields one (N, H*W, C) set of unit patch vectors.

    Images are aggregated a chunk at a time: the r_max x r_max windows of a chunk are the largest transient.
    """
    n, c, h, w = tokens.shape
    step = max(1, chunk_bytes // max(1, 4 * c * h * w * max(r_values) ** 2))
    out = torch.empty((n, h * w, c), dtype=torch.float32, device=tokens.device)
    for i0 in range(0, n, step):
        mean = similarity_weighted_mean(tokens[i0:i0 + step].float(), r_values)
        out[i0:i0 + step] = F.normalize(mean.transpose(1, 2), dim=-1)
    yield out


def lnamd_and_snamd_iter(tokens: torch.Tensor, r_values: Sequence[int]) -> Iterator[torch.Tensor]:
    """Both stage-1 variants of one tapped block: LNAMD's sets (one per r), then SNAMD's one set; MSM scores each
    and the pipeline averages all of them."""
    yield from lnamd_iter(tokens, r_values)
    yield from snamd_iter(tokens, r_values)


@dataclass(frozen=True)
class Aggregation:
    """A stage-1 variant: `views(r_values)` labels the sets of patch vectors it yields per tapped block, in the
    order `run(tokens, r_values)` yields them (each set is scored by MSM on its own)."""

    name: str
    run: Callable[[torch.Tensor, Sequence[int]], Iterator[torch.Tensor]]
    views: Callable[[Sequence[int]], tuple]


AGGREGATIONS: dict[str, Aggregation] = {
    "lnamd": Aggregation("lnamd", lnamd_iter, lambda r_values: tuple(r_values)),
    "snamd": Aggregation("snamd", snamd_iter, lambda r_values: ("snamd",)),
    "lnamd+snamd": Aggregation("lnamd+snamd", lnamd_and_snamd_iter, lambda r_values: (*r_values, "snamd")),
}


def get_aggregation(name: str) -> Aggregation:
    try:
        return AGGREGATIONS[name]
    except KeyError:
        raise ValueError(f"unknown aggregation {name!r}; known: {', '.join(AGGREGATIONS)}") from None


__all__ = ["layer_norm_map", "neighbourhood_mean", "to_patch_vectors", "lnamd", "lnamd_iter", "snamd_iter",
           "similarity_weighted_mean", "lnamd_and_snamd_iter", "Aggregation", "AGGREGATIONS", "get_aggregation"]
