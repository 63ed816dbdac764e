"""Feature extraction: how much of it is image decoding, and what prefetching the next batch saves.

On mtd-200 with dinov2_vits14 (imported weights): (a) decoding + resizing + normalising all images alone,
(b) the backbone alone on already prepared batches, (c) `MuSc.extract`, which prepares batch k+1 in a thread
while the backbone runs on batch k. Without the overlap (c) would take about (a) + (b).

Usage: python benchmarks/bench_extraction.py [--size 224] [--no-write]
"""

from __future__ import annotations

import argparse
import time

import torch

from common import MTD_ROOT, mtd_subset, publish


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    if not MTD_ROOT.is_dir():
        raise SystemExit(f"{MTD_ROOT} not found")
    from musc import MuSc, MuScConfig
    from musc.io import read_image

    paths = [s.path for s in mtd_subset()]
    model = MuSc(MuScConfig(backbone="dinov2_vits14", image_size=args.size, device="cpu"))
    bb = model.backbone
    bs = model.config.batch_size
    model.extract(paths[:bs], progress=False)  # warm-up
    t0 = time.perf_counter()
    batches = [torch.stack([bb.preprocess(read_image(p)) for p in paths[i:i + bs]]) for i in range(0, len(paths), bs)]
    t_load = time.perf_counter() - t0
    t0 = time.perf_counter()
    for batch in batches:
        bb.extract(batch)
    t_forward = time.perf_counter() - t0
    t0 = time.perf_counter()
    model.extract(paths, progress=False)
    t_extract = time.perf_counter() - t0
    n = len(paths)
    lines = [f"## Feature extraction: decoding overlapped with the backbone (mtd-200, input {args.size})", "",
             f"`python benchmarks/bench_extraction.py --size {args.size}` — dinov2_vits14 (imported weights), batch "
             f"size {bs}, {n} images.", "",
             "| stage | seconds | ms per image |", "|---|---:|---:|",
             f"| (a) decode + resize + normalise only | {t_load:.2f} | {1000 * t_load / n:.1f} |",
             f"| (b) backbone only (prepared batches) | {t_forward:.2f} | {1000 * t_forward / n:.1f} |",
             f"| (a) + (b), one after the other | {t_load + t_forward:.2f} | {1000 * (t_load + t_forward) / n:.1f} |",
             f"| (c) `MuSc.extract` (next batch prepared in a thread) | {t_extract:.2f} | {1000 * t_extract / n:.1f} |"]
    publish(f"extraction-{args.size}", lines, not args.no_write)


if __name__ == "__main__":
    main()
