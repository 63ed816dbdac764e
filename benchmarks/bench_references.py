"""Reference images on mtd-200: zero-shot vs few-shot MuSc vs MuSc+ for K = 1, 2, 4, 8, 16 (3 seeds), as the
paper's Tab. 16, and the latency of scoring one new image against banks of 16, 64 and 200 images.

References are drawn (per seed) from MT_Free images outside the subset. The test-test and test-reference
nearest-patch distance tables are computed once per (block, r) pair and reused for every K and seed; one
(K, seed) is checked against the pipeline's own few-shot and MuSc+ scoring.

Usage: python benchmarks/bench_references.py [--size 224] [--no-write]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from common import MTD_ROOT, mtd_subset, publish

from musc import MuSc, MuScConfig
from musc.aggregation import lnamd
from musc.bank import build_bank
from musc.datasets import Category, get_reader
from musc.evaluation import metrics_for
from musc.metrics import METRIC_COLUMNS, METRIC_TITLES
from musc.rescoring import rscin
from musc.scoring import interval_mean_excluding_self, distances_to_references, nearest_patch_distances
from musc.types import Result

SHOTS = (1, 2, 4, 8, 16)
SEEDS = (0, 1, 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--parts", default="kshot,latency", help="kshot (the K-shot table) and/or latency (banks)")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    samples = mtd_subset()
    category = Category("mtd-200", samples)
    in_subset = {s.path for s in samples}
    pool = sorted((s.path for s in get_reader("mtd").load(MTD_ROOT).samples
                   if s.defect_type == "Free" and s.path not in in_subset), key=lambda p: p.name)
    draws = {(k, seed): sorted(np.random.default_rng(seed).choice(len(pool), k, replace=False).tolist())
             for k in SHOTS for seed in SEEDS}
    used = sorted({i for idx in draws.values() for i in idx})
    config = MuScConfig(backbone="dinov2_vits14", image_size=args.size, device="cpu")
    model = MuSc(config)
    parts = args.parts.split(",")
    if "kshot" in parts:
        feats, sizes = model.extract([s.path for s in samples], progress=False)
        ref_feats, _ = model.extract([pool[i] for i in used], progress=False)
        col = {i: c for c, i in enumerate(used)}
        tables, rtables = [], []
        t0 = time.perf_counter()
        for tok, rtok in zip(feats.tokens, ref_feats.tokens):
            for z, rz in zip(lnamd(tok, config.r_values), lnamd(rtok, config.r_values)):
                tables.append(nearest_patch_distances(z))
                rtables.append(distances_to_references(z, rz))
        print(f"tables in {time.perf_counter() - t0:.0f}s", flush=True)
        n, grid = feats.num_images, feats.tokens[0].shape[-1]

        def finish(patch: torch.Tensor) -> Result:
            maps = model.upsample(patch.view(n, grid, grid))
            raw = maps.flatten(1).amax(1).numpy().astype(np.float64)
            emb = feats.embeddings.numpy()
            return Result(rscin(raw, emb, config.rscin_windows), raw, maps.numpy(), emb, config, original_sizes=sizes)

        def run(mode: str, idx: list[int] | None) -> Result:
            acc = torch.zeros(n, grid * grid)
            for t, r in zip(tables, rtables):
                if mode == "zero-shot":
                    acc += interval_mean_excluding_self(t, config.interval)
                elif mode == "musc":
                    acc += interval_mean_excluding_self(torch.cat([t, r[:, :, [col[i] for i in idx]]], -1), config.interval)
                else:
                    acc += r[:, :, [col[i] for i in idx]].amin(-1)
            return finish(acc / len(tables))

        check_idx = draws[(2, 0)]
        sel = [col[i] for i in check_idx]
        refs_feat = type(feats)([t[sel] for t in ref_feats.tokens], ref_feats.embeddings[sel])
        for mode in ("musc", "musc+"):
            direct = MuSc(config.replace(mode=mode), backbone=model.backbone).score_features(feats, False, references=refs_feat)
            diff = float(np.abs(direct.maps - run(mode, check_idx).maps).max())
            assert diff < 1e-4, (mode, diff)
            print(f"check {mode}: max map difference to the pipeline {diff:.1e}", flush=True)
        fmt = lambda vals: f"{100 * np.mean(vals):.1f} ± {100 * np.std(vals):.1f}"
        lines = ["## Reference images: zero-shot vs few-shot MuSc vs MuSc+ (mtd-200)", "",
                 f"`python benchmarks/bench_references.py` — dinov2_vits14 at {args.size}; K normal references per "
                 "seed drawn from the 852 MT_Free images outside the subset; mean ± std over seeds 0, 1, 2; metrics in %.",
                 "", "| mode | K | " + " | ".join(METRIC_TITLES) + " |", "|---|---:|" + "---:|" * len(METRIC_TITLES)]
        zero = metrics_for(category, run("zero-shot", None))
        lines.append("| zero-shot | 0 | " + " | ".join(f"{100 * zero[k]:.1f}" for k in METRIC_COLUMNS) + " |")
        for mode in ("musc", "musc+"):
            for k in SHOTS:
                mets = [metrics_for(category, run(mode, draws[(k, seed)])) for seed in SEEDS]
                lines.append(f"| {'few-shot MuSc' if mode == 'musc' else 'MuSc+'} | {k} | "
                             + " | ".join(fmt([m[c] for m in mets]) for c in METRIC_COLUMNS) + " |")
                print(lines[-1], flush=True)
        publish("references", lines, not args.no_write)
    if "latency" in parts:
        lines = ["## Scoring one new image against a bank (MuSc+)", "",
                  "Median of 7 runs of `MuSc.score([image], references=bank.features)` with the bank in memory "
                  "(one backbone pass + the comparisons; the references' LNAMD is computed on a first, uncounted call "
                  "and reused); bank files hold float32 tokens of the 4 blocks; the image is from mtd-200.", "",
                  "| bank images | median latency ms | bank size on disk MiB |", "|---:|---:|---:|"]
        plus = MuSc(config.replace(mode="musc+"), backbone=model.backbone)
        probe = samples[0].path
        with tempfile.TemporaryDirectory() as tmp:
            for size in (16, 64, 200):
                bank = build_bank(plus, pool[:size], progress=False)
                path = bank.save(Path(tmp) / f"bank{size}.bank")
                plus.score([probe], progress=False, references=bank.features)
                times = []
                for _ in range(7):
                    t0 = time.perf_counter()
                    plus.score([probe], progress=False, references=bank.features)
                    times.append(time.perf_counter() - t0)
                lines.append(f"| {size} | {1000 * statistics.median(times):.0f} | {path.stat().st_size / 2**20:.1f} |")
                print(lines[-1], flush=True)
        publish("references-latency", lines, not args.no_write)


if __name__ == "__main__":
    main()
