"""Label-free decisions on real batches: F1 at the automatic threshold next to F1-max (the oracle threshold
that needs labels), for images and pixels, for every decision method.

Batches from the Magnetic Tile Defect dataset, dinov2_vits14 at --size (default 224):
  mtd-200        the benchmark subset (100 of 200 defective: the methods' 'mostly normal' assumption is broken)
  mtd-10pct      180 normal (MT_Free images 101-280) + 20 defective (images 21-24 of each defect class)
  mtd-normal     200 normal images only (MT_Free 301-500): counts how many get flagged

Usage: python benchmarks/bench_decision.py [--size 224] [--no-write]
"""

from __future__ import annotations

import argparse

import numpy as np

from common import MTD_ROOT, mtd_subset, publish

from musc import MuSc, MuScConfig
from musc.datasets import get_reader, load_mask, resize_mask
from musc.decision import decide_images, pixel_masks
from musc.metrics import f1_max

DEFECTS = ("Blowhole", "Break", "Crack", "Fray", "Uneven")


def batches() -> dict[str, list]:
    full = get_reader("mtd").load(MTD_ROOT).samples
    by_type = {t: sorted((s for s in full if s.defect_type == t), key=lambda s: s.path.name) for t in (*DEFECTS, "Free")}
    return {
        "mtd-200": mtd_subset(),
        "mtd-10pct": by_type["Free"][100:280] + [s for t in DEFECTS for s in by_type[t][20:24]],
        "mtd-normal": by_type["Free"][300:500],
    }


def f1(pred: np.ndarray, truth: np.ndarray) -> float | None:
    if not truth.any():
        return None
    tp = float((pred & truth).sum())
    return 2 * tp / (pred.sum() + truth.sum())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    model = MuSc(MuScConfig(backbone="dinov2_vits14", image_size=args.size, device="cpu"))
    configs = [("mad", "image"), ("mad", "mebin"), ("gmm", "image"), ("gmm", "mebin"), ("otsu", "image")]
    lines = ["## Label-free decisions: F1 at the automatic threshold vs F1-max", "",
             f"`python benchmarks/bench_decision.py --size {args.size}` — dinov2_vits14 at {args.size}; F1 in %; "
             "F1-max uses the labels to pick the best threshold (an oracle), the automatic methods do not. "
             "Pixel F1 is over all pixels of the batch at the model's input size.", "",
             "| batch | defective | image method | pixel method | flagged | image F1 | image F1-max | pixel F1 | "
             "pixel F1-max | warnings |", "|---|---:|---|---|---:|---:|---:|---:|---:|---|"]
    pct = lambda v: "n/a" if v is None else f"{100 * v:.1f}"
    for name, samples in batches().items():
        result = model.score([s.path for s in samples], progress=False)
        labels = np.array([s.label for s in samples], dtype=bool)
        masks = np.stack([resize_mask(load_mask(s, result.original_sizes[i]), args.size) for i, s in enumerate(samples)])
        img_oracle = f1_max(labels, result.scores)
        pix_oracle = f1_max(masks.ravel(), result.maps.ravel())
        for image_method, pixel_method in configs:
            d = decide_images(result.scores, image_method)
            pred_masks, _ = pixel_masks(result.maps, result.raw_scores, d, pixel_method, image_method)
            lines.append(f"| {name} | {int(labels.sum())} | {image_method} | {pixel_method} | {d.count} | "
                         f"{pct(f1(d.defective, labels))} | {pct(img_oracle)} | {pct(f1(pred_masks, masks))} | "
                         f"{pct(pix_oracle)} | {'yes' if d.warnings else ''} |")
            print(lines[-1], flush=True)
    publish("decision", lines, not args.no_write)


if __name__ == "__main__":
    main()
