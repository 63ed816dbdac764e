"""Time the pixel metrics (AUROC, AP, F1-max, PRO from one sort) at VisA scale: 200 maps of 518 x 518.

Usage: python benchmarks/bench_metrics.py [--images 200] [--size 518] [--no-write]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from common import peak_rss_mib, publish


def synthetic(n: int, size: int, seed: int = 0) -> tuple[list[np.ndarray], list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    masks, maps = [], []
    for i in range(n):
        m = np.zeros((size, size), bool)
        if i % 2:
            for _ in range(rng.integers(1, 4)):
                y, x = rng.integers(0, size - 60, 2)
                h, w = rng.integers(5, 60, 2)
                m[y:y + h, x:x + w] = True
        masks.append(m)
        maps.append((rng.random((size, size), dtype=np.float32) * 0.8 + 0.3 * m).astype(np.float32))
    return masks, maps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--size", type=int, default=518)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    from musc.metrics import pixel_metrics, pro_score
    from musc.metrics.image import auroc

    masks, maps = synthetic(args.images, args.size)
    n_pix = args.images * args.size ** 2
    base = peak_rss_mib()
    rows = []
    t0 = time.perf_counter()
    out = pixel_metrics(masks, maps)
    rows.append(("all four pixel metrics (one sort)", time.perf_counter() - t0))
    t0 = time.perf_counter()
    pro_score(masks, maps)
    rows.append(("PRO alone", time.perf_counter() - t0))
    labels = np.concatenate([m.ravel() for m in masks])
    scores = np.concatenate([a.ravel() for a in maps])
    t0 = time.perf_counter()
    auroc(labels, scores)
    rows.append(("pixel AUROC alone", time.perf_counter() - t0))
    extra = peak_rss_mib() - base
    lines = [
        "## Metrics: pixel-level metrics at VisA scale",
        "",
        f"`python benchmarks/bench_metrics.py` — {args.images} maps of {args.size}x{args.size} "
        f"({n_pix / 1e6:.1f} M pixels), random scores, rectangular defect regions in half the images.",
        "",
        "| what | seconds |",
        "|---|---:|",
        *(f"| {name} | {sec:.2f} |" for name, sec in rows),
        "",
        f"Peak memory above the inputs: {extra:.0f} MiB. Values: "
        + ", ".join(f"{k} {v:.4f}" for k, v in out.items()) + ".",
    ]
    publish("metrics", lines, not args.no_write)


if __name__ == "__main__":
    main()
