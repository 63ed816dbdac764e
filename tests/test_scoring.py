import math
import os

import pytest
import torch
import torch.nn.functional as F

from musc.scoring import (MAP_RULES, cross_nearest_distances, distances_to_references, get_map_rule, half_inputs,
                          interval_bounds, interval_count, interval_mean, interval_mean_excluding_self, mutual_scores,
                          nearest_other_scores, nearest_patch_distances, reference_scores, robust_z_max, view_mean, finest_view, finest_view_index,
                          subtract_image_baseline)


def naive_scores(z: torch.Tensor, fraction: float, skip: float = 0.0) -> torch.Tensor:
    """The official formulation: for each image, cdist to every other image's patches, min, sort, interval mean
    (with `skip`, the sorted distances from floor(skip * (n - 1)) on)."""
    n, l, c = z.shape
    out = torch.empty(n, l, dtype=torch.float64)
    zd = z.double()
    for i in range(n):
        per_image = []
        for j in range(n):
            if j == i:
                continue
            d = torch.cdist(zd[i], zd[j], compute_mode="donot_use_mm_for_euclid_dist")
            per_image.append(d.min(dim=1).values)
        s = torch.stack(per_image, dim=1)  # (l, n-1)
        k = max(1, math.floor(fraction * (n - 1)))
        lo = min(math.floor(skip * (n - 1)), k - 1)
        out[i] = s.sort(dim=1).values[:, lo:k].mean(dim=1)
    return out.float()


def unit(n, l, c, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, l, c, generator=g), dim=-1)


@pytest.mark.parametrize("n", [2, 3, 4, 5, 11])
def test_exact_path_matches_naive(n):
    z = unit(n, 9, 16, seed=n)
    ref = naive_scores(z, 0.3)
    got = mutual_scores(z, 0.3)
    assert not torch.isnan(got).any()
    assert (got - ref).abs().max() <= 1e-5


@pytest.mark.parametrize("block_bytes", [4 * 9 * 9, 4 * 9 * 9 * 4, 4 * 9 * 9 * 9, 4 * 9 * 9 * 49])
def test_blocks_that_do_not_divide_n(block_bytes):
    """Block sides 1, 2, 3, 7 images over N = 11: every remainder case of the pair loop."""
    z = unit(11, 9, 8, seed=1)
    table = nearest_patch_distances(z, block_bytes=block_bytes)
    ref = torch.cdist(z.double().reshape(-1, 8), z.double().reshape(-1, 8)).view(11, 9, 11, 9).amin(3).float()
    idx = torch.arange(11)
    assert torch.isinf(table[idx, :, idx]).all()
    ref[idx, :, idx] = float("inf")
    finite = torch.isfinite(ref)
    assert (table[finite] - ref[finite]).abs().max() <= 1e-5


@pytest.mark.parametrize("budget", [1, 4 * 9 * 11 * 3, 4 * 9 * 11 * 11])
def test_memory_budget_fallback_is_exact(budget):
    """Tiny budgets force the row-block path (blocks of 1, a few, and all images); same numbers."""
    z = unit(11, 9, 8, seed=2)
    ref = naive_scores(z, 0.3)
    got = mutual_scores(z, 0.3, memory_budget=budget)
    assert (got - ref).abs().max() <= 1e-5


@pytest.mark.parametrize("fraction", [0.1, 0.3, 0.5, 1.0])
def test_interval_fraction(fraction):
    z = unit(7, 4, 8, seed=3)
    assert (mutual_scores(z, fraction) - naive_scores(z, fraction)).abs().max() <= 1e-5


def test_interval_count_and_mean():
    assert interval_count(1, 0.3) == 1
    assert interval_count(9, 0.3) == 2
    assert interval_count(10, 0.3) == 3
    assert interval_count(199, 0.3) == 59
    d = torch.tensor([[5.0, 1.0, 3.0, 2.0, 4.0, 9.0, 7.0, 8.0, 6.0, 0.5]])
    assert interval_mean(d, 0.3).item() == pytest.approx((0.5 + 1 + 2) / 3)


def test_interval_skip_bounds():
    assert interval_bounds(99, 0.3) == (0, 29)
    assert interval_bounds(99, 0.3, 0.03) == (2, 29)
    assert interval_bounds(199, 0.3, 0.03) == (5, 59)
    assert interval_bounds(30, 0.3, 0.03) == (0, 9)  # small batches: nothing left out
    assert interval_bounds(9, 0.3, 0.29) == (1, 2)  # one value always stays
    d = torch.tensor([[5.0, 1.0, 3.0, 2.0, 4.0, 9.0, 7.0, 8.0, 6.0, 0.5]])
    assert interval_mean(d, 0.5, 0.2).item() == pytest.approx((2 + 3 + 4) / 3)  # sorted: 0.5 1 | 2 3 4 | 5 ...
    assert interval_mean(d, 0.5, 0.0).item() == interval_mean(d, 0.5).item()


@pytest.mark.parametrize("budget", [None, 1, 4 * 9 * 11 * 3])
@pytest.mark.parametrize("skip", [0.0, 0.1, 0.25])
def test_interval_skip_matches_the_sorted_formulation_on_every_path(budget, skip):
    """The exact table and the row-block fallback both leave out the smallest floor(skip * (N - 1)) distances."""
    z = unit(11, 9, 8, seed=5)
    assert (mutual_scores(z, 0.5, memory_budget=budget, skip=skip) - naive_scores(z, 0.5, skip)).abs().max() <= 1e-5


def test_interval_skip_with_references_counts_them_among_the_scorers():
    z, refs = unit(5, 6, 8, seed=6), unit(4, 6, 8, seed=7)
    table = torch.cat([nearest_patch_distances(z), distances_to_references(z, refs)], dim=-1)  # (5, 6, 5 + 4)
    finite = table.masked_fill(torch.isinf(table), float("nan")).sort(dim=-1).values[..., :8]  # the 8 others, sorted
    lo, hi = interval_bounds(8, 0.5, 0.25)
    expected = finite[..., lo:hi].mean(dim=-1)
    assert (lo, hi) == (2, 4)
    assert torch.allclose(interval_mean_excluding_self(table, 0.5, 0.25), expected)
    assert torch.allclose(mutual_scores(z, 0.5, refs=refs, skip=0.25), expected)


def test_interval_skip_keeps_a_recurring_defect_from_being_scored_down():
    """A defect patch that recurs in 2 of 12 images finds its twin: with the paper's interval (the 3 smallest of 11
    distances) the twin's near-zero distance pulls its score a third down; leaving out the smallest 2 gives it the
    score it has when it occurs once."""
    g = torch.Generator().manual_seed(1)
    n, l, c = 12, 16, 12
    prototypes = F.normalize(torch.randn(4, c, generator=g), dim=-1)
    once = prototypes[torch.randint(0, 4, (n, l), generator=g)] + 0.02 * torch.randn(n, l, c, generator=g)
    defect = -prototypes.sum(0)
    once[3, 5] = defect
    twice = once.clone()
    twice[7, 9] = defect + 0.01 * torch.randn(c, generator=g)
    once, twice = F.normalize(once, dim=-1), F.normalize(twice, dim=-1)
    alone = mutual_scores(once, 0.3)[3, 5]
    assert mutual_scores(twice, 0.3)[3, 5] < 0.75 * alone
    assert mutual_scores(twice, 0.3, skip=0.2)[3, 5] > 0.95 * alone
    normal = torch.ones(n, l, dtype=torch.bool)
    normal[3, 5] = normal[7, 9] = False
    assert mutual_scores(twice, 0.3, skip=0.2)[normal].max() < 1.2 * mutual_scores(twice, 0.3)[normal].max()


def test_planted_patch_scores_highest():
    """Image 3 has one patch that nowhere else occurs: it gets the highest patch score of all."""
    g = torch.Generator().manual_seed(0)
    n, l, c = 8, 16, 12
    prototypes = F.normalize(torch.randn(4, c, generator=g), dim=-1)
    z = prototypes[torch.randint(0, 4, (n, l), generator=g)] + 0.02 * torch.randn(n, l, c, generator=g)
    z[3, 5] = -prototypes.sum(0)
    z = F.normalize(z, dim=-1)
    s = mutual_scores(z, 0.3)
    assert s.argmax().item() == 3 * l + 5
    assert s[3, 5] > 3 * s[torch.arange(n) != 3].max()


def test_needs_two_images():
    with pytest.raises(ValueError, match="at least 2"):
        mutual_scores(unit(1, 4, 4), 0.3)


def test_random_projection_keeps_unit_length_and_approximates_distances():
    from musc.scoring import random_projection

    z = unit(6, 16, 256, seed=5)
    p = random_projection(z, 64, seed=1)
    assert p.shape == (6, 16, 64)
    assert torch.allclose(p.norm(dim=-1), torch.ones(6, 16), atol=1e-5)
    assert torch.equal(random_projection(z, 64, seed=1), p)
    assert random_projection(z, 512) is z
    g = torch.Generator().manual_seed(0)
    protos = F.normalize(torch.randn(6, 256, generator=g), dim=-1)
    z = protos[torch.randint(0, 6, (10, 16), generator=g)] + 0.01 * torch.randn(10, 16, 256, generator=g)
    z[4, 7] = torch.randn(256, generator=g)
    z = F.normalize(z, dim=-1)
    exact, approx = mutual_scores(z, 0.3), mutual_scores(random_projection(z, 64), 0.3)
    assert approx.argmax() == exact.argmax() == 4 * 16 + 7
    assert torch.corrcoef(torch.stack([exact.flatten(), approx.flatten()]))[0, 1] > 0.9


def test_half_precision_products_close_to_float32():
    z = unit(6, 16, 64, seed=6)
    exact = mutual_scores(z, 0.3)
    for dtype, tol in ((torch.bfloat16, 0.05), (torch.float16, 0.01)):
        half = mutual_scores(z, 0.3, matmul_dtype=dtype)
        assert 0 < (half - exact).abs().max() < tol


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_is_float32_products_of_rounded_vectors(dtype):
    """The CPU computes what a float32-accumulating GPU product of half inputs computes: float32 products of the
    rounded vectors; every memory path agrees on it."""
    z = unit(7, 9, 32, seed=8)
    rounded = z.to(dtype).float()
    expected = mutual_scores(rounded, 0.3)
    assert half_inputs(z, dtype).dtype == torch.float32
    assert torch.equal(half_inputs(z, dtype), rounded)
    assert half_inputs(z, None) is z
    for budget in (None, 1, 4 * 9 * 7 * 3):
        assert torch.allclose(mutual_scores(z, 0.3, memory_budget=budget, matmul_dtype=dtype), expected, atol=1e-6)
    refs = unit(3, 9, 32, seed=9)
    assert torch.allclose(distances_to_references(z, refs, matmul_dtype=dtype),
                          distances_to_references(rounded, refs.to(dtype).float()), atol=1e-6)


def test_half_product_returns_float32_of_the_half_inputs():
    from musc.scoring import _matmul_sim

    a, b = unit(1, 5, 16, seed=10)[0].half(), unit(1, 6, 16, seed=11)[0].half()
    out = _matmul_sim(a, b)
    assert out.dtype == torch.float32
    assert torch.equal(out, a.float() @ b.float().T)


def test_default_memory_budget_follows_available_memory(monkeypatch):
    import musc.scoring as scoring

    monkeypatch.setattr(scoring, "_available_memory", lambda: 2 * 2**30)
    assert scoring.default_memory_budget(torch.device("cpu")) == 2**30
    monkeypatch.setattr(scoring, "_available_memory", lambda: None)
    assert 0 < scoring.default_memory_budget(torch.device("cpu")) <= 0.4 * os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def test_z_max_standardises_each_view_over_the_batch_then_keeps_the_largest():
    # view 0: patch values 1, 2, 3, 10 (median 2.5, MAD 0.5); view 1: 0, 0, 0, 4 (median 0, MAD 0 -> scale 1)
    grids = torch.tensor([[1.0, 2.0, 3.0, 10.0], [0.0, 0.0, 0.0, 4.0]]).view(2, 2, 1, 2)  # (V, N, h, w)
    out = robust_z_max(grids)
    # torch's median of an even count is the lower one: 2 for view 0; its absolute deviations 1, 0, 1, 8 -> MAD 1
    z0 = (torch.tensor([1.0, 2.0, 3.0, 10.0]) - 2.0) / (torch.tensor([1.0, 0.0, 1.0, 8.0]).median())
    expected = torch.maximum(z0, torch.tensor([0.0, 0.0, 0.0, 4.0])).view(2, 1, 2)
    assert out.shape == (2, 1, 2) and torch.allclose(out, expected)
    assert torch.equal(view_mean(grids), grids.mean(dim=0))
    constant = robust_z_max(torch.full((3, 4, 2, 2), 0.7))
    assert torch.equal(constant, torch.zeros(4, 2, 2))  # no spread: every view contributes 0


def test_z_max_statistics_span_every_tile_position():
    gen = torch.Generator().manual_seed(0)
    tiles = torch.rand((3, 2, 4, 5, 5), generator=gen)  # (P, V, N, h, w)
    joined = tiles.permute(1, 2, 0, 3, 4).reshape(2, 4, 15, 5)  # the positions side by side in one grid per image
    expected = robust_z_max(joined).view(4, 3, 5, 5).permute(1, 0, 2, 3)
    assert torch.allclose(robust_z_max(tiles), expected)
    assert set(MAP_RULES) == {"mean", "z-max", "finest"} and get_map_rule("z-max") is robust_z_max
    with pytest.raises(ValueError, match="unknown map rule"):
        get_map_rule("median")


def test_finest_keeps_the_smallest_r_whatever_the_order_of_the_views():
    gen = torch.Generator().manual_seed(1)
    grids = torch.rand((3, 4, 5, 5), generator=gen)  # (V, N, h, w)
    assert torch.equal(finest_view(grids, (1, 3, 5)), grids[0])
    assert torch.equal(finest_view(grids, (5, 3, 1)), grids[2])  # --r 5,3,1: the r = 1 view is the last
    assert torch.equal(finest_view(grids[:1], ("snamd",)), grids[0])  # SNAMD's one view
    assert finest_view_index((3, 5, "snamd")) == 0 and finest_view_index(("snamd",)) == 0
    tiles = torch.rand((2, 3, 4, 5, 5), generator=gen)  # (P, V, N, h, w): every tile position keeps its r = 1 view
    assert torch.equal(get_map_rule("finest")(tiles, (3, 1, 5)), tiles[:, 1])
    assert torch.equal(view_mean(grids, (1, 3, 5)), view_mean(grids))  # the other rules ignore the labels


@pytest.mark.parametrize("block_bytes", [None, 1])
def test_cross_nearest_distances_are_both_directions_of_the_brute_force(block_bytes):
    za, zb = unit(3, 6, 8, seed=1), unit(4, 6, 8, seed=2)
    brute = torch.cdist(za.reshape(-1, 8), zb.reshape(-1, 8)).view(3, 6, 4, 6)  # (A, L, B, L)
    ab, ba = cross_nearest_distances(za, zb, block_bytes=block_bytes)
    assert ab.shape == (3, 6, 4) and ba.shape == (4, 6, 3)
    assert torch.allclose(ab, brute.amin(dim=3), atol=1e-5)
    assert torch.allclose(ba, brute.amin(dim=1).permute(1, 2, 0), atol=1e-5)


def test_a_sub_batch_scores_from_its_sub_table():
    """MSM of a batch depends only on the distances between its own images: a sub-batch's scores are the interval
    means over the pooled table's rows and columns of its images (what benchmarks/bench_draws.py relies on)."""
    from musc.scoring import interval_mean_excluding_self

    z = unit(12, 9, 16, seed=3)
    index = torch.tensor([0, 2, 3, 7, 8, 11])
    pooled = nearest_patch_distances(z)
    sub = pooled[index][:, :, index]
    assert torch.isinf(sub[torch.arange(6), :, torch.arange(6)]).all()
    assert torch.allclose(interval_mean_excluding_self(sub, 0.3), mutual_scores(z[index], 0.3), atol=1e-6)
    assert not torch.allclose(interval_mean_excluding_self(pooled, 0.3)[index], mutual_scores(z[index], 0.3), atol=1e-3)


def test_image_baseline_takes_each_views_own_quantile_off_each_image():
    # view 0, image 0: scores 4, 1, 3, 2 -> 0.5 quantile = the 2nd smallest (2); image 1: 10, 30, 20, 40 -> 20
    grids = torch.tensor([[[4.0, 1.0, 3.0, 2.0], [10.0, 30.0, 20.0, 40.0]],
                          [[0.0, 0.0, 0.0, 8.0], [5.0, 6.0, 7.0, 8.0]]]).view(2, 2, 2, 2)  # (V, N, h, w)
    out = subtract_image_baseline(grids, 0.5)
    level = torch.tensor([[2.0, 20.0], [0.0, 6.0]]).view(2, 2, 1, 1)
    assert torch.equal(out, grids - level)
    assert torch.equal(subtract_image_baseline(grids, 0.9)[0, 0], grids[0, 0] - 4.0)  # ceil(0.9 x 4) = 4th: the max
    gen = torch.Generator().manual_seed(2)
    grids = torch.rand((3, 4, 5, 5), generator=gen)
    shifted = grids + torch.rand((3, 4, 1, 1), generator=gen) * 5  # a level per view and image
    assert torch.allclose(subtract_image_baseline(shifted, 0.75), subtract_image_baseline(grids, 0.75), atol=1e-6)


def test_image_baseline_pools_every_tile_position_of_an_image():
    gen = torch.Generator().manual_seed(3)
    tiles = torch.rand((3, 2, 4, 5, 5), generator=gen)  # (P, V, N, h, w)
    joined = tiles.permute(1, 2, 0, 3, 4).reshape(2, 4, 15, 5)  # the positions side by side in one grid per image
    expected = subtract_image_baseline(joined, 0.6).view(2, 4, 3, 5, 5).permute(2, 0, 1, 3, 4)
    assert torch.allclose(subtract_image_baseline(tiles, 0.6), expected)


@pytest.mark.parametrize("budget", [None, 4 * 3 * 16 * 7])  # the table, or rows of images against all others
def test_each_image_against_the_others_is_musc_plus_with_the_others_as_references(budget):
    z = unit(7, 16, 8, seed=3)
    held_out = nearest_other_scores(z, 0.3, budget, skip=0.05)  # the interval and skip do not apply
    for i in range(7):
        others = torch.cat([z[:i], z[i + 1:]])
        torch.testing.assert_close(held_out[i:i + 1], reference_scores(z[i:i + 1], others), atol=1e-6, rtol=0)
    torch.testing.assert_close(held_out, naive_scores(z, 1e-9), atol=1e-5, rtol=0)  # the nearest of the N - 1
