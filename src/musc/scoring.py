"""MSM, mutual scoring (stage 2 of MuSc): each image's patches are scored by all the other images.

For a patch p of image i and another image j, s_j(p) is the distance from p to its nearest patch
in j. Of the N-1 values s_j(p) the smallest `interval` fraction is averaged: a normal patch has
close look-alikes in most other images, a defect has none. With `interval_skip` (this project; 0 in the
paper) the smallest few of them are left out first: a defect that recurs in a few images (one kind of crack)
finds look-alikes there, and those few would otherwise pull its score down. Distances come from matrix products
of unit vectors (d^2 = 2 - 2 cos), never from materialising all pairwise distances.

The exact path computes each unordered image pair once: the L x L similarity block of (i, j) gives
both i's nearest-patch similarities in j (row maxima) and j's in i (column maxima). When the
(N, L, N) table of nearest-patch distances does not fit the memory budget, images are scored in
blocks against all others instead (twice the products, a fraction of the memory). Both give the
same numbers.

The patch scores of every (block, view) pair become one map by a rule picked by name (`MuScConfig.map_rule`,
registry `MAP_RULES`), applied to each view's scores (the mean over the tapped blocks):
- `mean` (MuSc): the mean over views.
- `z-max` (this project): each view's scores standardised by the batch's median and median absolute deviation
  over all its patches, then the largest per patch. A defect that stands out at one r (a small one at r = 1, a
  wide one at r = 5) keeps its contrast instead of being averaged with the r where it does not.
- `finest` (this project): the scores of the finest view alone (LNAMD: the smallest r; SNAMD's one view). A
  thin defect (a crack one or two pixels wide in a native-resolution tile) is smeared by the wider
  neighbourhoods; an option, also for tiled batches alone (`MuScConfig.tile_map_rule`).
Every rule takes the per-view scores (V in front of N, h, w) and the views' labels (`MuSc.views()`).

Before the rule, an option (`MuScConfig.map_baseline`, this project) takes each image's own level off its scores
(`subtract_image_baseline`): a normal image unlike the rest of the batch (other lighting, another look of the
part) scores high everywhere, a small defect only where it is.
"""

from __future__ import annotations

import math
import os
from typing import Any, Callable, Iterable, Sequence

import torch

CPU_BLOCK_BYTES = 16 * 2**20
"""One similarity tile (rows x columns x 4 bytes) on the CPU: small enough to stay in cache while its row
and column maxima are taken (measured 1.7x faster than 256 MiB tiles; BENCHMARKS.md)."""
GPU_BLOCK_BYTES = 512 * 2**20


def default_block_bytes(device: torch.device) -> int:
    return GPU_BLOCK_BYTES if device.type == "cuda" else CPU_BLOCK_BYTES


def interval_count(n_others: int, fraction: float) -> int:
    """How many of the n_others smallest distances are averaged: max(1, floor(fraction * n_others))."""
    return max(1, int(math.floor(fraction * n_others + 1e-9)))


def interval_bounds(n_others: int, fraction: float, skip: float = 0.0) -> tuple[int, int]:
    """The interval (lo, hi) of the sorted n_others distances that is averaged: hi = interval_count(n_others,
    fraction); lo = floor(skip * n_others) of the smallest are left out, at most hi - 1 (one value always stays)."""
    hi = interval_count(n_others, fraction)
    return min(int(math.floor(skip * n_others + 1e-9)), hi - 1), hi


def _band_mean(values: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    """Mean of the (lo+1)-th to hi-th smallest values along the last axis."""
    if lo == 0:
        return torch.topk(values, hi, dim=-1, largest=False, sorted=False).values.mean(dim=-1)
    return torch.topk(values, hi, dim=-1, largest=False, sorted=True).values[..., lo:].mean(dim=-1)


def interval_mean(distances: torch.Tensor, fraction: float, skip: float = 0.0) -> torch.Tensor:
    """Interval mean along the last axis (M = its length): the smallest interval_count(M, fraction) values, less the
    floor(skip * M) smallest of them (`interval_bounds`)."""
    return _band_mean(distances, *interval_bounds(distances.shape[-1], fraction, skip))


def _similarity_to_distance_(sim: torch.Tensor) -> torch.Tensor:
    """In place: cosine similarity of unit vectors -> Euclidean distance sqrt(max(0, 2 - 2 cos))."""
    return sim.mul_(-2.0).add_(2.0).clamp_(min=0.0).sqrt_()


def _available_memory() -> int | None:
    """Bytes the kernel says can still be allocated without swapping (Linux MemAvailable), or None."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def default_memory_budget(device: torch.device) -> int:
    """Bytes the scoring stage may use: 60% of free GPU memory; on the CPU half of the memory still available
    (so features already held are accounted for), at most 40% of physical RAM."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * 0.6)
    try:
        total = int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") * 0.4)
    except (ValueError, OSError, AttributeError):
        total = 8 * 2**30
    available = _available_memory()
    return total if available is None else min(total, available // 2)


def _block_images(n_patches: int, block_bytes: int, elem_bytes: int = 4) -> int:
    """Images per block side so that one (b*L) x (b*L) similarity block stays within block_bytes."""
    return max(1, int(math.isqrt(max(1, block_bytes // (elem_bytes * n_patches * n_patches)))))


def half_inputs(z: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    """Round patch vectors once to the half dtype of the similarity products (None = keep float32).

    On a GPU the vectors are stored in `dtype` (half the memory) and multiplied by tensor cores with float32
    accumulation and output. On the CPU, where half products are slower, they are rounded and kept in
    float32: the products of rounded values are exact in float32, so the CPU gives the numbers a
    float32-accumulating GPU product gives, at float32 speed (this is how BENCHMARKS.md measures the
    accuracy of the half-precision option without a GPU).
    """
    if dtype is None or dtype == torch.float32:
        return z
    rounded = z.to(dtype)
    return rounded if z.device.type == "cuda" else rounded.float()


_OUT_DTYPE_MM: bool | None = None


def _matmul_sim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b.T in float32: half inputs (from `half_inputs`, GPU only) accumulate and return in float32."""
    global _OUT_DTYPE_MM
    if a.dtype == torch.float32:
        return a @ b.T
    if a.is_cuda and _OUT_DTYPE_MM is not False:
        try:
            out = torch.mm(a, b.T, out_dtype=torch.float32)
            _OUT_DTYPE_MM = True
            return out
        except (RuntimeError, TypeError):
            _OUT_DTYPE_MM = False  # torch without mm(out_dtype=): keep the numbers, lose the speed-up
    return a.float() @ b.float().T


def nearest_patch_distances(z: torch.Tensor, block_bytes: int | None = None,
                            matmul_dtype: torch.dtype | None = None,
                            progress: Callable[[int], None] | None = None) -> torch.Tensor:
    """(N, L, C) unit patch vectors -> (N, L, N) table D[i, p, j] = min_q ||z_ip - z_jq||, +inf where j == i.

    Pair-symmetric: each unordered pair of image blocks is multiplied once.
    """
    n, l, c = z.shape
    b = min(n, _block_images(l, block_bytes or default_block_bytes(z.device)))
    flat = half_inputs(z, matmul_dtype).reshape(n * l, c)
    table = torch.empty((n, l, n), dtype=torch.float32, device=z.device)
    starts = list(range(0, n, b))
    for bi, i0 in enumerate(starts):
        i1 = min(n, i0 + b)
        zi = flat[i0 * l:i1 * l]
        for j0 in starts[bi:]:
            j1 = min(n, j0 + b)
            sim = _matmul_sim(zi, flat[j0 * l:j1 * l]).view(i1 - i0, l, j1 - j0, l)
            table[i0:i1, :, j0:j1] = sim.amax(dim=3)
            if j0 != i0:
                table[j0:j1, :, i0:i1] = sim.amax(dim=1).permute(1, 2, 0)
            del sim
        if progress is not None:
            progress(i1 - i0)
    _similarity_to_distance_(table)
    idx = torch.arange(n, device=z.device)
    table[idx, :, idx] = float("inf")
    return table


def cross_nearest_distances(za: torch.Tensor, zb: torch.Tensor, block_bytes: int | None = None,
                            matmul_dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Two different sets of images (A, L, C) and (B, L, C) -> (A, L, B) and (B, L, A) nearest-patch distances.

    Pair-symmetric: each similarity tile gives A's nearest patches in B (row maxima) and B's in A (column
    maxima). This is one off-diagonal block of `nearest_patch_distances`, for engines that split the set.
    """
    na, l, c = za.shape
    nb = zb.shape[0]
    b = _block_images(l, block_bytes or default_block_bytes(za.device))
    fa, fb = half_inputs(za, matmul_dtype).reshape(na * l, c), half_inputs(zb, matmul_dtype).reshape(nb * l, c)
    ab = torch.empty((na, l, nb), dtype=torch.float32, device=za.device)
    ba = torch.empty((nb, l, na), dtype=torch.float32, device=za.device)
    for i0 in range(0, na, b):
        i1 = min(na, i0 + b)
        for j0 in range(0, nb, b):
            j1 = min(nb, j0 + b)
            sim = _matmul_sim(fa[i0 * l:i1 * l], fb[j0 * l:j1 * l]).view(i1 - i0, l, j1 - j0, l)
            ab[i0:i1, :, j0:j1] = sim.amax(dim=3)
            ba[j0:j1, :, i0:i1] = sim.amax(dim=1).permute(1, 2, 0)
            del sim
    return _similarity_to_distance_(ab), _similarity_to_distance_(ba)


def distances_to_references(z: torch.Tensor, refs: torch.Tensor, block_bytes: int | None = None,
                            matmul_dtype: torch.dtype | None = None) -> torch.Tensor:
    """(N, L, C) test and (K, L', C) reference unit vectors -> (N, L, K): distance to the nearest patch of each reference."""
    n, l, c = z.shape
    k, lr, _ = refs.shape
    budget = block_bytes or default_block_bytes(z.device)
    rows = max(1, min(n, budget // (4 * l * lr)))  # test images per tile, then as many references as fit
    cols = max(1, min(k, budget // (4 * rows * l * lr)))
    flat, rflat = half_inputs(z, matmul_dtype).reshape(n * l, c), half_inputs(refs, matmul_dtype).reshape(k * lr, c)
    table = torch.empty((n, l, k), dtype=torch.float32, device=z.device)
    for i0 in range(0, n, rows):
        i1 = min(n, i0 + rows)
        for j0 in range(0, k, cols):
            j1 = min(k, j0 + cols)
            sim = _matmul_sim(flat[i0 * l:i1 * l], rflat[j0 * lr:j1 * lr])
            table[i0:i1, :, j0:j1] = sim.view(i1 - i0, l, j1 - j0, lr).amax(dim=3)
            del sim
    return _similarity_to_distance_(table)


def reference_scores(z: torch.Tensor, refs: torch.Tensor, matmul_dtype: torch.dtype | None = None) -> torch.Tensor:
    """MuSc+ for one (block, r) pair: each test patch's distance to its nearest patch in any reference, (N, L)."""
    return distances_to_references(z, refs, matmul_dtype=matmul_dtype).amin(dim=-1)


def _scores_by_row_blocks(z: torch.Tensor, fraction: float, budget: int, matmul_dtype: torch.dtype | None,
                          progress: Callable[[int], None] | None, skip: float = 0.0) -> torch.Tensor:
    """Low-memory path: score blocks of images against all others; only (b, L, N) distances exist at once."""
    n, l, c = z.shape
    flat = half_inputs(z, matmul_dtype).reshape(n * l, c)
    b_rows = max(1, min(n, budget // (2 * 4 * l * n)))
    tile = min(n, _block_images(l, min(default_block_bytes(z.device), max(1, budget // 2))))
    out = torch.empty((n, l), dtype=torch.float32, device=z.device)
    for i0 in range(0, n, b_rows):
        i1 = min(n, i0 + b_rows)
        rows = torch.empty((i1 - i0, l, n), dtype=torch.float32, device=z.device)
        for a0 in range(i0, i1, tile):
            a1 = min(i1, a0 + tile)
            za = flat[a0 * l:a1 * l]
            for j0 in range(0, n, tile):
                j1 = min(n, j0 + tile)
                sim = _matmul_sim(za, flat[j0 * l:j1 * l]).view(a1 - a0, l, j1 - j0, l)
                rows[a0 - i0:a1 - i0, :, j0:j1] = sim.amax(dim=3)
                del sim
        _similarity_to_distance_(rows)
        local = torch.arange(i1 - i0, device=z.device)
        rows[local, :, local + i0] = float("inf")
        out[i0:i1] = interval_mean_excluding_self(rows, fraction, skip)
        if progress is not None:
            progress(i1 - i0)
    return out


def interval_mean_excluding_self(table: torch.Tensor, fraction: float, skip: float = 0.0,
                                 rows_per_chunk: int = 16) -> torch.Tensor:
    """Interval mean over the N-1 finite entries of each (i, p) row (`interval_bounds`); the +inf self entry is never
    among the smallest.

    Works on a few images at a time so that topk's values and indices stay small next to the table.
    """
    lo, hi = interval_bounds(table.shape[-1] - 1, fraction, skip)
    out = torch.empty(table.shape[:-1], dtype=table.dtype, device=table.device)
    for i0 in range(0, table.shape[0], rows_per_chunk):
        out[i0:i0 + rows_per_chunk] = _band_mean(table[i0:i0 + rows_per_chunk], lo, hi)
    return out


def mutual_scores(z: torch.Tensor, fraction: float = 0.3, memory_budget: int | None = None,
                  matmul_dtype: torch.dtype | None = None,
                  progress: Callable[[int], None] | None = None, refs: torch.Tensor | None = None,
                  skip: float = 0.0) -> torch.Tensor:
    """MSM for one (block, r) pair: (N, L, C) unit patch vectors -> (N, L) patch anomaly scores.

    memory_budget (bytes) bounds the working memory; None = default_memory_budget(z.device).
    refs (K, L, C): few-shot MuSc, known-normal images that join the pool of scorers (each test patch
    then has N-1+K distances to take the interval mean of); they are never scored themselves.
    skip: the share of the smallest distances left out of the interval mean (`interval_bounds`; 0 in the paper).
    """
    n, l, _ = z.shape
    if refs is not None and refs.shape[0] > 0:
        return interval_mean_excluding_self(
            torch.cat([nearest_patch_distances(z, matmul_dtype=matmul_dtype, progress=progress)
                       if n > 1 else torch.full((n, l, n), float("inf"), device=z.device),
                       distances_to_references(z, refs, matmul_dtype=matmul_dtype)], dim=-1), fraction, skip)
    if n < 2:
        raise ValueError(f"mutual scoring needs at least 2 images, got {n}")
    budget = default_memory_budget(z.device) if memory_budget is None else int(memory_budget)
    table_bytes = 4 * n * l * n
    if table_bytes * 5 // 4 <= budget:
        block = min(default_block_bytes(z.device), budget - table_bytes * 5 // 4)
        table = nearest_patch_distances(z, block_bytes=block, matmul_dtype=matmul_dtype, progress=progress)
        return interval_mean_excluding_self(table, fraction, skip)
    return _scores_by_row_blocks(z, fraction, budget, matmul_dtype, progress, skip)


def nearest_other_scores(z: torch.Tensor, fraction: float = 0.3, memory_budget: int | None = None,
                         matmul_dtype: torch.dtype | None = None, progress: Callable[[int], None] | None = None,
                         skip: float = 0.0) -> torch.Tensor:
    """MuSc+ of each image against all the others of the set, for one (block, r) pair: (N, L, C) -> (N, L), each
    patch's distance to its nearest patch in any other image. This is what `reference_scores` gives one image against
    the other N - 1 as references (a bank's leave-one-out), from one pair-symmetric table: MSM's interval mean of one
    value (`fraction` and `skip` are ignored; the signature is `mutual_scores`', so `MuSc.patch_scores` takes it
    as its scorer)."""
    return mutual_scores(z, 0.0, memory_budget, matmul_dtype=matmul_dtype, progress=progress)


def random_projection(z: torch.Tensor, dim: int, seed: int = 0) -> torch.Tensor:
    """Approximate fast mode: project unit patch vectors (N, L, C) to `dim` random Gaussian directions, renormalise.

    Distances are preserved up to a relative error of about 1/sqrt(dim) (Johnson-Lindenstrauss), and the
    products cost dim/C of the exact ones. Opt-in; its accuracy cost is measured in BENCHMARKS.md.
    """
    c = z.shape[-1]
    if dim >= c:
        return z
    g = torch.Generator(device="cpu").manual_seed(seed)
    proj = torch.randn(c, dim, generator=g).to(device=z.device, dtype=z.dtype) / math.sqrt(dim)
    return torch.nn.functional.normalize(z @ proj, dim=-1)


def view_mean(view_grids: torch.Tensor, views: Sequence = ()) -> torch.Tensor:
    """`mean`: (..., V, N, h, w) per-view patch scores -> (..., N, h, w), the mean over views."""
    return view_grids.mean(dim=-4)


def robust_z_max(view_grids: torch.Tensor, views: Sequence = ()) -> torch.Tensor:
    """`z-max`: (..., V, N, h, w) per-view patch scores -> (..., N, h, w). Each view is standardised by the median
    and median absolute deviation of all its scores (every image, and every tile position in front of V), then
    the maximum over views is kept. A view whose scores are all equal contributes 0."""
    views_first = view_grids.movedim(-4, 0)
    flat = views_first.reshape(views_first.shape[0], -1)
    median = flat.median(dim=1).values
    mad = (flat - median[:, None]).abs().median(dim=1).values
    mad = torch.where(mad > 0, mad, torch.ones_like(mad))
    shape = (-1, *([1] * (views_first.dim() - 1)))
    return ((views_first - median.view(shape)) / mad.view(shape)).amax(dim=0)


def finest_view_index(views: Sequence) -> int:
    """Position of the finest view among stage 1's labels: the smallest aggregation degree r (labels that are
    not degrees, SNAMD's, count only when there is no r)."""
    degrees = [(v, i) for i, v in enumerate(views) if isinstance(v, int)]
    return min(degrees)[1] if degrees else 0


def finest_view(view_grids: torch.Tensor, views: Sequence = ()) -> torch.Tensor:
    """`finest`: (..., V, N, h, w) per-view patch scores -> (..., N, h, w), the finest view's scores alone
    (`finest_view_index` of the labels `views`; the first view when none are given)."""
    return view_grids.select(-4, finest_view_index(views))


def shallow_blocks(layers: Iterable[int]) -> tuple[int, ...]:
    """The tapped blocks (`layers`) but the deepest (`MuScConfig.tile_image_blocks` and `tile_map_blocks` 'shallow');
    the one tapped block when there is only one."""
    ordered = tuple(sorted(layers))
    return ordered[:-1] if len(ordered) > 1 else ordered


def shallow_views(pairs: dict[tuple[int, Any], torch.Tensor], views: Sequence) -> torch.Tensor:
    """Per-(block, view) patch scores (`MuSc.patch_scores(..., keep_pairs=True)`) -> each view's scores averaged
    over `shallow_blocks` of the blocks they hold (V, ...), as the views average over every tapped block."""
    blocks = shallow_blocks({block for block, _ in pairs})
    return torch.stack([torch.stack([pairs[(block, view)] for block in blocks]).mean(dim=0) for view in views])


def lower_quantile(values: torch.Tensor, quantile: float) -> torch.Tensor:
    """(..., P) -> (...,) the `quantile` of the last axis as the k-th smallest value, k = ceil(quantile x P) (at
    least 1); `kthvalue`, since `torch.quantile` refuses inputs of more than 2^24 values."""
    return values.kthvalue(max(1, math.ceil(quantile * values.shape[-1])), dim=-1).values


def image_levels(view_grids: torch.Tensor, quantile: float) -> torch.Tensor:
    """(..., V, N, h, w) per-view patch scores -> (V, N) each (view, image)'s own `quantile` of its scores
    (`lower_quantile`), pooled over h, w and any tile positions in front of V: the image's level."""
    lead = view_grids.dim() - 4
    order = [lead, lead + 1, *range(lead), lead + 2, lead + 3]  # (V, N, ..., h, w)
    flat = view_grids.permute(order).reshape(view_grids.shape[lead], view_grids.shape[lead + 1], -1)
    return lower_quantile(flat, quantile)


def subtract_image_baseline(view_grids: torch.Tensor, quantile: float) -> torch.Tensor:
    """(..., V, N, h, w) per-view patch scores -> the same, each (view, image) less its own level (`image_levels`).
    Adding a constant to one image's scores in one view leaves the result unchanged."""
    level = image_levels(view_grids, quantile)
    return view_grids - level.view(*level.shape, 1, 1)


MAP_RULES: dict[str, Callable[[torch.Tensor, Sequence], torch.Tensor]] = {
    "mean": view_mean, "z-max": robust_z_max, "finest": finest_view}


def get_map_rule(name: str) -> Callable[[torch.Tensor, Sequence], torch.Tensor]:
    """The map rule named `name` (MAP_RULES): called with the per-view scores and the views' labels."""
    try:
        return MAP_RULES[name]
    except KeyError:
        raise ValueError(f"unknown map rule {name!r}; known: {', '.join(MAP_RULES)}") from None


__all__ = ["interval_count", "interval_bounds", "interval_mean", "nearest_patch_distances", "cross_nearest_distances",
           "mutual_scores", "nearest_other_scores", "default_memory_budget", "interval_mean_excluding_self",
           "half_inputs", "random_projection", "distances_to_references", "reference_scores", "view_mean",
           "robust_z_max", "finest_view_index", "finest_view", "MAP_RULES", "get_map_rule",
           "subtract_image_baseline", "image_levels", "lower_quantile", "shallow_blocks", "shallow_views"]
