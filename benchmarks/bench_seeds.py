"""Seeds: how much a tiled batch's metrics and label-free decision move with the draw of its random subsets.

The default scores each tile position of an elongated batch in random label-free subsets (config.tile_subsets), so
its results depend on --seed. Each data set is extracted once; every variant (the accuracy panel's spelling,
`bench_accuracy.py`) then scores the same features with --seeds seeds (0, 1, ...). Per seed: the seven metrics'
image and pixel columns kept here, and the default decision (`balanced`) as a share of the oracle image F1. Per
variant, the mean and range over the seeds, and the image metrics of the seeds' final scores averaged (an ensemble
of the draws, for that many times the scoring work). A batch whose configuration has no random step is scored once.

Usage: python benchmarks/bench_seeds.py [--datasets ksdd,mtd-tall,mtd-wide] [--seeds 6]
       [--variants musc-scales-tiles,musc-scales-tiles+tileblocksshallow] [--size 224] [--no-write]
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

import numpy as np

from bench_accuracy import variant_settings
from bench_decision import f1
from bench_rescoring import labelled
from common import publish

if TYPE_CHECKING:
    from musc.types import Result

COLUMNS = ("auroc_cls", "f1_max_cls", "ap_cls", "f1_max_segm", "pro_segm")
TITLES = ("AUROC-cls", "F1-max-cls", "AP-cls", "F1-max-segm", "PRO")
EXTRACTION_FIELDS = ("backbone", "image_size", "layers", "tile_scale", "tile_overlap", "weights")
"""The configuration fields that set what is extracted: variants that differ in them cannot share features."""


def decision_share(result: Result, labels: np.ndarray) -> float:
    """`balanced`'s image F1 as a share of the oracle F1-max of the same scores, in %."""
    from musc.decision import decide
    from musc.metrics import f1_max

    decided = decide(result.scores, result.maps, "balanced", evidence=result.evidence,
                     relative_evidence=result.relative_evidence)
    return 100 * f1(decided.image.defective, labels) / f1_max(labels, result.scores)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default="ksdd,mtd-tall,mtd-wide")
    ap.add_argument("--seeds", type=int, default=6)
    ap.add_argument("--variants", default="musc-scales-tiles,musc-scales-tiles+tileblocksshallow")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    from musc import MuSc, MuScConfig
    from musc.datasets import Category
    from musc.evaluation import metrics_for
    from musc.metrics import image_metrics
    from musc.tiling import TiledScorer, image_sizes

    variants = args.variants.split(",")
    configs = {v: MuScConfig.for_method(m, backbone="dinov2_vits14", image_size=args.size, device="cpu", **s)
               for v, (m, s) in ((v, variant_settings(v)) for v in variants)}
    first = configs[variants[0]]
    for v, c in configs.items():
        differ = [f for f in EXTRACTION_FIELDS if getattr(c, f) != getattr(first, f)]
        if differ:
            raise SystemExit(f"variant {v!r} extracts other features than {variants[0]!r} ({', '.join(differ)})")
    rows, summary = [], []
    for name in args.datasets.split(","):
        chosen, labels = labelled(name)
        paths = [s.path for s in chosen]
        model = MuSc(first)
        resolved = {v: MuSc(c, backbone=model.backbone).config_for(paths)[0] for v, c in configs.items()}
        tiled = resolved[variants[0]].tile_scale is not None
        features = (TiledScorer(MuSc(resolved[variants[0]], backbone=model.backbone)).features(paths, progress=False)
                    if tiled else model.extract(paths, progress=False)[0])
        sizes = image_sizes(paths)
        for variant in variants:
            config = resolved[variant]
            seeds = range(args.seeds) if config.subsets > 1 else range(1)
            per_seed, scores = [], []
            for seed in seeds:
                scorer = MuSc(config.replace(seed=seed), backbone=model.backbone)
                result = scorer.describe_inputs(scorer.score_features(features, progress=False), paths, sizes)
                m = {k: 100 * v for k, v in metrics_for(Category(name, chosen), result, "model").items() if k in COLUMNS}
                m["share"] = decision_share(result, labels)
                per_seed.append(m)
                scores.append(result.scores)
                rows.append(f"| {name} | {variant} | {seed} | " + " | ".join(f"{m[k]:.1f}" for k in COLUMNS)
                            + f" | {m['share']:.0f}% |")
                print(rows[-1], flush=True)
            values = np.array([[m[k] for k in (*COLUMNS, "share")] for m in per_seed])
            pooled = image_metrics(labels, np.mean(scores, axis=0))
            summary.append(f"| {name} | {variant} | {len(per_seed)} | " + " | ".join(
                f"{values[:, j].mean():.1f} ({values[:, j].min():.1f} to {values[:, j].max():.1f})"
                for j in range(values.shape[1])) + f" | {100 * pooled['auroc_cls']:.1f} |")
    lines = ["## Seeds: the random subsets of tiled batches", "",
             f"`python benchmarks/bench_seeds.py --datasets {args.datasets} --seeds {args.seeds} --variants "
             f"{args.variants}` — dinov2_vits14 at {args.size}. Each data set extracted once; every variant scores "
             f"the same features with seeds 0 to {args.seeds - 1} (the draw of the random label-free subsets each "
             "tile position is scored in; a batch without a random step is scored once). Metrics in %, at the tile "
             "canvas size; decision: `balanced`'s image F1 as a share of the oracle F1-max of the same scores. "
             "Ensemble: AUROC-cls of the seeds' final scores averaged (that many times the scoring work).", "",
             "| data set | variant | seeds | " + " | ".join(f"{t}: mean (range)" for t in (*TITLES, "decision"))
             + " | ensemble AUROC-cls |", "|---|---|---:|" + "---|" * (len(COLUMNS) + 1) + "---:|", *summary, "",
             "| data set | variant | seed | " + " | ".join(TITLES) + " | decision |",
             "|---|---|---:|" + "---:|" * (len(COLUMNS) + 1), *rows]
    publish(f"seeds-{args.size}", lines, not args.no_write)


if __name__ == "__main__":
    main()
