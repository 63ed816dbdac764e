import pytest
import torch
import torch.nn.functional as F

from musc.aggregation import layer_norm_map, lnamd, lnamd_iter, neighbourhood_mean


def unfold_mean(x: torch.Tensor, r: int) -> torch.Tensor:
    """Explicit reference: gather each r x r zero-padded neighbourhood and average all r*r entries."""
    n, c, h, w = x.shape
    cols = F.unfold(x, kernel_size=r, padding=r // 2)  # (n, c*r*r, h*w)
    return cols.view(n, c, r * r, h * w).mean(dim=2).view(n, c, h, w)


@pytest.mark.parametrize("r", [1, 3, 5, 7])
def test_neighbourhood_mean_equals_unfold_and_mean(r):
    x = torch.randn(3, 8, 6, 7)
    assert torch.allclose(neighbourhood_mean(x, r), unfold_mean(x, r), atol=1e-6)


def test_layer_norm_over_whole_map():
    x = torch.randn(2, 5, 4, 4) * 3 + 7
    y = layer_norm_map(x)
    flat = y.flatten(1)
    assert torch.allclose(flat.mean(1), torch.zeros(2), atol=1e-5)
    assert torch.allclose(flat.var(1, unbiased=False), torch.ones(2), atol=1e-3)
    ref = (x - x.mean(dim=(1, 2, 3), keepdim=True)) / torch.sqrt(x.var(dim=(1, 2, 3), unbiased=False, keepdim=True) + 1e-5)
    assert torch.allclose(y, ref, atol=1e-5)


def test_lnamd_matches_explicit_reference_and_is_unit_length():
    x = torch.randn(4, 16, 5, 5)
    outs = lnamd(x, (1, 3, 5))
    for r, z in zip((1, 3, 5), outs):
        assert z.shape == (4, 25, 16)
        ref = unfold_mean(layer_norm_map(x), r).flatten(2).transpose(1, 2)
        ref = ref / ref.norm(dim=-1, keepdim=True)
        assert torch.allclose(z, ref, atol=1e-5)
        assert torch.allclose(z.norm(dim=-1), torch.ones(4, 25), atol=1e-5)


@pytest.mark.parametrize("chunk_bytes", [1, 4 * 16 * 25 * 3])
def test_chunked_aggregation_matches_whole_batch(chunk_bytes):
    """Images are aggregated a chunk at a time (1 image, 3 images with a short last chunk); same vectors."""
    x = torch.randn(7, 16, 5, 5, dtype=torch.float16)
    whole = [F.normalize(neighbourhood_mean(layer_norm_map(x.float()), r).flatten(2).transpose(1, 2), dim=-1)
             for r in (1, 3, 5)]
    for got, ref in zip(lnamd_iter(x, (1, 3, 5), chunk_bytes=chunk_bytes), whole):
        assert got.dtype == torch.float32
        assert torch.allclose(got, ref, atol=1e-6)


def test_r1_is_identity_before_normalisation():
    x = torch.randn(2, 3, 4, 4)
    assert torch.equal(neighbourhood_mean(x, 1), x)


@pytest.mark.parametrize("r", [0, 2, -1])
def test_bad_degree_rejected(r):
    with pytest.raises(ValueError, match="odd"):
        neighbourhood_mean(torch.zeros(1, 1, 3, 3), r)


# SNAMD (MuSc-V2): checked against a direct transcription of its formulas, loop by loop

from musc.aggregation import similarity_weighted_mean, snamd_iter  # noqa: E402


def snamd_reference(tokens, r_values):
    """For each image, patch (y, x) and r: weights exp(-||f(q) - f(p)||) over the r x r window around p (a
    position outside the map holds the zero vector), the weighted mean; then the mean over r; (N, C, H, W)."""
    n, c, h, w = tokens.shape
    out = torch.zeros_like(tokens)
    for i in range(n):
        for y in range(h):
            for x in range(w):
                centre = tokens[i, :, y, x]
                acc = torch.zeros(c)
                for r in r_values:
                    num, den = torch.zeros(c), 0.0
                    for dy in range(-(r // 2), r // 2 + 1):
                        for dx in range(-(r // 2), r // 2 + 1):
                            yy, xx = y + dy, x + dx
                            f = tokens[i, :, yy, xx] if 0 <= yy < h and 0 <= xx < w else torch.zeros(c)
                            wt = torch.exp(-(f - centre).norm())
                            num += wt * f
                            den += wt
                    acc += num / den
                out[i, :, y, x] = acc / len(r_values)
    return out


@pytest.mark.parametrize("r_values", [(1, 3, 5), (3,), (1, 5)])
def test_snamd_matches_its_transcription_borders_included(r_values):
    tokens = torch.randn(2, 6, 5, 4)
    expected = snamd_reference(tokens, r_values)
    got = similarity_weighted_mean(tokens, r_values)
    assert torch.allclose(got, expected.flatten(2), atol=1e-5)
    z = next(snamd_iter(tokens, r_values, chunk_bytes=1))  # one image per chunk
    assert z.shape == (2, 20, 6)
    assert torch.allclose(z, torch.nn.functional.normalize(expected.flatten(2).transpose(1, 2), dim=-1), atol=1e-5)


def test_snamd_keeps_each_patch_own_token_when_tokens_are_far_apart():
    """exp(-distance) is not scale-free: at the distances of DINO taps (tens; BENCHMARKS.md, SNAMD's neighbour
    weights) every neighbour's weight vanishes and SNAMD returns each patch's own unit token."""
    tokens = torch.randn(1, 8, 5, 5)
    own = torch.nn.functional.normalize(tokens.flatten(2).transpose(1, 2), dim=-1)
    assert torch.allclose(next(snamd_iter(tokens * 100, (1, 3, 5))), own, atol=1e-6)
    assert (next(snamd_iter(tokens, (1, 3, 5))) - own).abs().max() > 0.05  # at unit scale the neighbours count


def test_snamd_of_tokens_close_together_is_the_plain_window_mean():
    tokens = torch.randn(1, 8, 5, 5)
    plain = sum(neighbourhood_mean(tokens, r) for r in (1, 3, 5)).flatten(2).transpose(1, 2)
    got = next(snamd_iter(tokens * 1e-4, (1, 3, 5)))
    assert torch.allclose(got, torch.nn.functional.normalize(plain, dim=-1), atol=1e-3)


def test_snamd_r1_is_the_normalised_token():
    tokens = torch.randn(1, 4, 3, 3)
    z = next(snamd_iter(tokens, (1,)))
    assert torch.allclose(z, torch.nn.functional.normalize(tokens.flatten(2).transpose(1, 2), dim=-1), atol=1e-6)
