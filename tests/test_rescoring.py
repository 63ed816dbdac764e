import numpy as np
import pytest

from musc.rescoring import (IMAGE_SCORES, cosine_similarity, finest_max, get_image_score, knn_smoothing, minmax,
                            robust_z, rscin, scale_max, top_mean, z_blend)


def test_hand_worked_example():
    # Three images: 0 and 1 alike (cos 0.8), 2 apart (cos 0 with both). Raw scores 1, 3, 5 -> min-max 0, 0.5, 1.
    emb = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]])
    emb[2] = [0.6, -0.8]  # cos(0,2) = 0.6, cos(1,2) = 0.48 - 0.48 = 0
    scores = np.array([1.0, 3.0, 5.0])
    # k = 1: each row keeps only itself -> (0, 0.5, 1).
    # k = 2: row0 keeps self (1) and img1 (0.8): (1*0 + 0.8*0.5) / 1.8 = 0.2222...
    #        row1 keeps self (1) and img0 (0.8): (0.8*0 + 1*0.5) / 1.8 = 0.2777...
    #        row2 keeps self (1) and img0 (0.6): (0.6*0 + 1*1) / 1.6 = 0.625
    k2 = np.array([0.4 / 1.8, 0.5 / 1.8, 1 / 1.6])
    np.testing.assert_allclose(knn_smoothing(minmax(scores), emb @ emb.T, 2), k2)
    np.testing.assert_allclose(rscin(scores, emb, (1, 2)), (np.array([0, 0.5, 1.0]) + k2) / 2)


def test_window_one_is_minmax_and_no_windows():
    s = np.array([2.0, 4.0, 3.0])
    e = np.random.default_rng(0).normal(size=(3, 5))
    np.testing.assert_allclose(rscin(s, e, (1,)), [0, 1, 0.5])
    np.testing.assert_allclose(rscin(s, e, ()), [0, 1, 0.5])


def test_constant_scores_and_large_window():
    e = np.random.default_rng(1).normal(size=(4, 3))
    assert np.all(rscin(np.ones(4), e, (1, 2, 3)) == 0)
    out = rscin(np.array([0.0, 1, 2, 3]), e, (10,))
    assert out.shape == (4,) and np.all(np.isfinite(out))


def test_cosine_similarity_ignores_length_and_keeps_a_zero_row_finite():
    emb = np.array([[3.0, 4.0], [0.6, 0.8], [4.0, -3.0], [0.0, 0.0]])
    s = cosine_similarity(emb)
    np.testing.assert_allclose(s[:3, :3], [[1, 1, 0], [1, 1, 0], [0, 0, 1]], atol=1e-12)
    np.testing.assert_array_equal(s[3], 0.0)
    # RsCIN sees the same similarities whatever the embeddings' lengths
    scores = np.array([1.0, 2.0, 5.0, 3.0])
    rescaled = emb * [[2.0], [7.0], [0.5], [1.0]]
    np.testing.assert_allclose(rscin(scores, emb, (1, 2, 3)), rscin(scores, rescaled, (1, 2, 3)))


def test_bad_shapes():
    with pytest.raises(ValueError, match="shape"):
        rscin(np.zeros(3), np.zeros((4, 2)))
    with pytest.raises(ValueError, match="1-D"):
        rscin(np.zeros((3, 1)), np.zeros((3, 2)))


def test_scale_max_takes_each_images_strongest_scaled_view():
    # Two views over four images. View 0 spans 1..5, view 1 spans 0.2..0.4: scaled, image 3 is view 1's strongest.
    views = np.array([[1.0, 5.0, 2.0, 1.0],
                      [0.2, 0.3, 0.2, 0.4]])
    expected = np.max([[0, 1, 0.25, 0], [0, 0.5, 0, 1]], axis=0)
    np.testing.assert_allclose(scale_max(views.mean(axis=0), views), expected)
    assert list(np.argsort(-scale_max(views.mean(axis=0), views), kind="stable")) == [1, 3, 2, 0]


def test_scale_max_with_one_view_ranks_as_the_map_maximum_and_one_image_is_its_map_maximum():
    maxima = np.array([0.3, 0.9, 0.5])
    np.testing.assert_allclose(scale_max(maxima, maxima[None]), minmax(maxima))
    np.testing.assert_allclose(get_image_score("max").run(maxima, maxima[None], 0), maxima)
    np.testing.assert_allclose(scale_max(np.array([0.7]), np.array([[0.7], [0.2]])), [0.7])  # nothing to scale
    with pytest.raises(ValueError, match="shape"):
        scale_max(maxima, np.zeros((2, 4)))
    with pytest.raises(ValueError, match="unknown image score"):
        get_image_score("mean")
    assert not IMAGE_SCORES["max"].uses_views and IMAGE_SCORES["scale-max"].uses_views


def test_finest_max_is_the_finest_views_map_maximum_unscaled():
    # Three views (rows) over four images; the finest is row 2 (the engines pass its index, not its position).
    views = np.array([[0.5, 0.9, 0.4, 0.6],
                      [0.7, 0.2, 0.3, 0.1],
                      [0.35, 0.3, 0.8, 0.45]])
    score = get_image_score("finest-max")
    assert score.uses_views
    np.testing.assert_allclose(score.run(views.mean(axis=0), views, 2), views[2])  # not min-max scaled
    np.testing.assert_allclose(finest_max(views.mean(axis=0), views, 0), views[0])
    np.testing.assert_allclose(score.run(np.array([0.7]), np.array([[0.7], [0.2]]), 1), [0.2])  # one image
    np.testing.assert_allclose(get_image_score("scale-max").run(views.mean(axis=0), views, 2),
                               scale_max(views.mean(axis=0), views))  # the other rules ignore the index
    for bad_views, finest in ((np.zeros((3, 5)), 0), (views, 3), (views[0], 0)):
        with pytest.raises(ValueError, match="view maxima"):
            finest_max(views.mean(axis=0), bad_views, finest)


def test_robust_z_scales_by_the_typical_spread_not_the_outliers():
    # Median 2, absolute deviations 1, 0, 1, 1, 98 -> MAD 1: the outlier 100 does not widen the scale.
    values = np.array([1.0, 2.0, 3.0, 1.0, 100.0])
    np.testing.assert_allclose(robust_z(values), (values - 2.0) / 1.4826)
    np.testing.assert_allclose(robust_z(values * 10 + 7), robust_z(values))  # units and offset do not matter
    tied = np.array([1.0, 1.0, 1.0, 5.0])  # MAD 0: the standard deviation scales
    np.testing.assert_allclose(robust_z(tied), (tied - 1.0) / tied.std())
    np.testing.assert_array_equal(robust_z(np.full(4, 0.3)), np.zeros(4))


def test_z_blend_averages_the_finest_views_z_with_the_mean_z_of_all_views():
    views = np.array([[0.5, 0.9, 0.4, 0.6, 0.5],
                      [0.7, 0.2, 0.3, 0.1, 0.3],
                      [0.35, 0.3, 0.8, 0.45, 0.4]])
    z = np.stack([robust_z(row) for row in views])
    for finest in (0, 2):  # the finest view's row is passed by index
        expected = 0.5 * z[finest] + 0.5 * z.mean(axis=0)
        np.testing.assert_allclose(z_blend(views.mean(axis=0), views, finest), expected)
        np.testing.assert_allclose(get_image_score("z-blend").run(views.mean(axis=0), views, finest), expected)
    # with three views the finest weighs 2/3 and each other view 1/6
    np.testing.assert_allclose(z_blend(views.mean(axis=0), views, 0), (4 * z[0] + z[1] + z[2]) / 6)
    # each view's units and offset do not matter: its maxima are z-scored over the batch first
    rescaled = views * np.array([[10.0], [0.1], [3.0]]) + np.array([[1.0], [-2.0], [0.5]])
    np.testing.assert_allclose(z_blend(rescaled.mean(axis=0), rescaled, 1), z_blend(views.mean(axis=0), views, 1))
    assert IMAGE_SCORES["z-blend"].uses_views


def test_z_blend_ranks_a_small_defect_seen_at_r1_and_a_wide_one_seen_by_every_view_above_normal_images():
    rng = np.random.default_rng(0)
    views = rng.normal(1.0, 0.05, size=(3, 40))  # normal images: the same spread in every view
    views[0, 5] += 0.6  # a small defect: strong at the finest view alone
    views[:, 9] += 0.25  # a wide defect: moderately raised in every view
    order = np.argsort(-z_blend(views.mean(axis=0), views, 0))
    assert set(order[:2]) == {5, 9}


def test_z_blend_with_one_image_or_one_view():
    np.testing.assert_allclose(z_blend(np.array([0.7]), np.array([[0.7], [0.2]]), 0), [0.7])  # nothing to scale
    maxima = np.array([0.3, 0.9, 0.5, 0.4])
    np.testing.assert_allclose(z_blend(maxima, maxima[None], 0), robust_z(maxima))
    for bad_views, finest in ((np.zeros((3, 5)), 0), (maxima[None], 1), (maxima, 0)):
        with pytest.raises(ValueError, match="view maxima"):
            z_blend(maxima, bad_views, finest)


def test_the_configs_image_score_names_are_the_registrys():
    from musc import config

    assert tuple(config.IMAGE_SCORES) == tuple(IMAGE_SCORES)


def test_top_mean_averages_the_strongest_patches_area():
    import torch

    values = torch.tensor([[5.0, 1.0, 3.0, 2.0, 4.0, 0.0], [0.0, 0.0, 0.0, 0.0, 0.0, 9.0]])
    np.testing.assert_allclose(top_mean(values, 1.0).numpy(), [4.0, 3.0])  # 3 patches of one value each
    np.testing.assert_allclose(top_mean(values, 0.5).numpy(), [4.5, 4.5])  # a patch is half a value: 2 values
    np.testing.assert_allclose(top_mean(values, 10.0).numpy(), values.mean(dim=1).numpy())  # at most every value
    np.testing.assert_allclose(top_mean(values, 0.01).numpy(), [5.0, 9.0])  # at least one: the maximum
    grid = torch.rand(2, 4, 10)  # (V, N, P): reduced over the last axis alone
    assert top_mean(grid, 1.0).shape == (2, 4)
    assert IMAGE_SCORES["finest-top3"].uses_views and IMAGE_SCORES["finest-max"].reduce is not top_mean


def test_top3_level_takes_half_the_images_level_off_its_strongest_region():
    import torch

    from musc.rescoring import LEVEL_SHARE, top_mean_less_level

    values = torch.arange(1.0, 11.0).repeat(2, 1)  # 1..10: 0.9 quantile (the 9th of 10, lower) 9, top-3 mean 9
    values[1] += 4.0  # the same image standing 4 higher everywhere
    np.testing.assert_allclose(top_mean_less_level(values, 1.0).numpy(), [9 - LEVEL_SHARE * 9, 13 - LEVEL_SHARE * 13])
    flat = torch.rand(4, 3000)
    expected = top_mean(flat, 2.0) - LEVEL_SHARE * torch.quantile(flat, 0.9, dim=-1, interpolation="lower")
    np.testing.assert_allclose(IMAGE_SCORES["finest-top3-level"].reduce(flat, 2.0).numpy(), expected.numpy(),
                               atol=1e-6)
    assert IMAGE_SCORES["finest-top3-level"].uses_views


def test_top3_level_ranks_a_small_defect_above_a_whole_image_standing_higher():
    """A normal image whose whole map stands high (lighting) outranks a small defect on `finest-top3`, not on
    `finest-top3-level`: half its level is taken off, and the defect's image keeps the normal level."""
    import torch

    rng = np.random.default_rng(0)
    maps = torch.from_numpy(rng.normal(0.3, 0.01, size=(6, 32, 32)))
    maps[0] += 0.5  # lit: every patch 0.5 higher, the batch's strongest region
    maps[1, 8:10, 8:10] = 0.75  # a defect of four patches
    flat = maps.flatten(1)
    maxima = flat.amax(dim=1).numpy()
    top3, level = (get_image_score(name).run(maxima, IMAGE_SCORES[name].reduce(flat, 1.0).numpy()[None], 0)
                   for name in ("finest-top3", "finest-top3-level"))
    assert np.argmax(top3) == 0 and np.argmax(level) == 1


def test_finest_top3_ranks_a_defect_of_a_few_patches_above_a_higher_single_patch_of_noise():
    import torch

    rng = np.random.default_rng(0)
    maps = torch.from_numpy(rng.normal(0.3, 0.01, size=(6, 16, 16)))
    maps[0, 4, 4] = 0.9  # one patch of noise, the batch's highest value
    maps[1, 8:10, 8:10] = 0.7  # a defect of four patches
    flat = maps.flatten(1)
    values = IMAGE_SCORES["finest-top3"].reduce(flat, 1.0).numpy()[None]
    maxima = flat.amax(dim=1).numpy()
    score = get_image_score("finest-top3").run(maxima, values, 0)
    assert np.argmax(score) == 1 and np.argmax(maxima) == 0
