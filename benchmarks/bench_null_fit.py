"""How well the label-free decisions' null fits the normal images it is meant to describe.

`balanced` and `fdr` model the normal images' evidence (each image's strongest region) as a Gaussian centred on
the densest half of the batch's evidence, its spread read from the values below that centre
(`musc.decision.fit_null`). The labels, which the decisions never see, show how the normal images actually sit
under that null: each normal image's evidence in units of the fitted null, z = (evidence - centre) / spread.
Under a good fit their median is near 0 and their 90th percentile near 1.28, and few pass z = 3. Where the
normal images reach further (a right-skewed peak), the null calls some of them defects and its centre lies
below their median, so too few images count as normal: the defect rate is over-estimated and too many
images are flagged.

Batches and caches are `bench_decision.py`'s (the default preset's maps unless --method says otherwise).

Usage: python benchmarks/bench_null_fit.py [--size 224] [--method musc-scales-tiles] [--batches ksdd,mtd-10pct]
       [--no-write]
"""

from __future__ import annotations

import argparse

import numpy as np
from scipy.stats import norm

from bench_decision import ROOT, batches, scored
from common import publish


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--method", default="musc-scales-tiles", help="the --method preset whose maps are decided")
    ap.add_argument("--batches", default=None, help="only these batches (comma-separated names; default: all)")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    from musc.decision import MIN_LABEL_FREE_IMAGES, decide, estimate_null

    chosen = batches()
    if args.batches:
        chosen = {k: v for k, v in chosen.items() if k in args.batches.split(",")}
    cache = ROOT / "bench-out" / "decision"
    suffix = f" --batches {args.batches}" if args.batches else ""
    lines = [f"## Label-free decisions: how the null fits the normal images ({args.method} maps)", "",
             f"`python benchmarks/bench_null_fit.py --size {args.size} --method {args.method}{suffix}` — "
             f"dinov2_vits14 at {args.size}, `bench_decision.py`'s batches and caches. The decisions' null "
             "(`musc.decision.fit_null`: a Gaussian centred on the densest half of the batch's evidence, its spread "
             "read from the values below the centre) against the normal images it should describe, found with the "
             "labels the decisions never see: their evidence in units of the fitted null, z = (evidence - centre) "
             "/ spread. A Gaussian null that fits puts their median at 0 and their 90th percentile at 1.28, and "
             "passes z = 3 with one normal image in 740. `normal z > 3`: normal images the null treats as clear "
             "defects. Rate: the estimated defect rate with its 90 % interval; flagged: by `balanced`.", "",
             "| batch | defective | est. rate | normal z: median | 90th pct | max | normal z > 3 | flagged |",
             "|---|---:|---|---:|---:|---:|---:|---:|"]
    for name, samples in chosen.items():
        if len(samples) < MIN_LABEL_FREE_IMAGES:
            continue
        data = scored(name, samples, args.size, cache, args.method)
        labels = data["labels"]
        n = labels.size
        evidence = data.get("evidence")
        if evidence is None:
            evidence = data["maps"].reshape(n, -1).max(axis=1).astype(np.float64)
        estimate = estimate_null(evidence)
        null = estimate.null
        z = (evidence[~labels] - null.loc) / null.scale
        decision = decide(data["scores"], data["maps"], "balanced", evidence=data.get("evidence"),
                          relative_evidence=data.get("relative_evidence")).image
        rate = estimate.rate
        lines.append(
            f"| {name} | {int(labels.sum())}/{n} | {100 * rate.estimate:.0f}% [{100 * rate.low:.0f}, "
            f"{100 * rate.high:.0f}] (true {100 * labels.mean():.0f}%) | {np.median(z):.2f} | "
            f"{np.quantile(z, 0.9):.2f} | {z.max():.2f} | {int((z > 3).sum())} of {z.size} "
            f"(expected {z.size * norm.sf(3):.1f}) | "
            + ("undecided" if decision.undecided else str(decision.count)) + " |")
        print(lines[-1], flush=True)
    publish(f"null-fit-{args.method}", lines, not args.no_write)


if __name__ == "__main__":
    main()
