"""Memory as N grows at one input size, and the largest N that fits in this machine's RAM.

For N = the first 50, 100, 200 Magnetic Tile Defect images (path order), dinov2_vits14 (imported weights), the
default configuration: the process RSS before extraction (interpreter, torch, model), the memory the extracted
features hold, and the peak RSS rise of `score_features` (LNAMD, the mutual-scoring table, maps, RsCIN) above
them. A least-squares line through (N, held + scoring peak - distance table) gives the memory per image; the
distance table (N x L x N float32) is the one term that grows with N squared, and the scoring budget caps it
(past the budget the exact path scores blocks of rows instead). The largest N is where baseline + per-image
memory x N reaches physical RAM less a safety margin: derived from the measured terms, not run.

Usage: python benchmarks/bench_memory.py [--size 448] [--n 50,100,200] [--no-write]
"""

from __future__ import annotations

import argparse
import os

import numpy as np

from common import MTD_ROOT, publish
from memprobe import measure, rss_bytes

MARGIN_GIB = 1.0
"""Memory left to the OS and page cache when deriving the largest N."""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=448)
    ap.add_argument("--n", default="50,100,200")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    if not MTD_ROOT.is_dir():
        raise SystemExit(f"{MTD_ROOT} not found")
    from musc import MuSc, MuScConfig
    from musc.datasets import get_reader

    ns = [int(v) for v in args.n.split(",")]
    samples = sorted(get_reader("mtd").load(MTD_ROOT).samples, key=lambda s: str(s.path))
    model = MuSc(MuScConfig(backbone="dinov2_vits14", image_size=args.size, device="cpu"))
    _ = model.backbone
    baseline = rss_bytes() / 2**20
    rows = []
    patches = 0
    for n in ns:
        paths = [s.path for s in samples[:n]]
        (features, _sizes), t_extract, extract_peak = measure(lambda: model.extract(paths, progress=False))
        held = (sum(t.nbytes for t in features.tokens) + features.embeddings.nbytes) / 2**20
        _, t_score, score_peak = measure(lambda: model.score_features(features, progress=False))
        _, _, h, w = features.tokens[0].shape
        patches = h * w
        table = 4 * n * patches * n / 2**20
        rows.append((n, t_extract, extract_peak, held, t_score, score_peak, table))
        print(rows[-1], flush=True)
        features = None
    ns_arr = np.array([r[0] for r in rows], dtype=float)
    linear = np.array([r[3] + r[5] - r[6] for r in rows])
    per_image, intercept = np.polyfit(ns_arr, linear, 1)
    ram = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**20
    n_max = int((ram - MARGIN_GIB * 1024 - baseline - max(0.0, intercept)) / per_image)
    t_per_n2 = np.mean([r[4] / r[0] ** 2 for r in rows])
    lines = [f"## Memory as N grows, and the largest N at {args.size}", "",
             f"`python benchmarks/bench_memory.py --size {args.size}` — the first N Magnetic Tile Defect images, "
             f"dinov2_vits14 at {args.size} ({patches} patches per image, 4 blocks of 384 channels), the default "
             "configuration. Held = the features kept between the stages; extraction / scoring peak = the RSS "
             "rise of that stage above what was there before it (scoring's includes LNAMD, the N x L x N distance "
             "table, the maps and RsCIN). Process before extraction (interpreter, torch, model): "
             f"{baseline:.0f} MiB.", "",
             "| N | extraction s | extraction peak MiB | features held MiB | scoring s | scoring peak MiB | "
             "distance table MiB | peak total MiB |", "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for n, te, ep, held, ts, sp, table in rows:
        lines.append(f"| {n} | {te:.0f} | {ep:.0f} | {held:.0f} | {ts:.0f} | {sp:.0f} | {table:.0f} | "
                     f"{baseline + max(ep, held + sp):.0f} |")
    lines += ["", f"Memory per image (least squares over N of held + scoring peak - table): **{per_image:.1f} MiB**; "
              f"the table adds {4 * patches / 1024:.0f} KiB x N² until it reaches the scoring budget (half the memory "
              "still available, at most 40% of RAM), past which the exact path scores blocks of rows against all "
              "images (the same numbers, twice the products).",
              "",
              f"Derived, not run: the largest N at {args.size} in this machine's {ram / 1024:.0f} GiB is about "
              f"**{n_max}** (({ram / 1024:.0f} GiB - {MARGIN_GIB:.0f} GiB margin - {baseline:.0f} MiB process) / "
              f"{per_image:.1f} MiB per image). Its scoring time, from the measured {t_per_n2 * 1000:.1f} ms x N², "
              f"would be about {t_per_n2 * n_max ** 2 / 3600:.0f} h here with the table in memory (twice that on "
              "the row-block path); `--subsets` or the fast mode (`--projection-dim`) is the practical route at "
              "that size."]
    publish(f"memory-{args.size}", lines, not args.no_write)


if __name__ == "__main__":
    main()
