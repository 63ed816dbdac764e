import numpy as np
import pytest
from scipy import ndimage

from musc.decision import (PIXEL_METHODS, decide_images, fit_gmm, grown_masks, half_peak_masks, mebin_threshold,
                           pixel_masks, threshold_otsu)
from musc.errors import ConfigError, InputError


def batch(n_normal=95, n_defect=5, seed=0):
    rng = np.random.default_rng(seed)
    return np.r_[rng.normal(0.3, 0.05, n_normal), rng.normal(0.9, 0.05, n_defect)]


@pytest.mark.parametrize("method", ["mad", "gmm", "otsu"])
def test_mostly_normal_batch_flags_the_defects(method):
    scores = batch()
    d = decide_images(scores, method)
    assert d.defective[-5:].all() and d.count == 5
    assert d.warnings == []
    assert d.method == method and np.isfinite(d.threshold)


def test_all_normal_batch_flags_few_or_none():
    scores = np.random.default_rng(1).normal(0.3, 0.05, 200)
    assert decide_images(scores, "mad").count <= 4
    assert decide_images(scores, "gmm").count <= 4


def test_mostly_defective_batch_says_its_assumption_fails():
    rng = np.random.default_rng(2)
    scores = np.r_[rng.normal(0.2, 0.03, 20), rng.normal(0.8, 0.08, 80)]
    for method in ("mad", "gmm", "otsu"):
        d = decide_images(scores, method)
        assert any("mostly normal" in w or "most of the batch may be defective" in w for w in d.warnings), method


def test_rate_and_fixed_overrides():
    scores = np.arange(10, dtype=float)
    d = decide_images(scores, "rate", rate=0.2)
    assert d.defective.tolist() == [False] * 8 + [True] * 2
    assert decide_images(scores, "rate", rate=0.0).count == 0
    assert decide_images(scores, "fixed", threshold=6.5).count == 3
    with pytest.raises(ConfigError, match="rate"):
        decide_images(scores, "rate", rate=1.5)
    with pytest.raises(ConfigError, match="threshold"):
        decide_images(scores, "fixed")
    with pytest.raises(ConfigError, match="one of"):
        decide_images(scores, "magic")
    with pytest.raises(ConfigError, match="at least 2"):
        decide_images([0.5], "mad")


def test_gmm_recovers_two_groups():
    w, mu, sd = fit_gmm(batch(70, 30))
    assert abs(w[1] - 0.3) < 0.05 and abs(mu[0] - 0.3) < 0.03 and abs(mu[1] - 0.9) < 0.03


def test_otsu_splits_bimodal():
    t, _ = threshold_otsu(batch(50, 50))
    assert 0.4 < t < 0.8


def test_mebin_finds_the_blob():
    amap = np.random.default_rng(0).random((32, 32)) * 0.2
    amap[10:16, 10:16] += np.linspace(0.5, 1.0, 36).reshape(6, 6)
    t = mebin_threshold(amap)
    mask = amap > t
    assert mask[10:16, 10:16].mean() > 0.5 and mask.sum() <= 40


def test_half_peak_marks_the_region_above_half_its_height():
    maps = np.full((3, 16, 16), 0.2)
    maps[:, 0, 0] = 0.3  # a weaker peak elsewhere
    maps[1, 4:10, 4:10] = 0.6  # a plateau ...
    maps[1, 6:8, 6:8] = 0.85  # ... with a summit: half-way from the floor, 0.25, to 0.85 is 0.55
    maps[2, 0, 0] = 0.2
    maps[2, 2, 2] = 0.22  # flagged, but its peak is below the floor: its peak alone is marked
    flagged = np.array([False, True, True])
    masks, info = half_peak_masks(maps, flagged, floor=0.25)
    assert not masks[0].any()
    expected = np.zeros((16, 16), bool)
    expected[4:10, 4:10] = True
    assert np.array_equal(masks[1], expected)
    assert np.array_equal(np.argwhere(masks[2]), [[2, 2]])
    assert info["method"] == "half-peak" and info["fraction"] == 0.5 and info["floor"] == 0.25
    assert info["thresholds"] == pytest.approx({1: 0.55, 2: 0.22})
    assert half_peak_masks(maps, flagged, floor=0.25, fraction=0.9)[0][1].sum() == 4  # only the summit


def plateau_batch(seed=0):
    """Twelve 64 x 64 maps of 4-pixel patches at ~0.2. Image 0 holds a wide defect: a 32 x 32 plateau of patches at
    0.4 with one in eight at 0.7 (what r = 1 tiled maps show of a wide break); image 1 a thin one: a one-pixel line
    at 0.9, 44 pixels long."""
    rng = np.random.default_rng(seed)
    maps = rng.normal(0.2, 0.005, (12, 64, 64))
    high = rng.random((8, 8)) < 1 / 8
    high[0, 0] = True
    maps[0, 16:48, 16:48] = np.kron(np.where(high, 0.7, 0.4), np.ones((4, 4)))
    maps[1, 10:54, 30] = 0.9
    return maps


def test_grown_marks_a_whole_plateau_where_half_peak_marks_its_top():
    maps = plateau_batch()
    flagged = np.zeros(12, bool)
    flagged[:2] = True
    plateau = np.zeros((64, 64), bool)
    plateau[16:48, 16:48] = True
    half, _ = half_peak_masks(maps, flagged, floor=float(np.median(maps.reshape(12, -1).max(1))))
    assert half[0][plateau].mean() < 0.3  # the high patches alone
    masks, info = grown_masks(maps, flagged, patch=4)
    assert masks[0][plateau].mean() > 0.95
    near = np.zeros((64, 64), bool)
    near[16 - 8:48 + 8, 16 - 8:48 + 8] = True  # within the smoothing width (2 patches, 8 pixels) of it
    assert not (masks[0] & ~near).any()
    line = np.zeros((64, 64), bool)
    line[10:54, 30] = True
    assert masks[1][line].all()  # the thin defect: the line, and no wider than the smoothing box around it
    columns = np.flatnonzero(masks[1].any(axis=0))
    assert columns.min() >= 30 - 8 and columns.max() <= 30 + 8
    assert not masks[2:].any()  # unflagged images get none
    smoothed_maxima = [float(np.max(ndimage.uniform_filter(m, 8, mode="nearest"))) for m in maps]
    assert info["method"] == "grown" and info["smoothing"] == 8 and info["fraction"] == 0.5
    assert info["floor"] == pytest.approx(np.median(smoothed_maxima))  # the batch's median smoothed maximum
    assert grown_masks(maps, flagged, patch=4, patches=1)[1]["smoothing"] == 4


def test_grown_keeps_the_seed_where_the_whole_image_stands_high():
    maps = plateau_batch()
    maps[2] += 0.15  # a flagged normal image whose whole surface stands above what the others reach
    maps[2, 40:48, 8:16] = 0.9  # and its peak: one 2 x 2-patch spot
    flagged = np.zeros(12, bool)
    flagged[:3] = True
    unlimited, info = grown_masks(maps, flagged, patch=4, max_share=1.0)
    assert unlimited[2].all() and info["not_grown"] == []  # grown through the whole image
    masks, info = grown_masks(maps, flagged, patch=4)
    spot = np.zeros((64, 64), bool)
    spot[40 - 8:48 + 8, 8 - 8:16 + 8] = True  # the spot, within the smoothing width (2 patches, 8 pixels)
    assert masks[2, 42:46, 10:14].all() and not (masks[2] & ~spot).any()  # its seed: the spot (its middle) alone
    assert info["not_grown"] == [2] and info["max_share"] == 0.5
    np.testing.assert_array_equal(masks[:2], unlimited[:2])  # the plateau and the line (under half) still grown
    assert grown_masks(maps, flagged, patch=4, max_share=0.01)[1]["not_grown"] == [0, 1, 2]


def test_grown_keeps_each_flagged_peak_and_needs_the_patch_size():
    maps = plateau_batch(1)
    flagged = np.zeros(12, bool)
    flagged[5] = True  # a normal map, below the floor set by the others: its peak alone
    masks, info = grown_masks(maps, flagged, patch=4, floor=1.0)
    assert info["floor"] == 1.0 and masks[5].any() and masks[5].flat[int(np.argmax(maps[5]))]
    assert masks.reshape(12, -1).any(axis=1).tolist() == flagged.tolist()
    for patch in (None, 0):
        with pytest.raises(InputError, match="size of one patch"):
            grown_masks(maps, flagged, patch=patch)
    with pytest.raises(InputError, match="size of one patch"):
        pixel_masks(maps, maps.reshape(12, -1).max(1), decide_images(maps.reshape(12, -1).max(1), "mad"), "grown")


@pytest.mark.parametrize("method", PIXEL_METHODS)
def test_pixel_masks_only_on_flagged_images(method):
    rng = np.random.default_rng(3)
    maps = rng.random((20, 16, 16)) * 0.3
    maps[-2:, 4:8, 4:8] += 0.7
    raw = maps.reshape(20, -1).max(1)
    d = decide_images(raw, "mad")
    masks, info = pixel_masks(maps, raw, d, method, patch=1)
    assert info["method"] == method
    assert not masks[:-2].any()
    assert masks[-2:, 4:8, 4:8].mean() > 0.5
    masks, info = pixel_masks(maps, raw, d, method, threshold=0.5, patch=1)
    assert info == {"method": "fixed", "threshold": 0.5} and masks[-2:, 4:8, 4:8].all()


# fdr: synthetic maps with a known null (normal images' peaks ~ Normal(0.30, 0.02)) and planted regions

from musc.decision import (MAP_METHODS, UPPER_MAJORITY, balanced_count, benjamini_hochberg, decide,  # noqa: E402
                           decide_fdr, decide_from_maps, estimate_defect_rate, estimate_null, estimated_f1_cut,
                           fit_null, shorth_location)
from musc.metrics import f1_max  # noqa: E402


def synthetic_maps(n_normal, n_defect, seed=0, size=16, planted=0.55):
    """Background ~0.2; every image has one peak pixel, Normal(0.30, 0.02) (the null); defects add a 3x3
    region at Normal(planted, 0.03) at a random place. Returns maps (N, size, size), labels, truth masks."""
    rng = np.random.default_rng(seed)
    n = n_normal + n_defect
    maps = rng.normal(0.2, 0.01, (n, size, size))
    maps[np.arange(n), rng.integers(0, size, n), rng.integers(0, size, n)] = rng.normal(0.30, 0.02, n)
    labels = np.r_[np.zeros(n_normal, bool), np.ones(n_defect, bool)]
    truth = np.zeros(maps.shape, bool)
    for i in np.flatnonzero(labels):
        y, x = rng.integers(1, size - 4, 2)
        maps[i, y:y + 3, x:x + 3] = rng.normal(planted, 0.03, (3, 3))
        truth[i, y:y + 3, x:x + 3] = True
    order = rng.permutation(n)
    return maps[order], labels[order], truth[order]


def test_fdr_controls_the_false_discovery_rate():
    fdps, powers = [], []
    for seed in range(40):  # defects close to the null so that some false discoveries happen
        maps, labels, _ = synthetic_maps(180, 20, seed, planted=0.36)
        d, _, _ = decide_fdr(maps, fdr=0.1)
        flagged = d.defective
        fdps.append((flagged & ~labels).sum() / max(1, flagged.sum()))
        powers.append((flagged & labels).sum() / labels.sum())
    assert np.mean(fdps) <= 0.1 + 0.03  # the promise, on average over batches
    assert np.mean(powers) > 0.5


def test_fdr_finds_planted_regions_and_masks_match_decisions():
    maps, labels, truth = synthetic_maps(90, 10, seed=1)
    decided = decide(np.zeros(len(maps)), maps, "fdr")
    d, masks = decided.image, decided.masks
    assert d.method == "fdr" and not d.undecided and d.on == "map_max"
    assert d.defective[labels].all() and (d.defective & ~labels).sum() <= 3  # FDR 5 %: a few false ones may be
    assert np.array_equal(masks.reshape(len(maps), -1).any(axis=1), d.defective)  # flagged <=> non-empty mask
    assert masks[truth].mean() > 0.5 and not masks[~d.defective].any()
    assert (masks[labels] & ~truth[labels]).sum() <= 0.2 * masks[labels].sum()
    assert d.rate is not None and d.rate.low <= 0.1 <= d.rate.high and abs(d.rate.estimate - 0.1) <= 0.1


def test_fdr_all_normal_batch_flags_at_most_a_few():
    flagged = [decide_fdr(synthetic_maps(100, 0, seed)[0])[0].count for seed in range(10)]
    assert np.mean(flagged) <= 5
    rate = estimate_defect_rate(synthetic_maps(100, 0, 3)[0].reshape(100, -1).max(1))
    assert rate.low <= 0.0 + 1e-9 or rate.estimate <= 0.1


@pytest.mark.parametrize("method", ["balanced", "fdr"])
def test_map_methods_say_when_they_cannot_decide(method):
    maps, _, _ = synthetic_maps(2, 1)
    d, masks, pixel = decide_from_maps(maps, method)
    assert d.undecided and d.count == 0 and not masks.any() and "too few" in d.warnings[0]
    assert pixel == {"method": "half-peak", "threshold": None}  # the pixel rule, which drew no mask
    assert d.labels() == ["undecided"] * 3
    maps, _, _ = synthetic_maps(20, 80, seed=2)  # most of the batch defective: the main peak is not normal
    d, masks, _ = decide_from_maps(maps, method)
    assert d.undecided and d.count == 0 and not masks.any()
    assert "does not look mostly normal" in d.warnings[0]
    with pytest.raises(ConfigError, match="--fdr"):
        decide_from_maps(maps, method, fdr=1.5)
    with pytest.raises(ConfigError, match="map-based"):
        decide_from_maps(maps, "gmm")


def maps_with_maxima(evidence, size=8):
    """Maps (N, size, size) at 0.1 whose single peak pixel is each image's evidence."""
    maps = np.full((len(evidence), size, size), 0.1)
    maps[:, size // 2, size // 2] = evidence
    return maps


@pytest.mark.parametrize("seed", [1, 3, 10, 21])
def test_a_right_skewed_normal_peak_split_by_a_two_group_fit_is_still_decided(seed):
    # normal maxima: a tight peak and a long right tail (as on tiled KolektorSDD maps); 25 of 200 defective, overlapping
    rng = np.random.default_rng(seed)
    evidence = np.r_[rng.normal(0.32, 0.02, 80), 0.33 + np.abs(rng.normal(0, 0.08, 95)), rng.normal(0.47, 0.06, 25)]
    w, mu, sd = fit_gmm(evidence)
    assert 0.5 < w[1] < UPPER_MAJORITY and abs(mu[1] - mu[0]) > 2 * min(sd)  # the upper group: just over half
    d, masks, _ = decide_from_maps(maps_with_maxima(evidence), "balanced")
    assert not d.undecided and d.rate.estimate < 0.5
    assert d.defective[-25:].sum() >= 15 and np.array_equal(masks.reshape(200, -1).any(axis=1), d.defective)


def test_balanced_warns_when_the_rate_interval_reaches_one_half():
    maps, labels, _ = synthetic_maps(60, 40, seed=0, planted=0.5)  # 40 % defective: decided, but barely mostly normal
    d, masks, _ = decide_from_maps(maps, "balanced")
    assert not d.undecided and d.rate.estimate < 0.5 <= d.rate.high
    assert np.array_equal(d.defective, labels)
    assert len(d.warnings) == 1 and "may not be mostly normal" in d.warnings[0]
    assert d.to_dict()["warnings"] == d.warnings
    clear, _, _ = decide_from_maps(synthetic_maps(90, 10, seed=1)[0], "balanced")  # 10 %: no warning
    assert clear.count > 0 and clear.rate.high < 0.5 and clear.warnings == []


def image_f1(flagged, labels):
    return 2 * (flagged & labels).sum() / (flagged.sum() + labels.sum())


def test_estimated_f1_cut_flags_exactly_the_clear_defects():
    normal = (np.arange(95) + 0.5) / 95  # tail probabilities of normal images: evenly spread
    p = np.r_[normal, np.zeros(5)]
    flagged, defects, f1 = estimated_f1_cut(p)
    assert np.array_equal(flagged, np.r_[np.zeros(95, bool), np.ones(5, bool)])
    assert defects == 5 and f1 == 1.0
    flagged, defects, _ = estimated_f1_cut(normal)
    assert not flagged.any() and defects == 0


def test_balanced_is_near_the_oracle_and_beats_fdr_when_defects_overlap_the_normal_images():
    def shares(n_normal, n_defect, planted):
        out = {"balanced": [], "fdr": []}
        for seed in range(20):
            maps, labels, _ = synthetic_maps(n_normal, n_defect, seed, planted=planted)
            oracle = f1_max(labels, maps.reshape(len(maps), -1).max(1))
            for method in out:
                out[method].append(image_f1(decide_from_maps(maps, method)[0].defective, labels) / oracle)
        return {k: float(np.mean(v)) for k, v in out.items()}

    separated = shares(180, 20, 0.36)
    assert separated["balanced"] >= 0.93 and separated["fdr"] >= 0.93
    overlapping = shares(170, 30, 0.32)  # many defects inside the normal range: fdr keeps only the clear ones
    assert overlapping["balanced"] >= 0.9 and overlapping["balanced"] >= overlapping["fdr"] + 0.1


def test_balanced_leaves_all_normal_batches_alone():
    counts = [decide_from_maps(synthetic_maps(100, 0, seed)[0], "balanced")[0].count for seed in range(40)]
    assert np.mean(np.array(counts) > 0) <= 0.1  # the test that the batch holds any defect, at level 0.05
    assert np.mean(counts) <= 5


def test_nothing_flagged_says_how_far_the_strongest_image_was_from_the_test():
    for seed in range(10):  # an all-normal batch the test leaves alone
        d = decide_from_maps(synthetic_maps(60, 0, seed)[0], "balanced")[0]
        if d.count == 0:
            break
    assert d.count == 0 and not d.undecided
    assert f"the lowest tail probability is {d.p_values.min():.2g}" in d.detail
    assert f"among 60 images one image alone is flagged only below {0.05 / 60:.2g}" in d.detail
    assert d.p_values.min() > 0.05 / 60


@pytest.mark.parametrize("pixel_method", PIXEL_METHODS)
def test_map_methods_draw_masks_with_each_pixel_rule(pixel_method):
    maps, labels, truth = synthetic_maps(90, 10, seed=1)
    for method in MAP_METHODS:
        d, masks, pixel = decide_from_maps(maps, method, pixel_method=pixel_method, patch=0.5)  # no smoothing
        assert pixel["method"] == pixel_method and d.defective[labels].all()
        assert np.array_equal(masks.reshape(len(maps), -1).any(axis=1), d.defective)  # flagged <=> non-empty mask
        assert masks[truth].mean() > 0.5 and (masks[labels] & ~truth[labels]).sum() <= masks[labels].sum() / 5
        if pixel_method == "image":  # the image cut-off on the map maxima, applied to the pixels
            assert pixel["threshold"] == d.threshold
            assert np.array_equal(masks, (maps >= d.threshold) & d.defective[:, None, None])
    with pytest.raises(ConfigError, match="pixel method must be one of half-peak, grown, mebin, image, got 'otsu'"):
        decide_from_maps(maps, "balanced", pixel_method="otsu")


def test_balanced_counts_from_the_maps_and_flags_in_the_order_of_the_final_scores():
    maps, labels, _ = synthetic_maps(170, 30, seed=4, planted=0.32)  # defects overlap the normal peaks
    alone = decide_from_maps(maps)[0]  # without scores: the order of the map maxima
    assert alone.on == "map_max" and 0 < alone.count < 200 and (alone.defective & ~labels).any()
    scores = labels + np.random.default_rng(0).normal(0, 0.1, 200)  # a ranking with every defect on top
    d, masks, _ = decide_from_maps(maps, scores=scores)
    assert d.on == "score" and d.count == alone.count
    assert np.array_equal(d.defective, scores >= np.sort(scores)[-d.count])  # the top of the ranking
    assert d.threshold == scores[d.defective].min() and "highest final scores" in d.detail
    assert not (d.defective & ~labels).any() and image_f1(d.defective, labels) > image_f1(alone.defective, labels)
    assert np.array_equal(masks.reshape(200, -1).any(axis=1), d.defective)
    assert np.array_equal(d.p_values, alone.p_values) and d.rate == alone.rate  # the maps' analysis is unchanged
    fdr, _, _ = decide_from_maps(maps, "fdr", scores=scores)  # fdr keeps the maps' order: its error rate is theirs
    assert fdr.on == "map_max" and np.array_equal(fdr.defective, decide_fdr(maps)[0].defective)
    with pytest.raises(ConfigError, match=r"one value per map \(200\)"):
        decide_from_maps(maps, scores=scores[:5])


def test_balanced_masks_match_decisions_and_contain_the_fdr_discoveries():
    maps, labels, truth = synthetic_maps(170, 30, seed=3, planted=0.45)
    decided = decide(np.zeros(len(maps)), maps)  # the default; equal scores: the map maxima order the images
    d, masks = decided.image, decided.masks
    assert d.method == "balanced" and d.on == "score" and "estimated F1" in d.detail
    assert np.array_equal(d.defective, decide_from_maps(maps)[0].defective)
    assert np.array_equal(masks.reshape(len(maps), -1).any(axis=1), d.defective)
    assert not (decide_fdr(maps)[0].defective & ~d.defective).any()
    assert masks[truth].mean() > 0.5 and (masks & ~truth).sum() <= masks.sum() / 5


def test_null_fit_and_mode_on_a_contaminated_sample():
    rng = np.random.default_rng(4)
    x = np.r_[rng.normal(1.0, 0.1, 700), rng.uniform(1.3, 3.0, 300)]
    assert abs(shorth_location(x) - 1.0) < 0.05
    null = fit_null(x)
    assert abs(null.loc - 1.0) < 0.05 and abs(null.scale - 0.1) < 0.03 and abs(null.null_fraction - 0.7) < 0.07


def test_the_same_images_in_another_order_get_the_same_decision():
    maps, labels, _ = synthetic_maps(90, 10, seed=3)
    base = estimate_null(maps.reshape(100, -1).max(axis=1))
    first, _, _ = decide_from_maps(maps)
    for seed in range(3):
        order = np.random.default_rng(seed).permutation(100)
        again = estimate_null(maps[order].reshape(100, -1).max(axis=1))
        assert np.array_equal(again.p_values, base.p_values[order])  # each image keeps its own tail probability
        assert again.rate == base.rate
        decided, _, _ = decide_from_maps(maps[order])
        assert np.array_equal(decided.defective, first.defective[order])


def test_benjamini_hochberg_matches_its_definition():
    rng = np.random.default_rng(5)
    for _ in range(20):
        p = np.r_[rng.uniform(size=30), rng.uniform(0, 0.01, 5)]
        q = 0.1
        ranked = np.sort(p)
        passing = [k for k in range(1, p.size + 1) if ranked[k - 1] <= q * k / p.size]
        cut = ranked[max(passing) - 1] if passing else -1.0
        assert np.array_equal(benjamini_hochberg(p, q), p <= cut)


def test_q_values_are_the_smallest_false_discovery_rate_that_flags_each_image():
    from musc.decision import bh_adjusted

    rng = np.random.default_rng(6)
    for _ in range(20):
        p = np.r_[rng.uniform(size=30), rng.uniform(0, 0.01, 5), [0.5, 0.5]]  # ties too
        q = bh_adjusted(p)
        assert np.all(q >= p * (1 - 1e-12)) and np.all(q <= 1.0)
        assert np.all(np.diff(q[np.argsort(p, kind="stable")]) >= 0)  # the order of the tail probabilities is kept
        for level in np.r_[np.unique(q) * (1 + 1e-9), np.unique(q) * (1 - 1e-9), np.linspace(0.001, 0.999, 50)]:
            assert np.array_equal(benjamini_hochberg(p, level), q <= level)
    assert bh_adjusted(np.array([0.01, 0.04, 0.03])).tolist() == pytest.approx([0.03, 0.04, 0.04])


def test_decisions_carry_q_values_only_with_tail_probabilities():
    maps, labels, _ = synthetic_maps(90, 10, seed=1)
    for method in ("balanced", "fdr"):
        d, _, _ = decide_from_maps(maps, method)
        assert d.q_values is not None and d.q_values.shape == (100,)
        if method == "fdr":  # fdr flags exactly the images whose q-value is within its level
            assert np.array_equal(d.defective, d.q_values <= 0.05)
    assert decide_images(maps.reshape(100, -1).max(1), "gmm").q_values is None


def test_api_misuse_of_the_decision_methods_is_named():
    from musc.decision import Decision

    scores = np.r_[np.random.default_rng(0).normal(0, 1, 40), [8.0, 9.0]]
    with pytest.raises(ConfigError, match="balanced method decides from the anomaly maps: use decide"):
        decide_images(scores, "balanced")
    maps = np.zeros((42, 4, 4))
    maps[:, 0, 0] = scores
    flagged = decide_images(scores, "mad")
    with pytest.raises(ConfigError, match="pixel method must be one of"):
        pixel_masks(maps, scores, flagged, method="watershed")
    fixed = decide(scores, maps, "mad", pixel_threshold=8.5)
    assert fixed.pixel == {"method": "fixed", "threshold": 8.5}
    assert fixed.masks.sum() == 1 and fixed.masks[41, 0, 0]
    assert isinstance(fixed.image, Decision)


def test_ties_in_the_scores_rank_by_the_map_maxima_in_scores_csv_and_in_balanced(tmp_path):
    """scale-max without re-scoring gives each view's strongest image 1.0, so several images can tie at the top:
    scores.csv ranks them by their map maxima (then input order), the order `balanced` flags in, so the flagged
    images are exactly its first rows."""
    import csv

    from musc.config import MuScConfig
    from musc.decision import rank_order
    from musc.export import write_result
    from musc.types import Result

    maps, labels, _ = synthetic_maps(170, 30, seed=4)
    maps = maps.astype(np.float32)
    map_max = maps.reshape(200, -1).max(axis=1)
    scores = np.where(labels, 0.9, 0.1) + np.random.default_rng(1).normal(0, 0.01, 200)
    tied = np.flatnonzero(labels)[:4]
    scores[tied] = 1.0  # four images tie at the top, in input order not that of their map maxima
    assert not np.array_equal(np.argsort(-map_max[tied], kind="stable"), np.arange(4))
    order = rank_order(scores, map_max)
    assert np.array_equal(order[:4], tied[np.argsort(-map_max[tied])])
    assert np.array_equal(rank_order(np.zeros(3), np.zeros(3)), [0, 1, 2])  # full ties: input order
    result = Result(scores, scores.copy(), maps, np.zeros((200, 2), np.float32), MuScConfig())
    assert np.array_equal(result.ranking(), order)
    d = decide(scores, maps, "balanced")
    assert 4 <= d.image.count < 200
    write_result(result, tmp_path, save_maps=False, save_images=False, progress=False, decision=d.image)
    with open(tmp_path / "scores.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [row["decision"] for row in rows[:d.image.count]] == ["defective"] * d.image.count
    assert {row["decision"] for row in rows[d.image.count:]} == {"normal"}
    assert [int(row["path"].split("_")[-1].split(".")[0]) for row in rows[:4]] == list(order[:4])


def test_evidence_replaces_the_map_maxima_in_the_test_and_the_masks_stay_on_the_maps():
    """`evidence` (a tiled batch's finest view's map maxima) is what balanced and fdr test; the masks are still
    drawn on the maps, and an image is flagged exactly when its mask is non-empty."""
    maps, labels, truth = synthetic_maps(170, 30, seed=5)
    rng = np.random.default_rng(2)
    evidence = np.where(labels, 0.6, 0.3) + rng.normal(0, 0.01, 200)  # separates every defect
    decoy = np.flatnonzero(~labels)[:3]
    maps[decoy, 0, 0] = 0.9  # three normal images with one hot pixel: the map maxima would flag them
    plain, _, _ = decide_from_maps(maps, "fdr")
    assert plain.on == "map_max" and plain.defective[decoy].all()
    d, masks, _ = decide_from_maps(maps, "fdr", evidence=evidence)
    assert d.on == "evidence" and np.array_equal(d.defective, labels) and "evidence" in d.detail
    assert d.threshold == evidence[labels].min()
    assert np.array_equal(masks.reshape(200, -1).any(axis=1), labels)
    assert (masks & truth).sum() / truth.sum() > 0.5  # drawn on the maps' defect regions
    scores = evidence + rng.normal(0, 0.001, 200)
    both = decide(scores, maps, "balanced", evidence=evidence)
    assert both.image.on == "score" and np.array_equal(both.image.defective, labels)
    assert np.array_equal(both.masks.reshape(200, -1).any(axis=1), labels)
    with pytest.raises(ConfigError, match=r"evidence must have one value per map \(200\)"):
        decide_from_maps(maps, evidence=evidence[:5])


def test_decisions_print_as_one_line_not_their_arrays():
    maps, _, _ = synthetic_maps(90, 10, seed=1)
    decided = decide(maps.reshape(100, -1).max(1), maps)
    text = repr(decided)
    assert text.startswith(f"Decisions(Decision(balanced: {decided.image.count} of 100 defective, threshold ")
    assert "defect rate" in text and text.endswith("masks 100 x 16 x 16 by half-peak)") and "array" not in text
    few = decide_from_maps(maps[:5], "balanced")[0]
    assert repr(few).startswith("Decision(balanced: undecided, threshold inf on map_max") and "1 warning" in repr(few)


def test_decide_is_part_of_the_top_level_api():
    import musc

    assert musc.decide is decide and {"decide", "Decision", "Decisions"} <= set(musc.__all__)


def test_copies_of_one_image_are_all_normal_and_the_one_unlike_them_is_flagged():
    maps = np.full((20, 8, 8), 0.3)  # every image alike: nothing stands out
    d = decide(np.zeros(20), maps)
    assert not d.image.undecided and d.image.count == 0 and d.rate.estimate == 0.0
    maps[3, 2, 2] = 0.9  # one unlike the copies (ranked first by its map maximum among tied scores)
    d = decide(np.zeros(20), maps)
    assert not d.image.undecided and np.flatnonzero(d.image.defective).tolist() == [3]
    assert d.image.q_values[3] < 0.01 and np.all(np.delete(d.image.q_values, 3) > 0.99)
    assert d.masks[3, 2, 2] and d.masks.sum() == 1
    maps[7, 1, 1] = 0.7
    assert np.flatnonzero(decide(np.zeros(20), maps, "fdr").image.defective).tolist() == [3, 7]


def test_relative_evidence_caps_how_many_images_balanced_flags():
    """A tiled batch's relative evidence (each image's strongest region less its own level) caps `balanced`'s count:
    normal images whose whole map stands high reach the absolute evidence's tail, not the relative one's. Without
    it, when it confirms at least as many, or when it finds none (a defect that raises a whole image), nothing
    changes; `fdr` ignores it."""
    maps, labels, _ = synthetic_maps(180, 20, seed=7)
    rng = np.random.default_rng(3)
    level = np.full(200, 0.2) + rng.normal(0, 0.005, 200)
    bright = np.flatnonzero(~labels)[:25]
    level[bright] += 0.25  # 25 normal images lit higher all over
    evidence = maps.reshape(200, -1).max(axis=1) + (level - 0.2)
    relative = evidence - level
    scores = relative.copy()  # a ranking that sees the defects (the default's image score on tiles does better)
    plain = decide(scores, maps, "balanced", evidence=evidence).image
    capped = decide(scores, maps, "balanced", evidence=evidence, relative_evidence=relative).image
    assert plain.count >= 40  # the lit images pass the absolute test: about twice the defects are flagged
    assert capped.count == min(plain.count, balanced_count(relative)) == balanced_count(relative)
    assert capped.count < plain.count and "relative evidence" in capped.detail
    assert capped.defective[labels].all() and capped.defective[~labels].sum() <= 4  # the defects, few others
    same = decide(scores, maps, "balanced", evidence=relative, relative_evidence=relative).image
    assert np.array_equal(same.defective, decide(scores, maps, "balanced", evidence=relative).image.defective)
    flat = np.full(200, 0.3) + rng.normal(0, 0.01, 200)  # no image stands out from its own level
    assert balanced_count(flat) == 0
    kept = decide(scores, maps, "balanced", evidence=evidence, relative_evidence=flat).image
    assert np.array_equal(kept.defective, plain.defective)
    fdr = decide(scores, maps, "fdr", evidence=evidence, relative_evidence=relative).image
    assert np.array_equal(fdr.defective, decide(scores, maps, "fdr", evidence=evidence).image.defective)
    with pytest.raises(ConfigError, match=r"relative_evidence must have one value per map \(200\)"):
        decide_from_maps(maps, evidence=evidence, relative_evidence=relative[:5])


def test_balanced_flags_one_image_alone_when_the_test_finds_one():
    """One unusual image above a slightly skewed normal peak: the test finds it alone, and the estimated-F1 count,
    read on a null fitted a little too narrow for that peak's upper tail, would add ten normal images behind it."""
    values = np.r_[np.random.default_rng(0).lognormal(0.0, 0.1, 59), 4.0]
    estimate = estimate_null(values)
    found = benjamini_hochberg(estimate.p_values, 0.05)
    assert np.flatnonzero(found).tolist() == [59] and (found | estimated_f1_cut(estimate.p_values)[0]).sum() == 10
    d = decide_from_maps(peaked_maps(values), "balanced")[0]
    assert np.flatnonzero(d.defective).tolist() == [59] and "it alone is flagged" in d.detail
    assert balanced_count(values) == 1
    ranked = decide_from_maps(peaked_maps(values), "balanced", scores=np.arange(60.0)[::-1])[0]
    assert np.flatnonzero(ranked.defective).tolist() == [0]  # one image, the top of the final scores
    two = np.r_[values[:58], 4.0, 4.1]  # two images above the rest: a tail, counted as before
    assert balanced_count(two) >= 2


def test_balanced_count_is_zero_where_balanced_flags_nothing():
    rng = np.random.default_rng(4)
    assert balanced_count(rng.normal(0.3, 0.02, 100)) == 0  # all normal: the test finds nothing (here)
    assert balanced_count(np.r_[rng.normal(0.3, 0.02, 20), rng.normal(0.9, 0.02, 80)]) == 0  # mostly defective
    assert balanced_count(np.r_[rng.normal(0.3, 0.02, 95), rng.normal(0.9, 0.02, 5)]) == 5


from musc.decision import (MIN_REFERENCES, STEADY_REFERENCES, decide_against_references,  # noqa: E402
                           reference_null)
from musc.errors import InputError  # noqa: E402


def peaked_maps(values: np.ndarray) -> np.ndarray:
    """(N, 4, 4) maps at 0 with each image's value at one pixel: its map maximum (values above 0)."""
    maps = np.zeros((values.size, 4, 4))
    maps[:, 1, 2] = values
    return maps


def test_reference_null_flags_its_level_of_normal_images():
    rng = np.random.default_rng(0)
    flagged = []
    for _ in range(200):  # new normal images and references from one Gaussian: the predictive t is exact
        null = reference_null(rng.normal(5.0, 1.0, 12))
        flagged.append(null.tail(rng.normal(5.0, 1.0, 500)) <= 0.05)
    assert abs(np.mean(flagged) - 0.05) < 0.005


def test_decide_against_references_one_image_at_a_time():
    null = reference_null([1.0, 1.1, 0.9, 1.05, 0.95])
    maps = peaked_maps(np.array([1.0, 3.0, 1.02]))
    maps[1, 0, 0] = 2.9  # a second pixel of the defect
    both = decide_against_references(maps, null)
    assert both.image.defective.tolist() == [False, True, False] and both.image.method == "reference"
    assert both.image.on == "map_max" and both.image.threshold == pytest.approx(null.quantile_of_tail(0.05))
    assert (both.masks.any(axis=(1, 2)) == both.image.defective).all() and both.masks[1, 0, 0] and both.masks[1, 1, 2]
    for i in range(3):  # each image alone: the same decision (nothing is read from the batch)
        alone = decide_against_references(maps[i:i + 1], null)
        assert alone.image.defective[0] == both.image.defective[i]
        assert alone.image.p_values[0] == pytest.approx(both.image.p_values[i])
    tested = decide_against_references(maps, null, evidence=[3.0, 1.0, 1.0])
    assert tested.image.defective.tolist() == [True, False, False] and tested.image.on == "evidence"
    assert decide_against_references(maps, null, level=1e-9).image.count == 0
    assert len(both.image.warnings) == 1 and "comes from 5 references" in both.image.warnings[0]
    steady = reference_null(np.linspace(0.9, 1.1, STEADY_REFERENCES))
    assert decide_against_references(maps, steady).image.warnings == []
    for method in PIXEL_METHODS:
        out = decide_against_references(maps, null, pixel_method=method, patch=1)
        assert (out.masks.any(axis=(1, 2)) == out.image.defective).all()
        if method in ("half-peak", "grown", "mebin"):  # they start at the references' median map maximum
            assert out.pixel["floor"] == null.floor


def test_reference_null_from_identical_references_and_bad_input():
    same = reference_null([2.0] * MIN_REFERENCES)
    decided = decide_against_references(peaked_maps(np.array([2.0, 2.001])), same)
    assert decided.image.defective.tolist() == [False, True]
    with pytest.raises(InputError, match="at least 3 references"):
        reference_null([1.0, 2.0])
    with pytest.raises(InputError, match="not finite"):
        reference_null([1.0, np.nan, 2.0])
    with pytest.raises(InputError, match="as many map maxima"):
        reference_null([1.0, 2.0, 3.0], map_max=[1.0, 2.0])
    null = reference_null([1.0, 2.0, 3.0])
    with pytest.raises(ConfigError, match="level must be between 0 and 1"):
        decide_against_references(peaked_maps(np.ones(2)), null, level=0.0)
    with pytest.raises(ConfigError, match="one value per map"):
        decide_against_references(peaked_maps(np.ones(2)), null, evidence=[1.0])
    with pytest.raises(ConfigError, match="pixel method"):
        decide_against_references(peaked_maps(np.ones(2)), null, pixel_method="nope")


def test_a_result_decides_itself_as_musc_score_does():
    """`Result.decide` is `decide` on the result's scores, maps and evidence, its masks drawn by the run's rule:
    `half-peak` on whole images, the config's `tile_pixel_decision` on tiled batches, unless one is named."""
    from musc.config import MuScConfig
    from musc.types import Result

    maps, _, _ = synthetic_maps(170, 30, seed=6, size=64)
    scores = maps.reshape(200, -1).max(axis=1)
    evidence = scores + np.random.default_rng(3).normal(0, 0.005, 200)
    whole = Result(scores, scores.copy(), maps, np.zeros((200, 2), np.float32), MuScConfig(tile_pixel_decision="grown"))
    d = whole.decide()
    assert d.pixel["method"] == "half-peak" and np.array_equal(d.masks, decide(scores, maps, "balanced").masks)
    tiled = Result(scores, scores.copy(), maps, np.zeros((200, 2), np.float32),
                   MuScConfig(tile_pixel_decision="grown"), evidence=evidence, relative_evidence=evidence - 0.2)
    d = tiled.decide(fdr=0.01)
    explicit = decide(scores, maps, "balanced", fdr=0.01, evidence=evidence, relative_evidence=evidence - 0.2,
                      pixel_method="grown", patch=tiled.map_patch())
    assert d.pixel["method"] == "grown" and d.pixel["smoothing"] == 2 * tiled.map_patch()
    assert np.array_equal(d.image.defective, explicit.image.defective) and np.array_equal(d.masks, explicit.masks)
    assert d.image.count > 0 and np.array_equal(d.masks.reshape(200, -1).any(axis=1), d.image.defective)
    named = tiled.decide("fdr", pixel_method="half-peak")
    assert named.image.method == "fdr" and named.pixel["method"] == "half-peak"
