"""Seeds: how much a tiled batch's metrics and label-free decision move with the draw of its random subsets.

The default scores each tile position of an elongated batch in random label-free subsets (config.tile_subsets), so
its results depend on --seed. Each data set is extracted once; every variant (the accuracy panel's spelling,
`bench_accuracy.py`) then scores the same features with --seeds seeds (0, 1, ...). Per seed: the seven metrics'
image and pixel columns kept here, the default decision (`balanced`) as a share of the oracle image F1, and the pixel
F1 of its masks (drawn as `musc score` draws them, over all pixels of the batch at the tile canvas size, in %:
absolute, since the maps' F1-max-segm differs between variants). Per
variant, the mean and range over the seeds, and the image metrics of the seeds' final scores averaged (an ensemble
of the draws, for that many times the scoring work). A batch whose configuration has no random step is scored once.
Rows of data sets and variants not run again stay in the section as an earlier run wrote them.

Usage: python benchmarks/bench_seeds.py [--datasets ksdd,mtd-tall,mtd-wide] [--seeds 6]
       [--variants musc-scales-tiles,musc-scales-tiles+tilemean+tilemapall+halfpeak,...] [--size 224] [--no-write]
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

import numpy as np

from bench_accuracy import section_rows, variant_settings
from bench_decision import f1
from bench_rescoring import labelled
from common import publish

if TYPE_CHECKING:
    from musc.types import Result

COLUMNS = ("auroc_cls", "f1_max_cls", "ap_cls", "f1_max_segm", "pro_segm")
TITLES = ("AUROC-cls", "F1-max-cls", "AP-cls", "F1-max-segm", "PRO")
DECISIONS = ("decision", "pixel decision")
EXTRACTION_FIELDS = ("backbone", "image_size", "layers", "tile_scale", "tile_overlap", "weights")
"""The configuration fields that set what is extracted: variants that differ in them cannot share features."""


def decision_shares(result: Result, labels: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """`balanced`'s image F1 as a share of the oracle F1-max of the same scores, and its masks' pixel F1 against the
    ground truth `truth` (N, H, W at the maps' size), both in %."""
    from musc.metrics import f1_max

    decided = result.decide("balanced")  # as `musc score` decides, masks included
    return (100 * f1(decided.image.defective, labels) / f1_max(labels, result.scores),
            100 * f1(decided.masks, truth))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default="ksdd,mtd-tall,mtd-wide")
    ap.add_argument("--seeds", type=int, default=6)
    ap.add_argument("--variants", default="musc-scales-tiles,musc-scales-tiles+tilemean+tilemapall+halfpeak")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    from musc import MuSc, MuScConfig
    from musc.datasets import Category, load_mask, resize_mask
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
        truth = None
        for variant in variants:
            config = resolved[variant]
            seeds = range(args.seeds) if config.subsets > 1 else range(1)
            per_seed, scores = [], []
            for seed in seeds:
                scorer = MuSc(config.replace(seed=seed), backbone=model.backbone)
                result = scorer.describe_inputs(scorer.score_features(features, progress=False), paths, sizes)
                m = {k: 100 * v for k, v in metrics_for(Category(name, chosen), result, "model").items() if k in COLUMNS}
                if truth is None:
                    truth = np.stack([resize_mask(load_mask(s, result.original_sizes[i]), result.maps.shape[-2:])
                                      for i, s in enumerate(chosen)])
                m["share"], m["pixel"] = decision_shares(result, labels, truth)
                per_seed.append(m)
                scores.append(result.scores)
                rows.append(f"| {name} | {variant} | {seed} | " + " | ".join(f"{m[k]:.1f}" for k in COLUMNS)
                            + f" | {m['share']:.0f}% | {m['pixel']:.1f} |")
                print(rows[-1], flush=True)
            values = np.array([[m[k] for k in (*COLUMNS, "share", "pixel")] for m in per_seed])
            pooled = image_metrics(labels, np.mean(scores, axis=0))
            summary.append(f"| {name} | {variant} | {len(per_seed)} | " + " | ".join(
                f"{values[:, j].mean():.1f} ({values[:, j].min():.1f} to {values[:, j].max():.1f})"
                for j in range(values.shape[1])) + f" | {100 * pooled['auroc_cls']:.1f} |")
    ran = {(name, variant) for name in args.datasets.split(",") for variant in variants}
    kept_summary, kept_seeds = kept_rows(f"seeds-{args.size}", ran)
    summary, rows = sorted(summary + kept_summary, key=row_key), sorted(rows + kept_seeds, key=row_key)
    lines = ["## Seeds: the random subsets of tiled batches", "",
             f"`python benchmarks/bench_seeds.py --datasets {args.datasets} --seeds {args.seeds} --variants "
             f"{args.variants}` — dinov2_vits14 at {args.size}. Each data set extracted once; every variant scores "
             f"the same features with seeds 0 to {args.seeds - 1} (the draw of the random label-free subsets each "
             "tile position is scored in; a batch without a random step is scored once). Metrics in %, at the tile "
             "canvas size; decision: `balanced`'s image F1 as a share of the oracle F1-max of the same scores; pixel "
             "decision: the pixel F1 of its masks, drawn as `musc score` draws them (each variant's "
             "`tile_pixel_decision` on tiles: `grown` for the default since 2026-12-01, `half-peak` before and for "
             "`musc-thin` and `+halfpeak`), over all pixels of the batch (absolute: each variant's "
             "maps have their own F1-max-segm). Rows run before 2026-12-01, when the default's tiled maps were the mean "
             "over r of all four blocks and its masks `half-peak`, carry `+tilemean+tilemapall+halfpeak` (or "
             "`+halfpeak` beside `+tilefinest+tilemapshallow`): relabelled, not run again. "
             "Ensemble: AUROC-cls of the seeds' final scores averaged (that many times the scoring work). Rows of "
             "other variants were written by earlier runs with their own --variants.", "",
             "| data set | variant | seeds | " + " | ".join(f"{t}: mean (range)" for t in (*TITLES, *DECISIONS))
             + " | ensemble AUROC-cls |", "|---|---|---:|" + "---|" * (len(COLUMNS) + 2) + "---:|", *summary, "",
             "| data set | variant | seed | " + " | ".join((*TITLES, *DECISIONS)) + " |",
             "|---|---|---:|" + "---:|" * (len(COLUMNS) + 2), *rows]
    publish(f"seeds-{args.size}", lines, not args.no_write)


def row_key(row: str) -> list[str]:
    """A table row's data set, variant and seed (or seed count): the tables' order."""
    return [c.strip() for c in row.strip("|").split("|")][:3]


def kept_rows(section: str, ran: set[tuple[str, str]]) -> tuple[list[str], list[str]]:
    """The summary and per-seed rows of BENCHMARKS.md's `section` whose (data set, variant) this run did not score."""
    summary, per_seed = [], []
    for row in section_rows(section):
        if tuple(row_key(row)[:2]) not in ran:
            (summary if " to " in row else per_seed).append(row)
    return summary, per_seed


if __name__ == "__main__":
    main()
