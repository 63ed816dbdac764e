import math
import os

import pytest
import torch
import torch.nn.functional as F

from musc.scoring import (MAP_RULES, cross_nearest_distances, distances_to_references, get_map_rule, half_inputs,
                          interval_count, interval_mean, mutual_scores, nearest_patch_distances, robust_z_max,
                          view_mean)


def naive_scores(z: torch.Tensor, fraction: float) -> torch.Tensor:
    """The official formulation: for each image, cdist to every other image's patches, min, sort, interval mean."""
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
        out[i] = s.sort(dim=1).values[:, :k].mean(dim=1)
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
    assert set(MAP_RULES) == {"mean", "z-max"} and get_map_rule("z-max") is robust_z_max
    with pytest.raises(ValueError, match="unknown map rule"):
        get_map_rule("median")


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
