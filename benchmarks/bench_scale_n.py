"""Scale: score N real images end to end in one run (default N = 1000, dinov2_vits14 at 224) and report time,
peak memory against the scoring budget, and the metrics.

Images: the first N of the Magnetic Tile Defect dataset in path order (all defect folders come before
MT_Free, so N = 1000 holds every defective image and the first normal ones).

Usage: python benchmarks/bench_scale_n.py [--n 1000] [--size 224] [--no-write]
"""

from __future__ import annotations

import argparse
import time

from common import MTD_ROOT, peak_rss_mib, publish


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    import torch

    from musc import MuSc, MuScConfig
    from musc.datasets import Category, get_reader
    from musc.evaluation import metrics_for
    from musc.metrics import METRIC_COLUMNS, METRIC_TITLES
    from musc.scoring import default_memory_budget

    full = get_reader("mtd").load(MTD_ROOT)
    samples = sorted(full.samples, key=lambda s: str(s.path))[:args.n]
    category = Category(f"mtd-first-{args.n}", samples)
    model = MuSc(MuScConfig(backbone="dinov2_vits14", image_size=args.size, device="cpu"))
    _ = model.backbone
    t0 = time.perf_counter()
    result = model.score([s.path for s in samples], progress=True)
    wall = time.perf_counter() - t0
    metrics = metrics_for(category, result)
    budget = default_memory_budget(torch.device("cpu")) / 2**20
    n_anom = int(category.labels.sum())
    t = result.timings
    lines = [f"## Scale: N = {args.n} images in one run", "",
             f"`python benchmarks/bench_scale_n.py --n {args.n} --size {args.size}` — the first {args.n} Magnetic "
             f"Tile Defect images in path order ({n_anom} defective), dinov2_vits14 at {args.size}, the default "
             "configuration (12 (block, r) pairs, exact path, no subsets).", "",
             "| N | input | extraction s | scoring s | total s | ms per image | peak RSS MiB | scoring budget MiB |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|",
             f"| {args.n} | {args.size} | {t['extraction']:.0f} | {t['aggregation'] + t['scoring']:.0f} | {wall:.0f} | "
             f"{1000 * wall / args.n:.0f} | {peak_rss_mib():.0f} | {budget:.0f} |", "",
             "| " + " | ".join(METRIC_TITLES) + " |", "|" + "---:|" * len(METRIC_TITLES),
             "| " + " | ".join("n/a" if metrics[k] is None else f"{100 * metrics[k]:.1f}" for k in METRIC_COLUMNS) + " |"]
    publish(f"scale-n{args.n}-{args.size}", lines, not args.no_write)


if __name__ == "__main__":
    main()
