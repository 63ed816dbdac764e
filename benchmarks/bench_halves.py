"""Random halves: is a variant's gain on one labelled set the method, or the luck of that set's images?

Each of --draws stratified random halves of a data set (half its defective and half its normal images, drawn with
seed --seed + draw; odd draws take the odd defective image) is scored by every variant (the accuracy panel's
spelling, `bench_accuracy.py`: a preset and its options), and AUROC-cls, F1-max-segm and PRO are kept. The table
shows each draw, then each variant's mean and range and, against the first variant, on how many halves it is
higher.

Usage: python benchmarks/bench_halves.py [--dataset ksdd] [--draws 6] [--seed 100]
       [--variants musc-scales-tiles,musc,...] [--size 224] [--no-write]
"""

from __future__ import annotations

import argparse

import numpy as np

from bench_accuracy import one_run, variant_settings
from bench_rescoring import labelled
from common import publish

COLUMNS = ("auroc_cls", "f1_max_segm", "pro_segm")
TITLES = ("AUROC-cls", "F1-max-segm", "PRO")


def half(labels: np.ndarray, draw: int, seed: int) -> np.ndarray:
    """Indices of one stratified half: half the defective images (one more on odd draws when their count is odd)
    and half the normal ones, drawn at random with seed + draw."""
    rng = np.random.default_rng(seed + draw)
    defective, normal = rng.permutation(np.flatnonzero(labels)), rng.permutation(np.flatnonzero(~labels))
    take = len(defective) // 2 + (draw % 2 if len(defective) % 2 else 0)
    return np.sort(np.concatenate([defective[:take], normal[:len(normal) // 2]]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="ksdd")
    ap.add_argument("--draws", type=int, default=6)
    ap.add_argument("--seed", type=int, default=100)
    ap.add_argument("--variants",
                    default="musc-scales-tiles,musc-scales-tiles+tilefinest+baseline0.9+tilefinestmax,musc")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    variants = args.variants.split(",")
    for variant in variants:
        variant_settings(variant)  # a misspelt option stops the run before any scoring
    everything, labels = labelled(args.dataset)
    results: dict[str, list[dict[str, float]]] = {v: [] for v in variants}
    rows = []
    for draw in range(args.draws):
        chosen = [everything[i] for i in half(labels, draw, args.seed)]
        count = sum(bool(s.label) for s in chosen)
        for variant in variants:
            m = {k: 100 * v for k, v in one_run(variant, args.dataset, args.size, chosen)["metrics"].items()
                 if k in COLUMNS}
            results[variant].append(m)
            rows.append(f"| {draw} | {count}/{len(chosen)} | {variant} | "
                        + " | ".join(f"{m[k]:.1f}" for k in COLUMNS) + " |")
            print(rows[-1], flush=True)
    first = variants[0]
    summary = []
    for variant in variants:
        values = np.array([[m[k] for k in COLUMNS] for m in results[variant]])
        base = np.array([[m[k] for k in COLUMNS] for m in results[first]])
        higher = "" if variant == first else f"{int((values[:, 0] > base[:, 0]).sum())} of {args.draws}"
        summary.append(f"| {variant} | " + " | ".join(
            f"{values[:, j].mean():.1f} ({values[:, j].min():.1f} to {values[:, j].max():.1f})"
            for j in range(len(COLUMNS))) + f" | {higher} |")
    lines = [f"## Random halves of {args.dataset}: a variant's gain against the luck of the images", "",
             f"`python benchmarks/bench_halves.py --dataset {args.dataset} --draws {args.draws} --seed {args.seed} "
             f"--variants {args.variants}` — dinov2_vits14 at {args.size}. {args.draws} stratified random halves of "
             f"{args.dataset} (half its defective and half its normal images), each scored by every variant (the "
             "accuracy panel's spelling); metrics in %. Last column: on how many halves the variant's AUROC-cls is "
             f"higher than `{first}`'s.", "",
             "| variant | " + " | ".join(f"{t}: mean (range)" for t in TITLES) + f" | AUROC-cls above `{first}` |",
             "|---|" + "---|" * (len(COLUMNS) + 1), *summary, "",
             "| half | defective | variant | " + " | ".join(TITLES) + " |", "|---:|---:|---|" + "---:|" * len(COLUMNS),
             *rows]
    publish(f"halves-{args.dataset}", lines, not args.no_write)


if __name__ == "__main__":
    main()
