import numpy as np
import pytest

from musc.decision import decide_images, fit_gmm, mebin_threshold, pixel_masks, threshold_otsu
from musc.errors import ConfigError


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


@pytest.mark.parametrize("method", ["image", "mebin"])
def test_pixel_masks_only_on_flagged_images(method):
    rng = np.random.default_rng(3)
    maps = rng.random((20, 16, 16)) * 0.3
    maps[-2:, 4:8, 4:8] += 0.7
    raw = maps.reshape(20, -1).max(1)
    d = decide_images(raw, "mad")
    masks, info = pixel_masks(maps, raw, d, method)
    assert info["method"] == method
    assert not masks[:-2].any()
    assert masks[-2:, 4:8, 4:8].mean() > 0.5
    masks, info = pixel_masks(maps, raw, d, method, threshold=0.5)
    assert info == {"method": "fixed", "threshold": 0.5} and masks[-2:, 4:8, 4:8].all()
