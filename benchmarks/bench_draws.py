"""Random draws: how much of a per-category AUROC-cls difference is the method, and how much the draw.

Each MTD category of the accuracy panel is one draw of 100 images (80 normal, 20 defective), so a difference
between two methods there mixes the methods with the luck of the draw. For the four defect types that have a
second draw (blowhole, break, crack, uneven: the panel's mtd-TYPE and mtd-TYPE-b, 200 images, 197 for crack),
both draws are pooled and --draws random batches of 80 normal and 20 defective images are scored by every method.

Mutual scoring of a batch depends only on the nearest-patch distances between its own images. So each stage-1 view
of the pooled images gets its (N, L, N) table of nearest-patch distances once (`nearest_patch_distances`), and a
batch's MSM is the interval mean over its sub-table. Everything else is the pipeline's own code:
`MuSc.score_features` runs with that look-up as its scorer (stage 1, map rule, image score and re-scoring as in a
real run). The first batch of each category is also scored without the look-up, and the scores must agree.

Methods are the panel's variants (`bench_accuracy.py`) whose stage 1 runs on whole images: these images are near
square, so `--tiles auto` (the default preset) scores them whole; a batch it would tile stops the run.

Usage: python benchmarks/bench_draws.py [--size 224] [--draws 30] [--methods musc,musc-scales-tiles,...]
       [--categories blowhole,break,crack,uneven] [--seed 0] [--no-write]
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Callable, Sequence

import numpy as np
import torch

from bench_accuracy import existing_rows, row_key, samples, scores_path, section_rows, variant_settings
from common import ROOT, publish

from musc import MuSc, MuScConfig
from musc.aggregation import get_aggregation
from musc.metrics import auroc, image_metrics
from musc.scoring import interval_mean_excluding_self, nearest_patch_distances
from musc.types import Features

CATEGORIES = ("blowhole", "break", "crack", "uneven")
METHODS = ("musc", "musc-scales-tiles", "musc-scales-tiles+skip0", "musc-scales-tiles+skip0+blocks2-5-8",
           "musc-scales-tiles+skip0+interval0.2", "musc-scales-tiles+skip0+interval0.5", "muscv2")
BATCH = (80, 20)
"""Normal and defective images per drawn batch: the panel's category size."""


class TableScorer:
    """An MSM scorer (the `scorer` of `MuSc.patch_scores`) that looks each batch's distances up in the pooled
    tables instead of computing them: call k of a batch is view k of the (block, view) order of `score_views`."""

    def __init__(self, tables: Sequence[Sequence[torch.Tensor]], index: torch.Tensor) -> None:
        self.tables = tables
        self.index = index
        self.order = [(b, v) for b in range(len(tables)) for v in range(len(tables[b]))]
        self.calls = 0

    def __call__(self, z: torch.Tensor, fraction: float, budget: int | None = None,
                 matmul_dtype: torch.dtype | None = None, progress: Callable[[int], None] | None = None,
                 skip: float = 0.0) -> torch.Tensor:
        block, view = self.order[self.calls]
        self.calls += 1
        if z.shape[0] != len(self.index):
            raise RuntimeError(f"the scorer was given {z.shape[0]} images for a batch of {len(self.index)}")
        sub = self.tables[block][view][self.index][:, :, self.index]  # the pooled table's +inf self entries stay
        if progress is not None:
            progress(len(z))
        return interval_mean_excluding_self(sub, fraction, skip)


def pooled_tables(features: Features, aggregation: str, r_values: Sequence[int]) -> list[list[torch.Tensor]]:
    """Per tapped block of `features`, per stage-1 view: the (N, L, N) nearest-patch distances of all images."""
    run = get_aggregation(aggregation).run
    return [[nearest_patch_distances(z) for z in run(tokens, r_values)] for tokens in features.tokens]


def pooled_category(model: MuSc, category: str) -> tuple[list, list, np.ndarray, Features]:
    """The panel's two draws of a defect type pooled: their samples, paths, labels and `model`'s features."""
    chosen = samples(f"mtd-{category}") + samples(f"mtd-{category}-b")
    paths = [s.path for s in chosen]
    pooled, _ = model.extract(paths, progress=False)
    return chosen, paths, np.array([bool(s.label) for s in chosen]), pooled


def draw_batches(labels: np.ndarray, count: int, seed: int) -> list[np.ndarray]:
    """`count` random batches of BATCH[0] normal and BATCH[1] defective images (sorted indices into `labels`)."""
    rng = np.random.default_rng(seed)
    normal, defective = np.flatnonzero(~labels), np.flatnonzero(labels)
    return [np.sort(np.concatenate([rng.choice(normal, BATCH[0], replace=False),
                                    rng.choice(defective, BATCH[1], replace=False)])) for _ in range(count)]


def panel_delta(category: str, method: str, size: int) -> list[str]:
    """The panel's own AUROC-cls differences to `musc` on its two draws of the category, in points: from its kept
    runs, else from its comparison table in BENCHMARKS.md (runs from before scores were kept), else n/a."""
    table = {(name, m): delta for name, m, delta in
             (tuple(c.strip() for c in row.split("|")[1:4]) for row in existing_rows(size, "-versus-musc"))}
    out = []
    for dataset in (f"mtd-{category}", f"mtd-{category}-b"):
        runs = [scores_path(size, dataset, m) for m in ("musc", method)]
        if all(p.is_file() for p in runs):
            base, run = (json.loads(p.read_text()) for p in runs)
            labels = np.array(run["labels"])
            delta = auroc(labels, np.array(run["scores"])) - auroc(labels, np.array(base["scores"]))
            out.append(f"{100 * delta:+.1f}")
        else:
            out.append(table.get((dataset, method), "n/a"))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--draws", type=int, default=30)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--categories", default=",".join(CATEGORIES))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    methods = [m for m in args.methods.split(",") if m]
    if "musc" not in methods:
        raise SystemExit("--methods needs musc: every difference is taken against it")
    configs = {}
    for method in methods:
        preset, settings = variant_settings(method)
        configs[method] = MuScConfig.for_method(preset, backbone="dinov2_vits14", image_size=args.size, device="cpu",
                                                **settings)
    base_model = MuSc(MuScConfig.for_method("musc", backbone="dinov2_vits14", image_size=args.size, device="cpu"))
    all_layers = base_model.backbone.layers
    shared = lambda c: c.layers is None or tuple(c.layers) == tuple(all_layers)  # the pooled backbone serves them
    models = {m: MuSc(c, backbone=base_model.backbone if shared(c) else None) for m, c in configs.items()}
    rows = []
    for category in args.categories.split(","):
        t0 = time.perf_counter()
        chosen, paths, labels, pooled = pooled_category(base_model, category)
        tables: dict[tuple, list[list[torch.Tensor]]] = {}
        for c in configs.values():
            key = (c.aggregation, tuple(c.r_values))
            if key not in tables:
                tables[key] = pooled_tables(pooled, *key)
        t_tables = time.perf_counter() - t0
        batches = draw_batches(labels, args.draws, args.seed)
        aurocs = {m: [] for m in methods}
        others = {m: {"f1_max_cls": [], "ap_cls": []} for m in methods}
        worst = 0.0
        for bi, idx in enumerate(batches):
            index = torch.as_tensor(idx)
            for method, model in models.items():
                c = model.config
                if model.config_for([paths[i] for i in idx])[0].tile_scale is not None:
                    raise SystemExit(f"{method} would tile a batch of mtd-{category}: these draws score whole images")
                positions = [all_layers.index(layer) for layer in (c.layers or all_layers)]
                features = Features([pooled.tokens[p][index] for p in positions], pooled.embeddings[index])
                scorer = TableScorer([tables[(c.aggregation, tuple(c.r_values))][p] for p in positions], index)
                result = model.score_features(features, progress=False, scorer=scorer)
                if scorer.calls != len(scorer.order):
                    raise RuntimeError(f"{method}: {scorer.calls} MSM calls for {len(scorer.order)} tables")
                if bi == 0:  # the look-up must give what a real run gives
                    direct = model.score_features(features, progress=False)
                    worst = max(worst, float(np.abs(direct.scores - result.scores).max()))
                    if not np.allclose(direct.scores, result.scores, atol=1e-4):
                        raise RuntimeError(f"{method} on mtd-{category}: table look-up differs from a real run by "
                                           f"{np.abs(direct.scores - result.scores).max():.2g}")
                metrics = image_metrics(labels[idx], result.scores)
                aurocs[method].append(100 * metrics["auroc_cls"])
                for key in others[method]:
                    others[method][key].append(100 * metrics[key])
        seconds = time.perf_counter() - t0
        print(f"mtd-{category}: {len(chosen)} images pooled, {args.draws} batches; {seconds:.0f} s in all, of which "
              f"{t_tables:.0f} s for the tables; largest score difference to a real run on the first batch {worst:.1g}",
              flush=True)
        base = np.array(aurocs["musc"])
        for method in methods:
            a = np.array(aurocs[method])
            d = a - base
            lo, hi = np.quantile(d, [0.05, 0.95])
            first, second = panel_delta(category, method, args.size)
            against = ("reference | | |" if method == "musc" else
                       f"{d.mean():+.1f} | [{lo:+.1f}, {hi:+.1f}] | {(d < -1).sum()}/{len(d)} | {first} / {second}")
            rows.append(f"| mtd-{category} | {method} | {a.mean():.1f} ± {a.std():.1f} | "
                        f"{np.mean(others[method]['f1_max_cls']):.1f} | {np.mean(others[method]['ap_cls']):.1f} | "
                        f"{against} |")
            print(rows[-1], flush=True)
    computed = {row_key(r) for r in rows}  # methods not run this time keep their rows
    kept = [r for r in section_rows("draws") if row_key(r) not in computed]
    rows = sorted(rows + kept, key=lambda r: (r.split("|")[1], 0 if r.split("|")[2].strip() == "musc" else 1,
                                              r.split("|")[2]))
    publish("draws", [
        f"## Random draws: per-category AUROC-cls differences against `musc` over {args.draws} batches", "",
        f"`python benchmarks/bench_draws.py --size {args.size} --draws {args.draws}` — dinov2_vits14 at {args.size}. "
        "The panel's MTD categories are single draws of 80 normal and 20 defective images. Here the panel's two "
        f"draws of a defect type (mtd-TYPE and mtd-TYPE-b) are pooled and {args.draws} random batches of 80 normal and 20 "
        "defective images are drawn from them (seed "
        f"{args.seed}); every method scores the same batches. Metrics in % (mean ± standard deviation over the batches "
        "for AUROC-cls; means for F1-max-cls and AP-cls). Δ: the method's AUROC-cls minus `musc`'s on the same batch: "
        "its mean, the 5th to 95th percentile over the batches, and how many batches it is more than one point below "
        "`musc` on. The panel's two draws give the last column (its runs on mtd-TYPE / mtd-TYPE-b). MSM of each batch "
        "is read from nearest-patch tables of the pooled images, and on each category's first batch every method's "
        "scores equal those of a real run (`MuSc.score_features`) to 1e-4. Fray has too few defective images for a "
        "second draw; mtd-200, ksdd and the elongated sets are not drawn. The muscv2 rows score whole images "
        "(its tiles are for elongated batches).", "",
        "| category | method | AUROC-cls | F1-max-cls | AP-cls | Δ AUROC-cls | 5-95 % of Δ | batches Δ < -1 | "
        "panel Δ (two draws) |", "|---|---|---:|---:|---:|---:|---|---:|---|", *rows], not args.no_write)


if __name__ == "__main__":
    main()
