"""Q-values on real batches: of the images whose q-value is at most a level, how many are normal?

`musc score` writes each image's q-value (scores.csv `q_value`): the smallest false-discovery rate at which the `fdr`
decision flags it. Were the batch's null right, about that level of the images at or under it would be normal. This
script checks that on `bench_decision.py`'s batches and cached maps (scored there first when not cached), with the
labels the decisions never see: per batch and level, the images with a q-value at most the level, the normal images
among them (the realised false-discovery proportion) and the defective images they hold.

Usage: python benchmarks/bench_qvalues.py [--size 224] [--method musc-scales-tiles] [--levels 0.01,0.05,0.1]
       [--cache bench-out/decision] [--no-write]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from bench_decision import batches, scored
from common import ROOT, publish


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--method", default="musc-scales-tiles", help="the --method preset whose maps are decided")
    ap.add_argument("--levels", default="0.01,0.05,0.1")
    ap.add_argument("--cache", type=Path, default=ROOT / "bench-out" / "decision")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    from musc.decision import decide

    levels = [float(v) for v in args.levels.split(",")]
    rows, shares = [], {level: [] for level in levels}
    for name, samples in batches().items():
        data = scored(name, samples, args.size, args.cache, args.method)
        labels = data["labels"].astype(bool)
        image = decide(data["scores"], data["maps"], "balanced", evidence=data.get("evidence"),
                       relative_evidence=data.get("relative_evidence")).image
        if image.q_values is None or image.undecided:
            rows.append(f"| {name} | {labels.sum()}/{labels.size} | undecided: no q-values |" + " |" * (len(levels) - 1))
            continue
        cells = []
        for level in levels:
            under = image.q_values <= level
            normal = int((under & ~labels).sum())
            if under.any():
                shares[level].append(normal / under.sum())
            share = f"{100 * normal / under.sum():.0f} %" if under.any() else "n/a"
            found = f", {int((under & labels).sum())} defective" if labels.any() else ""
            cells.append(f"{under.sum()}: {normal} normal ({share}){found}")
        rows.append(f"| {name} | {labels.sum()}/{labels.size} | " + " | ".join(cells) + " |")
        print(rows[-1], flush=True)
    summary = ["| median over the batches with any | | " + " | ".join(
        f"{100 * np.median(shares[level]):.0f} % normal ({len(shares[level])} batches)" if shares[level] else "n/a"
        for level in levels) + " |"]
    lines = [f"## Q-values on real batches: how many of the images under a level are normal ({args.method} maps)", "",
             f"`python benchmarks/bench_qvalues.py --size {args.size} --method {args.method}` — dinov2_vits14 at "
             f"{args.size}, `bench_decision.py`'s batches and cached maps. Each image's q-value (scores.csv "
             "`q_value`: the smallest `--fdr` at which `fdr` flags it) from the default decision's null; per level, "
             "the images with a q-value at most it, the normal images among them (found with the labels the "
             "decisions never see; were the null right, about the level's share of them) and the defective ones. "
             "Undecided batches write no q-values.", "",
             "| batch | defective | " + " | ".join(f"q <= {level:g}" for level in levels) + " |",
             "|---|---:|" + "---|" * len(levels), *rows, *summary]
    publish(f"qvalues-{args.method}", lines, not args.no_write)


if __name__ == "__main__":
    main()
