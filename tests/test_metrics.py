import numpy as np
import pytest
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from musc.metrics import (all_metrics, auroc, auroc_difference, average_precision, f1_max, f1_max_threshold, pixel_metrics, pro_score)


def slow_pro(masks, maps, limit=0.3):
    """Per-threshold loop: FPR over normal pixels, mean per-region overlap; trapezoid clipped at `limit`."""
    from scipy import ndimage

    regions = []
    for m in masks:
        lab, count = ndimage.label(m, structure=np.ones((3, 3)))
        regions += [(len(regions), m, lab == k) for k in range(1, count + 1)]
    scores = np.concatenate([a.ravel() for a in maps])
    normal = ~np.concatenate([m.ravel() for m in masks])
    points = [(0.0, 0.0)]
    for t in np.unique(scores)[::-1]:
        fpr = (scores[normal] >= t).mean()
        overlaps = []
        for idx, (_, _, region) in enumerate(regions):
            img = next(i for i, m in enumerate(masks) if m is regions[idx][1])
            overlaps.append((maps[img][region] >= t).mean())
        points.append((fpr, np.mean(overlaps)))
    area = 0.0
    for (x0, y0), (x1, y1) in zip(points[:-1], points[1:]):
        if x0 >= limit:
            break
        if x1 <= limit:
            area += 0.5 * (y0 + y1) * (x1 - x0)
        else:
            y_at = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
            area += 0.5 * (y0 + y_at) * (limit - x0)
    return area / limit


def random_case(seed, n=4, size=12, ties=True):
    rng = np.random.default_rng(seed)
    masks, maps = [], []
    for i in range(n):
        m = np.zeros((size, size), dtype=bool)
        for _ in range(rng.integers(0, 3)):
            y, x = rng.integers(0, size - 3, 2)
            h, w = rng.integers(1, 4, 2)
            m[y:y + h, x:x + w] = True
        a = rng.random((size, size)) + 0.6 * m
        maps.append(np.round(a, 1) if ties else a)
        masks.append(m)
    masks[0][1:3, 1:3] = True  # at least one region
    return masks, maps


@pytest.mark.parametrize("seed", range(6))
def test_pro_matches_slow_threshold_loop(seed):
    masks, maps = random_case(seed, ties=seed % 2 == 0)
    assert pro_score(masks, maps) == pytest.approx(slow_pro(masks, maps), abs=1e-10)


@pytest.mark.parametrize("limit", [0.05, 0.3, 1.0])
def test_pro_other_limits(limit):
    masks, maps = random_case(11)
    assert pro_score(masks, maps, limit) == pytest.approx(slow_pro(masks, maps, limit), abs=1e-10)


def test_pro_hand_computed():
    mask = np.array([[1, 1, 0], [0, 0, 0]], dtype=bool)
    amap = np.array([[0.9, 0.5, 0.7], [0.1, 0.2, 0.3]])
    # curve (fpr, pro): (0,0) (0,.5) (.25,.5) (.25,1) (.5,1) ... area to .3 = .25*.5 + .05*1 = .175
    assert pro_score([mask], [amap]) == pytest.approx(0.175 / 0.3)


def test_pro_regions_weigh_equally_and_8_connectivity():
    # image 1: a big region (4 px) fully detected; image 2: one diagonal pair = ONE region (8-connected), missed
    m1 = np.zeros((4, 4), bool); m1[:2, :2] = True
    m2 = np.zeros((4, 4), bool); m2[0, 0] = m2[1, 1] = True
    a1 = np.where(m1, 1.0, 0.0)
    a2 = np.zeros((4, 4))
    a2[3, 3] = 0.5  # a false positive above every region pixel of image 2
    # thresholds 1.0: fpr 0, pro .5 (only region 1); 0.5: fpr 1/26, pro .5; 0.0: fpr 1, pro 1
    expected = (0.5 * (1 / 26) + 0.5 * (0.5 + (0.5 + 0.5 * (0.3 - 1 / 26) / (1 - 1 / 26))) * (0.3 - 1 / 26)) / 0.3
    assert pro_score([m1, m2], [a1, a2]) == pytest.approx(expected)


def test_pro_perfect_and_undefined():
    masks, _ = random_case(3)
    perfect = [m.astype(float) for m in masks]
    assert pro_score(masks, perfect) == pytest.approx(1.0)
    assert pro_score([np.zeros((3, 3), bool)], [np.random.rand(3, 3)]) is None
    assert pro_score([np.ones((3, 3), bool)], [np.random.rand(3, 3)]) is None


@pytest.mark.parametrize("seed", range(5))
def test_image_metrics_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    labels = rng.random(200) < 0.3
    scores = np.round(rng.random(200) + 0.4 * labels, 2 if seed % 2 else 6)
    assert auroc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert average_precision(labels, scores) == pytest.approx(average_precision_score(labels, scores), abs=1e-12)
    p, r, _ = precision_recall_curve(labels, scores)
    f1 = np.where(p + r > 0, 2 * p * r / np.maximum(p + r, 1e-300), 0)
    assert f1_max(labels, scores) == pytest.approx(f1.max(), abs=1e-12)


def test_f1_max_threshold_is_reached():
    labels = np.array([0, 0, 1, 1, 0, 1])
    scores = np.array([0.1, 0.4, 0.35, 0.8, 0.2, 0.9])
    f1, thr = f1_max_threshold(labels, scores)
    pred = scores >= thr
    tp = (pred & (labels == 1)).sum()
    assert f1 == pytest.approx(2 * tp / (pred.sum() + labels.sum()))
    assert f1 == pytest.approx(f1_max(labels, scores))


def test_undefined_is_none_not_zero():
    assert auroc(np.zeros(5), np.random.rand(5)) is None
    assert average_precision(np.ones(5), np.random.rand(5)) is None
    assert f1_max(np.zeros(5), np.random.rand(5)) is None
    m = all_metrics(np.array([1, 1]), np.array([0.2, 0.4]), None, None)
    assert list(m) == ["auroc_cls", "f1_max_cls", "ap_cls", "auroc_segm", "f1_max_segm", "ap_segm", "pro_segm"]
    assert m["auroc_cls"] is None and m["f1_max_cls"] == 1.0 and m["pro_segm"] is None


def test_pixel_metrics_match_sklearn_and_pro():
    masks, maps = random_case(7, n=5, size=16)
    out = pixel_metrics(masks, maps)
    y = np.concatenate([m.ravel() for m in masks])
    s = np.concatenate([a.ravel() for a in maps]).astype(np.float32)
    assert out["auroc_segm"] == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert out["ap_segm"] == pytest.approx(average_precision_score(y, s), abs=1e-12)
    assert out["pro_segm"] == pytest.approx(slow_pro(masks, [a.astype(np.float32) for a in maps]), abs=1e-10)
    none = pixel_metrics([np.zeros((2, 2), bool)], [np.random.rand(2, 2)])
    assert all(v is None for v in none.values())


def test_bad_metric_input():
    with pytest.raises(ValueError, match="NaN"):
        auroc(np.array([0, 1]), np.array([0.1, np.nan]))
    with pytest.raises(ValueError, match="differ in size"):
        auroc(np.array([0, 1, 1]), np.array([0.1, 0.2]))
    with pytest.raises(ValueError, match="match in number and shape"):
        pixel_metrics([np.zeros((2, 2), bool)], [np.zeros((3, 3))])


def test_auroc_difference_point_matches_sklearn_and_the_interval_covers_it():
    rng = np.random.default_rng(3)
    labels = np.r_[np.ones(20, bool), np.zeros(80, bool)]
    a = labels * 1.0 + rng.normal(0, 0.8, 100)
    b = labels * 0.5 + rng.normal(0, 0.8, 100)
    d = auroc_difference(labels, a, b, resamples=500)
    assert d.delta == pytest.approx(roc_auc_score(labels, a) - roc_auc_score(labels, b))
    assert d.low <= d.delta <= d.high and d.level == 0.9


def test_auroc_difference_of_a_method_with_itself_is_exactly_zero():
    rng = np.random.default_rng(4)
    labels = rng.random(60) < 0.3
    s = rng.normal(size=60).round(1)  # ties included
    d = auroc_difference(labels, s, s, resamples=200)
    assert (d.delta, d.low, d.high) == (0.0, 0.0, 0.0)


def test_auroc_difference_narrows_with_more_samples_and_is_none_for_one_class():
    rng = np.random.default_rng(5)
    widths = []
    for n in (50, 2000):
        labels = np.arange(n) < n // 5
        a, b = labels + rng.normal(0, 1, n), labels + rng.normal(0, 1, n)
        d = auroc_difference(labels, a, b, resamples=300)
        widths.append(d.high - d.low)
    assert widths[1] < widths[0] / 3
    assert auroc_difference(np.zeros(5, bool), np.arange(5.0), np.arange(5.0)) is None
    with pytest.raises(ValueError, match="one shape"):
        auroc_difference(np.ones(4, bool), np.arange(4.0), np.arange(3.0))
