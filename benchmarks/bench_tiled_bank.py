"""Banks with and without tiles on KolektorSDD: MuSc+ against a bank of known-good images.

The first 20 normal KolektorSDD images (by file name) make the bank; the other 180 (25 defective) are scored
against it, once as one batch (seven metrics) and one image at a time (median latency of 5 images, the bank in
memory). Presets: `muscv2` (whole images) and `muscv2-tiles` (tiles along the long side of these tall images).

Usage: python benchmarks/bench_tiled_bank.py [--size 224] [--refs 20] [--no-write]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from common import KSDD_ROOT, peak_rss_mib, publish

from musc import MuSc, MuScConfig
from musc.bank import build_bank
from musc.datasets import Category, get_reader
from musc.evaluation import metrics_for
from musc.metrics import METRIC_COLUMNS, METRIC_TITLES



def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--refs", type=int, default=20)
    ap.add_argument("--methods", default="muscv2,muscv2-tiles")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    if not KSDD_ROOT.is_dir():
        raise SystemExit(f"KolektorSDD not found at {KSDD_ROOT}")
    samples = sorted(get_reader("ksdd").load(KSDD_ROOT).samples, key=lambda s: str(s.path))
    normal = [s for s in samples if not s.label]
    refs = normal[:args.refs]
    test = [s for s in samples if s not in refs]
    category = Category("ksdd", test)
    lines = ["## Banks with and without tiles (KolektorSDD, MuSc+)", "",
             f"`python benchmarks/bench_tiled_bank.py` — dinov2_vits14 at {args.size}; bank = the first {len(refs)} "
             f"normal images, scored: the other {len(test)} ({sum(s.label for s in test)} defective), as one batch "
             "(metrics in %) and one image at a time (median of 5, bank in memory).", "",
             "| preset | tiles per image | " + " | ".join(METRIC_TITLES) + " | build s | batch s | one image ms | bank MiB |",
             "|---|---:|" + "---:|" * (len(METRIC_TITLES) + 4)]
    with tempfile.TemporaryDirectory() as tmp:
        for method in args.methods.split(","):
            config = MuScConfig.for_method(method, backbone="dinov2_vits14", image_size=args.size, device="cpu",
                                           mode="musc+")
            model = MuSc(config)
            _ = model.backbone
            t0 = time.perf_counter()
            bank = build_bank(model, [s.path for s in refs], progress=False)
            t_build = time.perf_counter() - t0
            path = bank.save(Path(tmp) / f"{method}.bank")
            t0 = time.perf_counter()
            result = model.score([s.path for s in test], progress=False, references=bank.features)
            t_batch = time.perf_counter() - t0
            metrics = metrics_for(category, result)
            times = []
            for s in test[:5]:
                t0 = time.perf_counter()
                model.score([s.path], progress=False, references=bank.features)
                times.append(time.perf_counter() - t0)
            tiles = len(bank.features.starts) if bank.tiled else 1
            cells = " | ".join("n/a" if metrics[k] is None else f"{100 * metrics[k]:.1f}" for k in METRIC_COLUMNS)
            lines.append(f"| {method} | {tiles} | {cells} | {t_build:.0f} | {t_batch:.0f} | "
                         f"{1000 * statistics.median(times):.0f} | {path.stat().st_size / 2**20:.1f} |")
            print(lines[-1], flush=True)
    lines += ["", f"Peak resident memory of the run: {peak_rss_mib():.0f} MiB."]
    publish("tiled-bank", lines, not args.no_write)


if __name__ == "__main__":
    main()
