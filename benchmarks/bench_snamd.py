"""SNAMD's neighbour weights on real features: how much of each window does MuSc-V2's stage 1 average?

SNAMD weights each neighbour q of a patch p by exp(-||f(q) - f(p)||), on the backbone's tokens as they are
(DINO taps carry the model's final LayerNorm, as in the MuSc-V2 code; no other scaling). The weights are
therefore only as large as the tokens' distances are small. Per tapped block this prints the median token
norm, the median distance between 8-neighbours, the median and 99th percentile of their weights, and how far
the SNAMD vector (r = 1, 3, 5) moves from the patch's own unit token (1 - cosine). Then the whole `muscv2`
preset is compared with the same preset at r = 1 alone (each patch's own normalised token, no neighbours):
largest difference of the anomaly maps, AUROC-cls and PRO.

Data sets: mtd-200 and ksdd, or any of bench_accuracy.py's (../shared/datasets), dinov2_vits14 with the imported weights at --size.

Usage: python benchmarks/bench_snamd.py [--size 224] [--datasets mtd-200,ksdd] [--no-write]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn.functional as F

from bench_accuracy import samples
from common import publish

from musc import MuSc, MuScConfig
from musc.aggregation import snamd_iter
from musc.datasets import Category
from musc.evaluation import metrics_for


def neighbour_stats(tokens: torch.Tensor, r_values: tuple[int, ...]) -> dict[str, float]:
    """Token norms, 8-neighbour distances and weights, and the SNAMD vector's departure from the unit token."""
    n, c, h, w = tokens.shape
    windows = F.unfold(tokens, kernel_size=3).view(n, c, 9, -1)  # interior patches: no padding in the statistics
    dist = (windows - windows[:, :, 4:5]).norm(dim=1)[:, [0, 1, 2, 3, 5, 6, 7, 8]].flatten()
    weights = torch.exp(-dist)
    z = next(snamd_iter(tokens, r_values))
    own = F.normalize(tokens.flatten(2).transpose(1, 2), dim=-1)
    departure = 1 - (z * own).sum(-1)
    return {"norm": float(tokens.norm(dim=1).median()), "dist": float(dist.median()),
            "w50": float(weights.median()), "w99": float(torch.quantile(weights.double(), 0.99)),
            "dep50": float(departure.median()), "dep_max": float(departure.max())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--datasets", default="mtd-200,ksdd")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    weights_rows, preset_rows = [], []
    for name in args.datasets.split(","):
        chosen = samples(name)
        full = MuSc(MuScConfig.for_method("muscv2", backbone="dinov2_vits14", image_size=args.size, device="cpu"))
        features, sizes = full.extract([s.path for s in chosen], progress=False)
        for layer, tokens in zip(full.backbone.layers, features.tokens):
            s = neighbour_stats(tokens.float(), full.config.r_values)
            weights_rows.append(f"| {name} | {layer} | {s['norm']:.1f} | {s['dist']:.1f} | {s['w50']:.1e} | "
                                f"{s['w99']:.1e} | {s['dep50']:.1e} | {s['dep_max']:.1e} |")
            print(weights_rows[-1], flush=True)
        alone = MuSc(full.config.replace(r_values=(1,)), backbone=full.backbone)
        results = {}
        for label, model in (("r = 1, 3, 5 (the preset)", full), ("r = 1 alone", alone)):
            result = model.score_features(features, progress=False)
            result.original_sizes = sizes
            results[label] = (result.maps, metrics_for(Category(name, chosen), result, "model"))
        (maps_full, _), (maps_one, _) = results.values()
        delta = float(np.abs(maps_full - maps_one).max())
        for label, (_, m) in results.items():
            preset_rows.append(f"| {name} | {label} | {100 * m['auroc_cls']:.1f} | {100 * m['pro_segm']:.1f} | "
                               f"{delta:.1e} |")
            print(preset_rows[-1], flush=True)
    lines = ["## SNAMD's neighbour weights on real features (dinov2_vits14)", "",
             f"`python benchmarks/bench_snamd.py --size {args.size}` — tokens of each tapped block (with the model's "
             "final LayerNorm, as MuSc-V2 feeds them) at "
             f"{args.size}. Norm: median token norm; dist: median distance between 8-neighbours; w: their weight "
             "exp(-dist), median and 99th percentile; 1 - cos: how far the SNAMD vector (r = 1, 3, 5) is from the "
             "patch's own unit token, median and largest.", "",
             "| data set | block | norm | dist | w median | w 99 % | 1 - cos median | 1 - cos max |",
             "|---|---:|---:|---:|---:|---:|---:|---:|", *weights_rows, "",
             "The `muscv2` preset against the same preset with r = 1 alone (no neighbours): AUROC-cls and PRO in %, "
             "and the largest absolute difference of the anomaly maps (the same for both rows).", "",
             "| data set | stage 1 | AUROC-cls | PRO-segm | max abs. map difference |",
             "|---|---|---:|---:|---:|", *preset_rows]
    publish("snamd-weights", lines, not args.no_write)


if __name__ == "__main__":
    main()
