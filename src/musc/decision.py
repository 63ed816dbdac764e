"""Label-free decisions: which images are defective, and which pixels, from one batch's own maps.

MuSc scores are relative: they rank images within a batch. To act on them without labels, musc models
what normal looks like in the batch itself.

Both map-based methods start alike. The evidence of an image is its strongest region, the maximum of its anomaly map
(or the `evidence` given: on tiled batches `Result.evidence`, the maximum of the finest view's map). Normal images'
evidence forms the batch's densest part; defects spread out to the right of it. The null (normal) distribution is
estimated from that part alone: its location is the centre of the densest half of the values, its scale comes from
the values below it (which defects rarely reach), and the values the fitted null explains estimate how many images
are normal. Each image gets a tail probability under that null (averaged over bootstrap refits of the null, so that
its estimation uncertainty is carried into it), and Benjamini-Hochberg tests the images at a false-discovery rate
(`fdr`, default 0.05).

`balanced` (default): when that test finds any defect (Simes' test that every image is normal: were the null exact,
an all-normal batch would be left alone with probability about 1 - fdr), it flags as many images as maximise the F1
estimated from the null: above each cut-off, the null predicts how many normal images reach it and the excess is the
defects found. This balances missed defects against false alarms where `fdr` only bounds the false alarms, and finds
far more of the defects when defective and normal images overlap. When the test finds one image alone, that image
alone is flagged: one image far above the rest (an unusual normal one, or a single defect) is not a tail to count
defects from, and with a null fitted slightly too narrow the count would add normal images behind it. Given the
batch's final image scores, the flagged images are that many at the top of their ranking (which ranks better than
the map maxima: RsCIN, and the default preset's image score), so the flagged images are the ranking's first rows.
Given a `relative_evidence` as well (tiled batches: `Result.relative_evidence`, each image's strongest region less
its own level), `balanced` flags no more images than the same count on it finds, when it finds any: an image whose
whole map stands high (lighting, the surface of that part) raises its absolute evidence, not its relative one. When
it finds none, the count stands: a defect that raises a whole image has no relative evidence. `fdr`: the images
Benjamini-Hochberg flags, about `fdr` of them expected to be normal.

Against known-normal references (`decide_against_references`, a bank's own references each scored against the
others: `Bank.reference_null`): each image is decided on its own, flagged when its evidence's tail probability
under the references' null is at most a level; nothing is estimated from the batch, so one new image can be
decided.

Masks (`pixel_method`, for every image method): `half-peak` (default on whole images) marks, in each flagged image,
the pixels at least half-way from the batch's median map maximum (a typical normal image's strongest region) up to
the image's own peak: the half-maximum extent of its strongest regions (`half_peak_masks`). It keeps each image's
peak, so an image is flagged exactly when its mask is non-empty. `grown` (the default preset's on tiled batches,
whose maps score each patch alone) does the same on the maps box-smoothed over 2 x 2 patches and grows the region
through the connected pixels above the batch's median smoothed maximum (`grown_masks`): a wide defect there is a
plateau of patches that each stand a little high, which `half-peak` marks only the top of. Options: `mebin` (the
middle of the widest range of thresholds between that median and the image's peak over which the number of connected
regions stays the same; after MEBin, AnomalyNCD, CVPR 2025) and `image` (the pixels above the image cut-off on the
map maxima: the lowest map maximum among a map-based decision's flagged images, or the image method applied to the
map maxima).
Which rule finds most of the defect pixels on real batches, per preset: BENCHMARKS.md, decision sections.

The batch's defect rate is estimated with a bootstrap interval. Assumption: most images are normal; when the estimate
says otherwise (or a two-group fit puts a clear majority, `UPPER_MAJORITY`, in its upper group), or the batch is too
small, the method says it cannot decide and flags nothing; when only the estimate's interval reaches one half, it
decides, and warns if it flags any image.

Kept as options (thresholds on the image scores): `gmm` (two-component Gaussian mixture), `mad`
(median + k x scaled MAD), `otsu`, `rate` (the user's expected defect rate) and `fixed` (the user's
threshold).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
from scipy import ndimage

from .errors import ConfigError, InputError

MAP_METHODS = ("balanced", "fdr")
"""Methods that decide from the anomaly maps (their maxima and pixels) rather than the final image scores."""
REFERENCE_METHOD = "reference"
"""Each image on its own against a null read from known-normal references (`decide_against_references`)."""
TESTED_METHODS = (*MAP_METHODS, REFERENCE_METHOD)
"""Decisions that test each image's evidence (the map-based ones and `decide_against_references`): their `image`
masks start at the lowest map maximum of the flagged images."""
LABEL_FREE_METHODS = (*MAP_METHODS, "gmm", "mad", "otsu")
"""Methods that set their threshold from the batch alone (not from the user's rate or threshold)."""
IMAGE_METHODS = (*LABEL_FREE_METHODS, "rate", "fixed")
DEFAULT_FDR = 0.05
MIN_LABEL_FREE_IMAGES = 10
"""Below this many images a label-free threshold rests on too few scores to be trusted, and the decision says so."""
PIXEL_METHODS = ("half-peak", "grown", "mebin", "image")
"""How flagged images' maps become masks (`pixel_masks`); the first is the default of whole images."""
HALF_PEAK = 0.5
"""`half-peak` masks: the share of the way from the batch's median map maximum to an image's peak at which its mask
starts (one half: the half-maximum extent of the region around the peak)."""
GROWN_PATCHES = 2
"""`grown` masks: the side, in patches, of the box the maps are smoothed over before the half-peak region is found
and grown. Two: on r = 1 tiled maps a wide break is a plateau of patches that each stand a little high, a thin
crack one or two patches that stand high; over two patches both keep most of their height (0.88 and 0.90 of the
peak on MTD and KolektorSDD, BENCHMARKS.md), and the plateau joins up."""
GROWN_MAX_SHARE = 0.5
"""`grown` masks: the largest share of an image a grown region may cover; above it the image keeps its seed (the
smoothed map's half-peak region). A region over half the image is the image's whole surface standing above what
normal images reach, not the extent of a defect: on KolektorSDD's tiled maps the two largest grown masks (61 and 67 %
of their images) were in normal images flagged by mistake and held 59 % of the batch's mask pixels; the largest
grown mask on a real defect of the three tiled sets covers 31 % of its image (BENCHMARKS.md, decision sections)."""
MAD_SCALE = 1.4826
UPPER_MAJORITY = 0.6
"""The map-based methods also declare a batch undecided when a two-Gaussian fit of its map maxima puts more than this
share in a well-separated upper group. Not one half: normal images' maxima are right-skewed (a tight peak and a long
tail), and such a fit can split that tail off as an upper group holding just over half of a batch with few defects
(measured: 54 % on KolektorSDD's tiled maps, 12.5 % defective; BENCHMARKS.md, decision sections)."""


@dataclass(frozen=True)
class RateEstimate:
    """The batch's estimated share of defective images, with a bootstrap interval."""

    estimate: float
    low: float
    high: float
    level: float

    def to_dict(self) -> dict:
        return {"estimate": self.estimate, "low": self.low, "high": self.high, "level": self.level}

    def __str__(self) -> str:
        return f"{self.estimate:.0%} ({self.level:.0%} interval {self.low:.0%} to {self.high:.0%})"


@dataclass
class Decision:
    """Image decisions (True = defective) with the threshold used and how it was chosen.

    `undecided`: the method could not decide (too few images, or a batch that does not look mostly normal);
    nothing is flagged then. `p_values` (map-based methods): each image's tail probability under the estimated null.
    """

    defective: np.ndarray
    threshold: float
    method: str
    detail: str
    warnings: list[str] = field(default_factory=list)
    undecided: bool = False
    p_values: np.ndarray | None = None
    rate: RateEstimate | None = None
    on: str = "score"
    """What `threshold` applies to: 'score' (the final image scores), 'map_max' (each image's map maximum) or
    'evidence' (what the map-based decisions tested: on tiled batches the finest view's map maxima); each the
    scores.csv column of that name. Results written before map_max existed say 'raw_score', then the map maxima."""

    def __repr__(self) -> str:
        """One line, not the arrays: the method, what it flagged (or that it could not decide) and the rate."""
        n = int(self.defective.size)
        said = "undecided" if self.undecided else f"{self.count} of {n} defective"
        rate = f", defect rate {self.rate}" if self.rate is not None else ""
        warned = f", {len(self.warnings)} warning{'' if len(self.warnings) == 1 else 's'}" if self.warnings else ""
        return f"Decision({self.method}: {said}, threshold {self.threshold:.4g} on {self.on}{rate}{warned})"

    @property
    def q_values(self) -> np.ndarray | None:
        """Per image, the Benjamini-Hochberg adjusted `p_values` (`bh_adjusted`): the smallest false-discovery rate
        at which `fdr` would flag it. None without tail probabilities (the score-threshold methods)."""
        return None if self.p_values is None else bh_adjusted(self.p_values)

    @property
    def count(self) -> int:
        return int(self.defective.sum())

    def labels(self) -> list[str]:
        """Per image: 'defective', 'normal', or 'undecided' when the method could not decide."""
        if self.undecided:
            return ["undecided"] * int(self.defective.size)
        return ["defective" if d else "normal" for d in self.defective]

    def to_dict(self) -> dict:
        threshold = self.threshold if np.isfinite(self.threshold) else None  # None: nothing can reach it
        out = {"method": self.method, "threshold": threshold, "threshold_on": self.on, "detail": self.detail,
               "defective": self.count, "total": int(self.defective.size), "undecided": self.undecided,
               "warnings": self.warnings}
        if self.rate is not None:
            out["defect_rate"] = self.rate.to_dict()
        return out


def threshold_mad(scores: np.ndarray, k: float = 3.0) -> tuple[float, str]:
    med = float(np.median(scores))
    mad = float(np.median(np.abs(scores - med))) * MAD_SCALE
    if mad == 0:
        mad = float(np.std(scores)) or 1e-12
    return med + k * mad, f"median {med:.4g} + {k:g} x {mad:.4g} (scaled MAD)"


def fit_gmm(x: np.ndarray, iters: int = 200, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """EM for a 1-D two-component Gaussian mixture: (weights, means, stds), means ascending."""
    x = np.asarray(x, dtype=np.float64)
    lo, hi = np.quantile(x, [0.25, 0.9])
    w, mu = np.array([0.5, 0.5]), np.array([lo, hi])
    sd = np.full(2, max(float(np.std(x)), 1e-6) / 2)
    floor = max(float(np.std(x)), 1e-12) * 1e-3
    for _ in range(iters):
        dens = w / (sd * np.sqrt(2 * np.pi)) * np.exp(-0.5 * ((x[:, None] - mu) / sd) ** 2)
        resp = dens / np.maximum(dens.sum(axis=1, keepdims=True), 1e-300)
        nk = resp.sum(axis=0) + 1e-12
        w_new, mu_new = nk / x.size, (resp * x[:, None]).sum(axis=0) / nk
        sd_new = np.sqrt(np.maximum((resp * (x[:, None] - mu_new) ** 2).sum(axis=0) / nk, floor ** 2))
        converged = np.allclose(mu_new, mu, atol=1e-9) and np.allclose(sd_new, sd, atol=1e-9)
        w, mu, sd = w_new, mu_new, sd_new
        if converged:
            break
    order = np.argsort(mu)
    return w[order], mu[order], sd[order]


def threshold_gmm(scores: np.ndarray) -> tuple[float, str, float]:
    """(threshold, detail, weight of the upper component). Threshold = +inf when the fit finds one group."""
    w, mu, sd = fit_gmm(scores)
    grid = np.linspace(mu[0], max(mu[1], mu[0]) + 4 * sd[1], 4000)
    log_p = [np.log(w[i] + 1e-300) - np.log(sd[i]) - 0.5 * ((grid - mu[i]) / sd[i]) ** 2 for i in range(2)]
    upper = np.flatnonzero(log_p[1] > log_p[0])
    separated = abs(mu[1] - mu[0]) > 2 * min(sd) and w.min() > 0.005
    if not separated or upper.size == 0:
        return float("inf"), f"one group (means {mu[0]:.4g}, {mu[1]:.4g}; sds {sd[0]:.3g}, {sd[1]:.3g})", float(w[1])
    t = float(grid[upper[0]])
    return t, f"two groups: {w[0]:.0%} at {mu[0]:.4g} (sd {sd[0]:.3g}), {w[1]:.0%} at {mu[1]:.4g} (sd {sd[1]:.3g})", float(w[1])


def threshold_otsu(scores: np.ndarray, bins: int = 256) -> tuple[float, str]:
    hist, edges = np.histogram(scores, bins=bins)
    centers = 0.5 * (edges[1:] + edges[:-1])
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centers) / np.maximum(w0, 1)
    m1 = ((hist * centers).sum() - np.cumsum(hist * centers)) / np.maximum(w1, 1)
    between = w0 * w1 * (m0 - m1) ** 2
    best = int(np.argmax(between[:-1]))
    return float(edges[best + 1]), f"Otsu split of a {bins}-bin histogram"


def decide_images(scores: Sequence[float], method: str = "gmm", k: float = 3.0, rate: float | None = None,
                  threshold: float | None = None) -> Decision:
    """Flag defective images (score > threshold) from the batch's own scores (every method but the map-based
    `balanced` and `fdr`: see `decide`)."""
    scores = np.asarray(scores, dtype=np.float64)
    if method in MAP_METHODS:
        raise ConfigError(f"the {method} method decides from the anomaly maps: use decide(scores, maps, {method!r})")
    if method not in IMAGE_METHODS:
        raise ConfigError(f"decision method must be one of {', '.join(IMAGE_METHODS)}, got {method!r}")
    if scores.ndim != 1 or scores.size < 2:
        raise ConfigError("decisions need at least 2 image scores")
    warnings: list[str] = []
    if method == "fixed":
        if threshold is None:
            raise ConfigError("the fixed decision method needs a threshold")
        t, detail = float(threshold), "given by the user"
    elif method == "rate":
        if rate is None or not 0.0 <= rate <= 1.0:
            raise ConfigError(f"the rate decision method needs an expected defect rate in [0, 1], got {rate}")
        n_flag = int(round(rate * scores.size))
        ordered = np.sort(scores)[::-1]
        t = float(ordered[n_flag - 1]) - 1e-12 if n_flag > 0 else float(ordered[0])
        detail = f"expected defect rate {rate:.1%}: the top {n_flag} images"
    elif method == "mad":
        t, detail = threshold_mad(scores, k)
    elif method == "gmm":
        t, detail, _ = threshold_gmm(scores)
    else:
        t, detail = threshold_otsu(scores)
    defective = scores > t
    if method in ("mad", "gmm", "otsu"):
        warnings += assumption_warnings(scores, defective)
    return Decision(defective, t, method, detail, warnings)


def assumption_warnings(scores: np.ndarray, defective: np.ndarray) -> list[str]:
    """Say when the batch does not look mostly normal, the assumption of every label-free method here."""
    out = []
    if scores.size < MIN_LABEL_FREE_IMAGES:
        out.append(f"only {scores.size} images: too few to tell defective from normal without labels, so the "
                   "automatic decision is unreliable; score a larger batch, or set --threshold or --expected-defect-rate")
    if defective.mean() > 0.5:
        out.append(f"{defective.mean():.0%} of the images are flagged: the batch does not look mostly normal, "
                   "so the automatic threshold is unreliable; set --expected-defect-rate or --threshold")
    w, mu, sd = fit_gmm(scores)
    if w[1] > 0.5 and abs(mu[1] - mu[0]) > 2 * min(sd):
        out.append(f"the higher-scoring group holds {w[1]:.0%} of the images: most of the batch may be defective, "
                   "and scores relative to the batch cannot tell; set --expected-defect-rate or --threshold")
    return out


def rank_order(scores: np.ndarray, map_max: np.ndarray) -> np.ndarray:
    """Image indices from most to least anomalous: by final score, ties broken by the map maxima, then by input order.
    The order of `scores.csv` and of the images `balanced` flags."""
    return np.lexsort((-np.asarray(map_max, dtype=np.float64), -np.asarray(scores, dtype=np.float64)))


def benjamini_hochberg(p_values: np.ndarray, q: float) -> np.ndarray:
    """Which hypotheses are rejected at false discovery rate q (Benjamini-Hochberg step-up)."""
    p = np.asarray(p_values, dtype=np.float64)
    order = np.argsort(p, kind="stable")
    passed = np.flatnonzero(p[order] <= q * np.arange(1, p.size + 1) / p.size)
    rejected = np.zeros(p.size, dtype=bool)
    if passed.size:
        rejected[order[:passed[-1] + 1]] = True
    return rejected


def bh_adjusted(p_values: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (q-values): for each hypothesis the smallest false discovery rate at which
    `benjamini_hochberg` rejects it, min over k >= its rank of p_(k) x n / k, capped at 1."""
    p = np.asarray(p_values, dtype=np.float64)
    order = np.argsort(p, kind="stable")
    scaled = p[order] * p.size / np.arange(1, p.size + 1)
    q = np.empty(p.size)
    q[order] = np.minimum(np.minimum.accumulate(scaled[::-1])[::-1], 1.0)
    return q


def shorth_location(values: np.ndarray, fraction: float = 0.5) -> float:
    """Median of the shortest interval holding `fraction` of the values: the centre of the densest part.

    When most images are normal and defects spread out above them, the densest half lies within the normal
    peak, wherever the defects are.
    """
    x = np.sort(np.asarray(values, dtype=np.float64))
    h = max(2, int(np.ceil(fraction * x.size)))
    if h >= x.size:
        return float(np.median(x))
    widths = x[h - 1:] - x[:x.size - h + 1]
    start = int(np.argmin(widths))
    return float(np.median(x[start:start + h]))


@dataclass(frozen=True)
class NullModel:
    """Normal images' evidence ~ Normal(loc, scale); `null_fraction` is the estimated share of normal images."""

    loc: float
    scale: float
    null_fraction: float

    def tail(self, x: np.ndarray | float) -> np.ndarray:
        """P(evidence of a normal image >= x)."""
        from scipy.stats import norm

        return norm.sf(np.asarray(x, dtype=np.float64), self.loc, self.scale)

    def quantile_of_tail(self, p: float) -> float:
        """The evidence value whose tail probability is p."""
        from scipy.stats import norm

        return float(norm.isf(p, self.loc, self.scale))


def fit_null(evidence: np.ndarray, iterations: int = 3) -> NullModel:
    """Estimate the normal images' distribution from the densest part of the batch's evidence.

    Location: the centre of the densest half (`shorth_location`). Scale: quantile matching of the values below
    it against the lower half of a normal distribution (defects lie above the normal peak, so they hardly
    reach this side). Share of normal images: values whose tail probability under the fitted null exceeds
    1/2 are taken as normal (Storey's estimate with lambda = 1/2); scale and share are refined together. When the
    centre and every value below it are tied (copies of one image), the null is a point just above them: the tied
    images are normal and any image above them stands out.
    """
    from scipy.stats import norm

    x = np.asarray(evidence, dtype=np.float64)
    loc = shorth_location(x)
    below = np.sort(x[x <= loc])
    if np.ptp(below) == 0:  # the centre and all below it tied (copies of one image): a point null, the rest above it
        scale = max(abs(loc), 1.0) * 1e-12  # just above the tie, so that the tied images' tail probability is 1
        return NullModel(loc + 8 * scale, scale, below.size / x.size)
    spread = float(np.std(x)) or 1e-12
    n0 = 2.0 * below.size
    scale = spread
    for _ in range(iterations):
        n0 = max(n0, below.size + 1.0)
        quantiles = norm.ppf((np.arange(1, below.size + 1) - 0.5) / n0)
        scale = max(float(np.sum(quantiles * (below - loc)) / max(float(np.sum(quantiles ** 2)), 1e-300)),
                    1e-3 * spread)
        n0 = min(float(x.size), float(np.sum(norm.sf(x, loc, scale) > 0.5)) / 0.5)
    return NullModel(loc, scale, min(1.0, n0 / x.size))


@dataclass(frozen=True)
class NullEstimate:
    """The fitted null, each image's tail probability averaged over bootstrap refits, and the defect rate."""

    null: NullModel
    p_values: np.ndarray
    rate: RateEstimate


NULL_RESAMPLES = 1000
"""Bootstrap refits of the null per decision. With 200 the Monte Carlo error alone moved `balanced`'s count on real
batches (mtd-200 on `musc`'s maps: 50 flagged at one of 8 seeds, 56 at the others; mtd-mid-wide 36 or 50); with
1000 it held over 8 seeds on both and on 5 of 7 batches of the default's maps (ksdd 61 or 62, mtd-tall 39 to 41, as
with 4000), for about 1 s per decision of 200 images on a 2-core CPU (BENCHMARKS.md)."""


def estimate_null(evidence: np.ndarray, level: float = 0.9, resamples: int = NULL_RESAMPLES, seed: int = 0
                  ) -> NullEstimate:
    """Fit the null, then refit it on `resamples` bootstrap samples of the images.

    Each image's tail probability is the mean over the refits (a predictive p-value: the uncertainty of a null
    estimated from the batch itself is carried into it, which keeps the false-discovery rate at its level on
    synthetic batches; tests/test_decision.py). The defect rate is 1 - the null's share, with the
    percentile interval of the refits. The resamples are drawn from the sorted values, so the same images in
    any order get the same tail probabilities (each its own) and the same rate.
    """
    x = np.asarray(evidence, dtype=np.float64)
    null = fit_null(x)
    pool = np.sort(x)
    rng = np.random.default_rng(seed)
    tails = np.zeros(x.size)
    shares = np.empty(resamples)
    for b in range(resamples):
        refit = fit_null(pool[rng.integers(0, x.size, x.size)])
        tails += refit.tail(x)
        shares[b] = 1.0 - refit.null_fraction
    point = 1.0 - null.null_fraction
    lo, hi = np.quantile(shares, [(1 - level) / 2, (1 + level) / 2])
    rate = RateEstimate(point, float(min(lo, point)), float(max(hi, point)), level)
    return NullEstimate(null, tails / resamples, rate)


def estimate_defect_rate(evidence: np.ndarray, level: float = 0.9, resamples: int = NULL_RESAMPLES,
                         seed: int = 0) -> RateEstimate:
    """The share of defective images (1 - the null's share), with a percentile bootstrap interval over images."""
    return estimate_null(evidence, level, resamples, seed).rate


def check_fdr(fdr: float) -> None:
    """ConfigError unless the false-discovery rate is a level in (0, 1)."""
    if not 0.0 < fdr < 1.0:
        raise ConfigError(f"--fdr must be between 0 and 1, got {fdr}")


def estimated_f1_cut(p_values: np.ndarray, null_fraction: float = 1.0, margin_sd: float = 1.0
                     ) -> tuple[np.ndarray, float, float]:
    """Flag the top images that maximise the F1 estimated from the null alone: (flagged, defects, F1).

    Above each cut-off, the null predicts how many normal images reach it (share of normal images x n x tail
    probability); what is above it beyond that, less `margin_sd` binomial standard deviations of the normal
    count, is the excess: the defects found, counted cautiously so that a null fitted slightly too narrow
    does not turn the tail of the normal images into defects. The largest excess over all cut-offs
    estimates the number of defective images; the cut-off with the highest estimated F1
    (2 x found / (flagged + defective)) is chosen. No label is used.
    """
    p = np.asarray(p_values, dtype=np.float64)
    n = p.size
    order = np.argsort(p, kind="stable")
    tail = p[order]
    flagged_count = np.arange(1, n + 1)
    expected_normal = null_fraction * n * tail
    excess = np.maximum(flagged_count - expected_normal - margin_sd * np.sqrt(expected_normal * (1 - tail)), 0.0)
    defects = float(excess.max())
    flagged = np.zeros(n, dtype=bool)
    if defects <= 0:
        return flagged, 0.0, 0.0
    f1 = 2 * np.minimum(excess, defects) / (flagged_count + defects)
    k = int(np.argmax(f1)) + 1
    flagged[order[:k]] = True
    return flagged, defects, float(f1[k - 1])


def upper_majority(evidence: np.ndarray) -> float | None:
    """The share of a two-Gaussian fit's upper group when it is a clear majority (`UPPER_MAJORITY`) and well
    separated from the lower one, else None: with an estimated rate of one half or more, what makes the map-based
    methods say they cannot decide."""
    w, mu, sd = fit_gmm(evidence)
    return float(w[1]) if w[1] > UPPER_MAJORITY and abs(mu[1] - mu[0]) > 2 * min(sd) else None


def balanced_count(evidence: np.ndarray, fdr: float = DEFAULT_FDR) -> int:
    """How many images `balanced` flags on `evidence` (N,) alone: 0 when the batch looks mostly defective or the
    test at `fdr` finds nothing, 1 when it finds one image, else the estimated-F1 count (`estimated_f1_cut`) or more
    when more pass the test."""
    x = np.asarray(evidence, dtype=np.float64)
    estimate = estimate_null(x)
    if estimate.rate.estimate >= 0.5 or upper_majority(x) is not None:
        return 0
    flagged = benjamini_hochberg(estimate.p_values, fdr)
    if not flagged.any():
        return 0
    if flagged.sum() == 1:  # one image above the rest, not a tail to count from
        return 1
    return int((flagged | estimated_f1_cut(estimate.p_values)[0]).sum())


def decide_from_maps(maps: np.ndarray, method: str = "balanced", fdr: float = DEFAULT_FDR,
                     min_images: int = MIN_LABEL_FREE_IMAGES, pixel_method: str = PIXEL_METHODS[0],
                     scores: Sequence[float] | None = None, evidence: Sequence[float] | None = None,
                     map_max: Sequence[float] | None = None, relative_evidence: Sequence[float] | None = None,
                     patch: float | None = None) -> tuple[Decision, np.ndarray, dict]:
    """The map-based decisions, `balanced` and `fdr`: images flagged from their strongest region, masks
    drawn in the flagged images.

    Both fit the null (normal) distribution of the map maxima from the batch (`estimate_null`) and test every image
    with Benjamini-Hochberg at `fdr`. `fdr` flags exactly those images. `balanced` takes that test as evidence that
    the batch holds any defect at all (Simes' test of "every image is normal", at level `fdr`), and then flags as
    many images as maximise the estimated F1 (`estimated_f1_cut`); when the test finds nothing, nothing is flagged,
    and when it finds one image, that one alone. With the batch's final image `scores`, `balanced` flags that many
    images in their order (the ranking the user reads; ties broken by the map maxima), and its `threshold` is on the
    scores; otherwise, and for `fdr` (whose error rate holds for the map maxima's tail probabilities), the
    `threshold` is on the map values: an image is flagged when its map maximum reaches it. `evidence` (N,) replaces
    the map maxima as what is tested (`Result.evidence`: a tiled batch's finest view; the threshold is then `on`
    'evidence'); the masks are drawn on the maps either way. `map_max` (N,) gives the maps' maxima when they are
    known better than `maps` holds them (`musc decide` reads them from scores.csv). `relative_evidence` (N,;
    `Result.relative_evidence`) caps `balanced`'s count at what the same count on it finds (`balanced_count`) when
    that is not 0; `fdr` ignores it. Returns the image decision, the masks (N, H, W; drawn by `pixel_method`,
    `pixel_masks`: flagged images exactly are those with a non-empty mask) and a description of the pixel rule.
    """
    check_fdr(fdr)
    check_pixel_method(pixel_method)
    if method not in MAP_METHODS:
        raise ConfigError(f"map-based decision method must be one of {', '.join(MAP_METHODS)}, got {method!r}")
    maps = np.asarray(maps)
    n = maps.shape[0]
    map_max = (maps.reshape(n, -1).max(axis=1) if map_max is None else np.asarray(map_max)).astype(np.float64)
    if map_max.shape != (n,):
        raise ConfigError(f"map_max must have one value per map ({n}), got shape {map_max.shape}")
    final = None if scores is None else np.asarray(scores, dtype=np.float64)
    if final is not None and final.shape != (n,):
        raise ConfigError(f"scores must have one value per map ({n}), got shape {final.shape}")
    tested = "map_max" if evidence is None else "evidence"
    evidence = map_max if evidence is None else np.asarray(evidence, dtype=np.float64)
    if evidence.shape != (n,):
        raise ConfigError(f"evidence must have one value per map ({n}), got shape {evidence.shape}")
    relative = None if relative_evidence is None else np.asarray(relative_evidence, dtype=np.float64)
    if relative is not None and relative.shape != (n,):
        raise ConfigError(f"relative_evidence must have one value per map ({n}), got shape {relative.shape}")

    def undecided(detail: str, warning: str, **known: Any) -> tuple[Decision, np.ndarray, dict]:
        decision = Decision(np.zeros(n, dtype=bool), float("inf"), method, detail, [warning], undecided=True,
                            on=tested, **known)
        return decision, np.zeros(maps.shape, dtype=bool), {"method": pixel_method, "threshold": None}

    if n < min_images:
        return undecided(f"cannot decide with {n} images",
                         f"only {n} image{'' if n == 1 else 's'}: too few to estimate what normal looks like, so no "
                         "image is decided; score a larger batch, or set --threshold or --expected-defect-rate")
    estimate = estimate_null(evidence)
    null, rate, p = estimate.null, estimate.rate, estimate.p_values
    upper = upper_majority(evidence)
    if rate.estimate >= 0.5 or upper is not None:
        if upper is not None:
            rate = RateEstimate(upper, rate.low, max(rate.high, upper), rate.level)
        return undecided("cannot decide: the normal peak is not the majority",
                         f"the batch does not look mostly normal (estimated defect rate {rate}): scores relative to "
                         "the batch cannot tell normal from defective here, so no image is decided; set "
                         "--expected-defect-rate or --threshold", p_values=p, rate=rate)
    flagged = benjamini_hochberg(p, fdr)
    peak = (f"normal peak at {null.loc:.4g} (sd {null.scale:.3g}) of the "
            + ("map maxima" if tested == "map_max" else "evidence (the finest view's map maxima on tiles)"))
    if method == "fdr":
        detail = f"FDR {fdr:g} (Benjamini-Hochberg) over images; {peak}"
    elif flagged.sum() == 1:
        detail = (f"one image passes a test at FDR {fdr:g} and it alone is flagged: the estimated-F1 count reads a "
                  f"tail of images, and one image above the rest is not one; {peak}")
    elif flagged.any():
        best, defects, f1 = estimated_f1_cut(p)
        flagged |= best
        about = f"about {defects:.0f} defective image{'' if round(defects) == 1 else 's'}"
        detail = f"highest estimated F1 ({f1:.2f}, {about}) once a test at FDR {fdr:g} finds defects; {peak}"
        if relative is not None:
            confirmed = balanced_count(relative, fdr)
            if 0 < confirmed < int(flagged.sum()):  # none: defects that raise a whole image, left to the evidence
                keep = np.zeros(n, dtype=bool)
                keep[np.argsort(p, kind="stable")[:confirmed]] = True
                detail += (f"; {confirmed} of the {int(flagged.sum())} found stand out from their own image's level as "
                           "well (relative evidence), so no more are flagged")
                flagged = keep
    else:
        detail = (f"no image passes a test at FDR {fdr:g}: the lowest tail probability is {p.min():.2g}, and among {n} "
                  f"images one image alone is flagged only below {fdr / n:.2g}; {peak}")
    on = tested
    if method == "balanced" and final is not None and flagged.any():
        count = int(flagged.sum())
        flagged = np.zeros(n, dtype=bool)
        flagged[rank_order(final, map_max)[:count]] = True
        detail += (f"; the {count} images flagged are those with the highest final scores" if count > 1 else
                   "; the image flagged is the one with the highest final score")
        threshold, on = float(final[flagged].min()), "score"
    else:
        threshold = float(evidence[flagged].min()) if flagged.any() else float(np.nextafter(evidence.max(), np.inf))
    warnings = []
    if flagged.any() and rate.high >= 0.5:
        warnings.append(f"the estimated defect rate's interval reaches {rate.high:.0%}: the batch may not be mostly "
                        "normal, as this decision assumes, and normal images with unusual maps may be among the "
                        "flagged ones; look at their maps, or set --expected-defect-rate or --threshold")
    decision = Decision(flagged, threshold, method, detail, warnings, p_values=p, rate=rate, on=on)
    masks, pixel = pixel_masks(maps, map_max, decision, pixel_method, patch=patch)
    return decision, masks, pixel


def decide_fdr(maps: np.ndarray, fdr: float = DEFAULT_FDR, min_images: int = MIN_LABEL_FREE_IMAGES
               ) -> tuple[Decision, np.ndarray, dict]:
    """The `fdr` decision: images flagged with false-discovery-rate control (see `decide_from_maps`)."""
    return decide_from_maps(maps, "fdr", fdr, min_images)


@dataclass
class Decisions:
    """What a user acts on: the image decision and the defect masks drawn with it."""

    image: Decision
    masks: np.ndarray
    pixel: dict

    @property
    def rate(self) -> RateEstimate | None:
        return self.image.rate

    def __repr__(self) -> str:
        return (f"Decisions({self.image!r}, masks {' x '.join(str(d) for d in self.masks.shape)} by "
                f"{self.pixel.get('method')})")


def decide(scores: Sequence[float], maps: np.ndarray, method: str = "balanced", fdr: float = DEFAULT_FDR,
           k: float = 3.0, rate: float | None = None, threshold: float | None = None,
           pixel_method: str = PIXEL_METHODS[0], pixel_threshold: float | None = None,
           evidence: Sequence[float] | None = None, map_max: Sequence[float] | None = None,
           relative_evidence: Sequence[float] | None = None, patch: float | None = None) -> Decisions:
    """Decide every image and draw its mask, from the batch's final scores (N,) and anomaly maps (N, H, W).

    `balanced` and `fdr` test the map maxima (or `evidence`, `Result.evidence`: a tiled batch's finest view's map
    maxima) against their null; `fdr` flags the images that pass, `balanced` takes how many to flag from that test
    (no more than the same count on `relative_evidence` finds, when given and not 0) and flags that many at the top
    of the scores. The other methods threshold the scores. Masks are drawn in the flagged images with
    `pixel_method` (`pixel_masks`; `grown` needs `patch`, the pixels of one patch in the maps' frame);
    `pixel_threshold` overrides it with a fixed map value. `map_max` (N,): the maps' maxima when known better than
    `maps` holds them (`decide_from_maps`).
    """
    maps = np.asarray(maps)
    if method in MAP_METHODS:
        image, masks, pixel = decide_from_maps(maps, method, fdr, pixel_method=pixel_method, scores=scores,
                                               evidence=evidence, map_max=map_max,
                                               relative_evidence=relative_evidence, patch=patch)
    else:
        image = decide_images(scores, method, k=k, rate=rate, threshold=threshold)
        raw = maps.reshape(maps.shape[0], -1).max(axis=1) if map_max is None else np.asarray(map_max)
        masks, pixel = pixel_masks(maps, raw, image, pixel_method, method, k, patch=patch)
    if pixel_threshold is not None:
        masks, pixel = maps > pixel_threshold, {"method": "fixed", "threshold": float(pixel_threshold)}
    return Decisions(image, masks, pixel)


def mebin_threshold(amap: np.ndarray, steps: int = 64, lo: float | None = None) -> float:
    """MEBin-style: the middle of the widest threshold interval over which the number of regions stays constant."""
    hi = float(amap.max())
    lo = float(amap.min()) if lo is None else lo
    if hi <= lo:
        return hi
    levels = np.linspace(hi, lo, steps + 1)[1:]
    counts = np.array([ndimage.label(amap > t, structure=np.ones((3, 3)))[1] for t in levels])
    best_len, best_mid, i = 0, levels[0], 0
    while i < len(levels):
        j = i
        while j + 1 < len(levels) and counts[j + 1] == counts[i]:
            j += 1
        if counts[i] > 0 and j - i + 1 > best_len:
            best_len, best_mid = j - i + 1, float(levels[(i + j) // 2])
        i = j + 1
    return best_mid


def check_pixel_method(method: str) -> None:
    """ConfigError unless `method` names a pixel rule (PIXEL_METHODS)."""
    if method not in PIXEL_METHODS:
        raise ConfigError(f"pixel method must be one of {', '.join(PIXEL_METHODS)}, got {method!r}")


def pixel_masks(maps: np.ndarray, raw_scores: np.ndarray, decision: Decision, method: str = PIXEL_METHODS[0],
                image_method: str = "gmm", k: float = 3.0, threshold: float | None = None,
                floor: float | None = None, patch: float | None = None) -> tuple[np.ndarray, dict]:
    """Binary defect masks (N, H, W) in the flagged images and a description of the pixel threshold(s).

    `raw_scores` are the maps' maxima. `half-peak` and `mebin` set a threshold per flagged image above `floor` (the
    batch's median map maximum unless given: what a normal image's strongest region reaches; `half_peak_masks`,
    `mebin_masks`); `grown` does the same on the maps smoothed over `patch`-pixel patches and grows the region
    (`grown_masks`; `floor` there is on the smoothed maps); `image` marks the pixels above the image cut-off on the
    map maxima (the lowest one among the flagged images of a decision that tests each image, or `image_method`
    applied to them).
    """
    check_pixel_method(method)
    if threshold is not None:
        return maps > threshold, {"method": "fixed", "threshold": float(threshold)}
    if method == "grown":
        return grown_masks(maps, decision.defective, patch, floor)
    floor = float(np.median(raw_scores)) if floor is None else floor
    if method == "half-peak":
        return half_peak_masks(maps, decision.defective, floor)
    if method == "mebin":
        return mebin_masks(maps, decision.defective, floor)
    if decision.method in TESTED_METHODS:  # the lowest map maximum of the flagged images (their cut-off on the maxima)
        flagged = decision.defective
        t = float(np.asarray(raw_scores)[flagged].min()) if flagged.any() else float("inf")
        return with_peaks((maps >= t) & flagged[:, None, None], maps, flagged), {
            "method": "image", "threshold": t, "detail": "the lowest map maximum of the flagged images"}
    raw_method = image_method if image_method in ("mad", "gmm", "otsu") else "mad"
    raw = decide_images(raw_scores, raw_method, k=k)
    if not np.isfinite(raw.threshold):  # one group among the map maxima: fall back to the robust z-score
        raw_method, raw = "mad", decide_images(raw_scores, "mad", k=k)
    t = raw.threshold
    masks = with_peaks((maps > t) & decision.defective[:, None, None], maps, decision.defective)
    return masks, {"method": "image", "threshold": float(t), "detail": f"{raw_method} on map maxima: {raw.detail}"}


def with_peaks(masks: np.ndarray, maps: np.ndarray, flagged: np.ndarray) -> np.ndarray:
    """`masks` with each flagged image's peak pixel marked, so a flagged image never has an empty mask (its map
    maximum can fall just below a cut-off set on maxima known more exactly, or on other images' maps)."""
    for i in np.flatnonzero(flagged):
        masks[i].flat[int(np.argmax(maps[i]))] = True
    return masks


def masks_per_image(maps: np.ndarray, flagged: np.ndarray, floor: float,
                    threshold: Callable[[np.ndarray, float, float], float], strict: bool = False
                    ) -> tuple[np.ndarray, dict[int, float]]:
    """Masks (N, H, W) from a threshold per flagged image, `threshold(map, base, peak)` with base = min(`floor`,
    peak), and those thresholds. Pixels reaching it are marked (above it when `strict`), and always the peak, so a
    flagged image never has an empty mask; unflagged images get none."""
    masks = np.zeros(maps.shape, dtype=bool)
    per_image = {}
    for i in np.flatnonzero(flagged):
        peak = float(maps[i].max())
        t = min(threshold(maps[i], min(floor, peak), peak), peak)
        masks[i] = maps[i] > t if strict and t < peak else maps[i] >= t
        per_image[int(i)] = t
    return masks, per_image


def half_peak_masks(maps: np.ndarray, flagged: np.ndarray, floor: float, fraction: float = HALF_PEAK
                    ) -> tuple[np.ndarray, dict]:
    """Per flagged image, the pixels at least `fraction` of the way from `floor` (the batch's median map maximum) to
    its peak: the extent of its strongest regions at half their height above what normal images reach. The peak
    is always kept (an image whose peak is below `floor` is marked at its peak), so a flagged image never has an
    empty mask; unflagged images get none."""
    masks, per_image = masks_per_image(maps, flagged, floor, lambda _, base, peak: base + fraction * (peak - base))
    return masks, {"method": "half-peak", "thresholds": per_image, "floor": floor, "fraction": fraction}


def grown_masks(maps: np.ndarray, flagged: np.ndarray, patch: float | None, floor: float | None = None,
                fraction: float = HALF_PEAK, patches: int = GROWN_PATCHES, max_share: float = GROWN_MAX_SHARE
                ) -> tuple[np.ndarray, dict]:
    """Per flagged image, the half-peak region of its map box-smoothed over `patches` x `patches` patches of `patch`
    pixels, grown through the connected pixels of the smoothed map above `floor` (the batch's median smoothed map
    maximum unless given), and always its peak; unflagged images get none. Where the grown region would cover more
    than `max_share` of the image, the image keeps the half-peak region it was grown from (`GROWN_MAX_SHARE`; the
    images are listed under 'not_grown').

    For maps that score each patch on its own (r = 1, the default's tiled maps): there a wide defect is a plateau of
    patches that each stand a little high and `half-peak` keeps only its top, while a thin one is one or two patches
    that stand high. Smoothing joins the plateau and growing reaches its extent; a thin defect's mask is then about
    two patches wide (BENCHMARKS.md, decision sections). InputError when `patch` (pixels of one patch in the maps'
    frame) is not given.
    """
    if patch is None or not patch > 0:
        raise InputError(f"grown masks need the size of one patch in the maps' pixels, got {patch!r}")
    maps = np.asarray(maps)
    width = max(1, int(round(patches * patch)))
    smooth = lambda amap: ndimage.uniform_filter(amap.astype(np.float64), size=width, mode="nearest")
    smoothed_maps = {}  # smoothed once: for the floor (every image) and the masks (the flagged ones)
    if floor is None:
        smoothed_maps = dict(enumerate(map(smooth, maps)))
        floor = float(np.median([amap.max() for amap in smoothed_maps.values()]))
    masks = np.zeros(maps.shape, dtype=bool)
    per_image = {}
    not_grown = []
    for i in np.flatnonzero(flagged):
        smoothed = smoothed_maps[i] if i in smoothed_maps else smooth(maps[i])
        peak = float(smoothed.max())
        base = min(floor, peak)
        seed = smoothed >= min(base + fraction * (peak - base), peak)
        regions, _ = ndimage.label(smoothed > base, structure=np.ones((3, 3)))
        grown = seed | np.isin(regions, np.unique(regions[seed & (regions > 0)]))
        if grown.mean() > max_share:
            grown = seed
            not_grown.append(int(i))
        masks[i] = grown
        per_image[int(i)] = base
    masks = with_peaks(masks, maps, np.asarray(flagged, dtype=bool))
    return masks, {"method": "grown", "thresholds": per_image, "floor": floor, "fraction": fraction,
                   "smoothing": width, "max_share": max_share, "not_grown": not_grown}


def mask_notes(pixel: dict[str, Any] | None, names: Sequence[str]) -> list[str]:
    """What a user should know about the masks of a decision's `pixel` description (`Decisions.pixel`,
    decision.json's "pixel"): the flagged images whose `grown` region was not kept for covering more than its limit of
    the image (`grown_masks`), named by `names` (the images in the batch's order)."""
    kept = (pixel or {}).get("not_grown") or []
    if not kept:
        return []
    count = f"{len(kept)} flagged image" + ("" if len(kept) == 1 else "s")
    name = lambda i: str(names[i]) if i < len(names) else f"image {i + 1} in the batch's order"
    shown = ", ".join(map(name, kept[:5])) + (f" and {len(kept) - 5} more" if len(kept) > 5 else "")
    return [f"the masks of {count} mark only the strongest region ({shown}): over more than "
            f"{pixel['max_share']:.0%} of the image the map stands above what most images' maps reach, a whole "
            "surface standing high rather than a defect's extent (decision.json: pixel.not_grown)"]


def mebin_masks(maps: np.ndarray, flagged: np.ndarray, floor: float) -> tuple[np.ndarray, dict]:
    """Per flagged image, the pixels above its MEBin threshold (searched between `floor` and its peak), and
    always its peak, so a flagged image never has an empty mask; unflagged images get none."""
    masks, per_image = masks_per_image(maps, flagged, floor, lambda amap, base, _: mebin_threshold(amap, lo=base),
                                       strict=True)
    return masks, {"method": "mebin", "thresholds": per_image, "floor": floor}


MIN_REFERENCES = 3
"""Fewest references whose leave-one-out evidence gives a null (`reference_null`): a spread needs two, and the
predictive t one degree of freedom more."""

STEADY_REFERENCES = 50
"""References below which a decision against them warns that its level depends on which references were chosen:
on MTD and KolektorSDD the share of normal images flagged at 5 % reached 13 to 21 % on some draws of 10 or 20
references and at most 6 to 9 % with 50 (BENCHMARKS.md: the bank and few-shot reference decisions)."""


@dataclass(frozen=True)
class ReferenceNull:
    """Normal images' evidence as `count` known-normal references show it, each scored against the others.

    Under a Gaussian model of the references' evidence, a new normal image's evidence x follows the predictive
    Student t: (x - mean) / (sd * sqrt(1 + 1 / count)) ~ t(count - 1), which carries the uncertainty of a null read
    from a few references. `floor`: the references' median map maximum, where `half-peak` and `mebin` masks start.
    """

    mean: float
    sd: float
    count: int
    floor: float

    @property
    def scale(self) -> float:
        return self.sd * float(np.sqrt(1.0 + 1.0 / self.count))

    def tail(self, x: np.ndarray | float) -> np.ndarray:
        """P(evidence of a new normal image >= x)."""
        from scipy.stats import t

        return t.sf((np.asarray(x, dtype=np.float64) - self.mean) / self.scale, self.count - 1)

    def quantile_of_tail(self, p: float) -> float:
        """The evidence value whose tail probability is p."""
        from scipy.stats import t

        return float(self.mean + self.scale * t.isf(p, self.count - 1))


def reference_null(evidence: Sequence[float], map_max: Sequence[float] | None = None) -> ReferenceNull:
    """The null of `decide_against_references` from the references' leave-one-out `evidence` (K,) and map maxima
    (K,; the evidence itself when not given). InputError for fewer than MIN_REFERENCES or non-finite values."""
    x = np.asarray(evidence, dtype=np.float64)
    peaks = x if map_max is None else np.asarray(map_max, dtype=np.float64)
    if x.ndim != 1 or x.size < MIN_REFERENCES or peaks.shape != x.shape:
        raise InputError(f"a null from references needs the evidence of at least {MIN_REFERENCES} references, one "
                         f"value each (and as many map maxima), got shapes {x.shape} and {peaks.shape}")
    if not (np.isfinite(x).all() and np.isfinite(peaks).all()):
        raise InputError("the references' evidence holds values that are not finite")
    mean = float(x.mean())
    sd = max(float(x.std(ddof=1)), 1e-12 * max(1.0, abs(mean)))  # identical references: any higher value stands out
    return ReferenceNull(mean, sd, int(x.size), float(np.median(peaks)))


def decide_against_references(maps: np.ndarray, null: ReferenceNull, level: float = DEFAULT_FDR,
                              evidence: Sequence[float] | None = None, pixel_method: str = PIXEL_METHODS[0],
                              pixel_threshold: float | None = None, patch: float | None = None) -> Decisions:
    """Decide each image on its own against known-normal references: flagged when its evidence (the map maximum, or
    `evidence`, `Result.evidence` on tiled images) has a tail probability of at most `level` under `null`.

    `level` is the share of normal images expected to be flagged (per image, not over the batch: no batch is needed,
    so a single new image scored against a bank is decided). The threshold is on that evidence. Masks are drawn in
    the flagged images by `pixel_method`, from the references' median map maximum (`ReferenceNull.floor`) for
    `half-peak`, `mebin` and `grown` (which then grows through the smoothed pixels above that raw median, so its
    masks are tighter than a batch's; it needs `patch`, the pixels of one patch in the maps' frame), and above the
    lowest map maximum of the flagged images for `image` (`pixel_masks`); `pixel_threshold` overrides it with a
    fixed map value.
    """
    if not 0.0 < level < 1.0:
        raise ConfigError(f"the level must be between 0 and 1, got {level}")
    check_pixel_method(pixel_method)
    maps = np.asarray(maps)
    n = maps.shape[0]
    map_max = maps.reshape(n, -1).max(axis=1).astype(np.float64)
    tested = map_max if evidence is None else np.asarray(evidence, dtype=np.float64)
    if tested.shape != (n,):
        raise ConfigError(f"evidence must have one value per map ({n}), got shape {tested.shape}")
    p = null.tail(tested)
    flagged = p <= level
    detail = (f"tail probability at most {level:g} under the references' null (mean {null.mean:.4g}, sd {null.sd:.3g} "
              f"of the evidence of {null.count} references, each scored against the others)")
    warnings = []
    if null.count < STEADY_REFERENCES:
        warnings.append(f"the null comes from {null.count} references: with fewer than {STEADY_REFERENCES}, the share "
                        "of normal images flagged depends on which references were chosen and can be several times "
                        f"the level {level:g} (BENCHMARKS.md); more references make it steadier")
    decision = Decision(flagged, null.quantile_of_tail(level), REFERENCE_METHOD, detail, warnings, p_values=p,
                        on="map_max" if evidence is None else "evidence")
    masks, pixel = pixel_masks(maps, map_max, decision, pixel_method, threshold=pixel_threshold, floor=null.floor,
                               patch=patch)
    return Decisions(decision, masks, pixel)


__all__ = ["Decision", "Decisions", "RateEstimate", "NullModel", "decide", "decide_fdr", "decide_from_maps",
           "estimated_f1_cut", "MAP_METHODS", "mebin_masks", "decide_images", "pixel_masks", "half_peak_masks", "grown_masks", "GROWN_PATCHES",
           "GROWN_MAX_SHARE", "mask_notes",
           "masks_per_image", "check_pixel_method", "mebin_threshold", "HALF_PEAK", "fit_gmm", "fit_null",
           "shorth_location", "estimate_defect_rate", "benjamini_hochberg", "check_fdr", "estimate_null", "rank_order",
           "NullEstimate", "bh_adjusted", "threshold_mad", "threshold_gmm", "threshold_otsu", "IMAGE_METHODS",
           "LABEL_FREE_METHODS", "PIXEL_METHODS", "DEFAULT_FDR", "balanced_count", "upper_majority",
           "MIN_REFERENCES", "REFERENCE_METHOD", "ReferenceNull", "reference_null", "decide_against_references",
           "STEADY_REFERENCES"]
