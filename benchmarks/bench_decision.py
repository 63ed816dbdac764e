"""Label-free decisions on real batches: F1 at the automatic threshold next to F1-max (the oracle threshold
that needs labels), for images and pixels, for every decision method, plus the estimated defect rate.

Batches (dinov2_vits14 at --size, default 224; MTD = Magnetic Tile Defect, KSDD = KolektorSDD kos01-25):
  mtd-200        the benchmark subset (100 of 200 defective)
  mtd-10pct      180 normal (MT_Free images 101-280) + 20 defective (images 21-24 of each defect class)
  ksdd           the 200 KolektorSDD images at hand, 25 defective (thin cracks)
  mtd-normal     100 normal images only (MT_Free 301-400): how many get flagged
  mtd-normal-3   3 normal images (MT_Free 501-503)
  mtd-80pct      held out (not used to choose the default): 20 normal (MT_Free 601-620) + 80 defective;
                 most of the batch is defective, so a label-free method must say it cannot decide
  mtd-tall       elongated like ksdd: every MTD image outside mtd-200 at least 1.8x as tall as wide (93 normal,
                 47 defective); the accuracy panel's held-out set of that name
  mtd-wide       the same, landscape (56 normal, 42 defective)
  mtd-tall-normal, mtd-wide-normal  held out: the normal images of mtd-tall (93) and mtd-wide (56) alone, all-normal
                 elongated batches (tiled by the -tiles presets), added after the default was chosen
  mtd-mid-tall   held out: every MTD image outside mtd-200 from 1.5 up to 1.8x as tall as wide (82 normal, 25
                 defective); the accuracy panel's held-out set of that name
  mtd-mid-wide   the same, landscape (91 normal, 25 defective)
  mtd-TYPE       the accuracy panel's one-defect-type sets (80 normal + 20 of one type, 12 for fray; mtd-TYPE-b:
                 a second draw of blowhole, break, crack and uneven), held out for the `half-peak` masks

Scored batches are cached in --cache (scores, maps, labels, masks), so the decision methods can be compared
without scoring again.

Usage: python benchmarks/bench_decision.py [--size 224] [--method musc] [--map-rule z-max] [--tile-map-rule finest]
       [--layers 2,5,8] [--map-baseline 0.9] [--tile-image-score finest-max] [--batches ksdd,mtd-tall]
       [--cache bench-out/decision] [--no-write]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from bench_accuracy import DATASETS, ELONGATED, HELD_OUT, samples, section_rows
from common import KSDD_ROOT, MTD_ROOT, ROOT, mtd_subset, publish

from musc import MuSc, MuScConfig
from musc.datasets import get_reader, load_mask, resize_mask
from musc.metrics import f1_max

DEFECTS = ("Blowhole", "Break", "Crack", "Fray", "Uneven")
PER_TYPE = (*(name for name in DATASETS if name.startswith("mtd-") and name != "mtd-200"), *HELD_OUT)
"""The accuracy panel's one-defect-type batches (80 normal MTD images and 20 of one type, 12 for fray; the -b sets a
second draw): added after `half-peak` masks were chosen, so they are held out for that rule."""


def batches() -> dict[str, list]:
    full = get_reader("mtd").load(MTD_ROOT).samples
    by_type = {t: sorted((s for s in full if s.defect_type == t), key=lambda s: s.path.name) for t in (*DEFECTS, "Free")}
    out = {
        "mtd-200": mtd_subset(),
        "mtd-10pct": by_type["Free"][100:280] + [s for t in DEFECTS for s in by_type[t][20:24]],
        "ksdd": get_reader("ksdd").load(KSDD_ROOT).samples if KSDD_ROOT.is_dir() else None,
        "mtd-normal": by_type["Free"][300:400],
        "mtd-normal-3": by_type["Free"][500:503],
        "mtd-80pct": by_type["Free"][600:620] + [s for t in ("Blowhole", "Break", "Uneven") for s in by_type[t][40:60]]
        + by_type["Crack"][30:50],
        **{name: samples(name) for name in ELONGATED},  # the accuracy panel's elongated and mid sets
        **{f"{name}-normal": [s for s in samples(name) if not s.label] for name in ("mtd-tall", "mtd-wide")},
        **{name: samples(name) for name in PER_TYPE},  # and its one-defect-type sets
    }
    return {k: v for k, v in out.items() if v is not None}


def variant_name(method: str, map_rule: str | None = None, tile_map_rule: str | None = None,
                 layers: tuple[int, ...] | None = None, map_baseline: float | None = None,
                 tile_image_score: str | None = None) -> str:
    """The preset with its replaced map rules, blocks, baseline and tiled image score, as cache files and section
    names spell it ('musc-scales-z-max', 'musc-scales-tiles-blocks2-5-8', 'musc-scales-tiles-baseline0.9')."""
    return (method + (f"-{map_rule}" if map_rule else "") + (f"-tile-{tile_map_rule}" if tile_map_rule else "")
            + (f"-blocks{'-'.join(map(str, layers))}" if layers else "")
            + (f"-baseline{map_baseline:g}" if map_baseline is not None else "")
            + (f"-tile-{tile_image_score}" if tile_image_score else ""))


def scored(name: str, samples: list, size: int, cache: Path, method: str = "musc", map_rule: str | None = None,
           tile_map_rule: str | None = None, layers: tuple[int, ...] | None = None,
           map_baseline: float | None = None, tile_image_score: str | None = None) -> dict[str, np.ndarray]:
    """Scores, raw scores, maps (N, H, W), labels, masks and (tiled batches) the decisions' evidence of a batch; from
    the cache when present (files written before the evidence existed have none: their decisions test the map
    maxima, as those runs did)."""
    variant = variant_name(method, map_rule, tile_map_rule, layers, map_baseline, tile_image_score)
    path = cache / (f"{name}-{size}.npz" if variant == "musc" else f"{name}-{variant}-{size}.npz")
    if path.is_file():
        return dict(np.load(path))
    rule = {"map_rule": map_rule} if map_rule else {}
    if tile_map_rule:
        rule["tile_map_rule"] = tile_map_rule
    if layers:
        rule["layers"] = layers
    if map_baseline is not None:
        rule["map_baseline"] = map_baseline
    if tile_image_score:
        rule["tile_image_score"] = tile_image_score
    model = MuSc(MuScConfig.for_method(method, backbone="dinov2_vits14", image_size=size, device="cpu", **rule))
    result = model.score([s.path for s in samples], progress=False)
    shape = tuple(result.maps.shape[-2:])
    masks = np.stack([resize_mask(load_mask(s, result.original_sizes[i]), shape) for i, s in enumerate(samples)])
    data = {"scores": result.scores, "raw_scores": result.raw_scores, "maps": result.maps,
            "labels": np.array([s.label for s in samples], dtype=bool), "masks": masks}
    if result.evidence is not None:  # tiled batches: what the map-based decisions test (Result.evidence)
        data["evidence"] = result.evidence
    if result.relative_evidence is not None:  # and what caps balanced's count there (Result.relative_evidence)
        data["relative_evidence"] = result.relative_evidence
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(path, **data)
    return data


def f1(pred: np.ndarray, truth: np.ndarray) -> float | None:
    if not truth.any():
        return None
    tp = float((pred & truth).sum())
    return 2 * tp / (pred.sum() + truth.sum())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--method", default="musc", help="the --method preset whose maps are decided")
    ap.add_argument("--map-rule", default=None, help="the preset's map rule replaced (--map-rule)")
    ap.add_argument("--tile-map-rule", default=None, help="the map rule of tiled batches (--tile-map-rule)")
    ap.add_argument("--map-baseline", type=float, default=None, help="each image's own level off (--map-baseline)")
    ap.add_argument("--tile-image-score", default=None, help="the image score of tiled batches (--tile-image-score)")
    ap.add_argument("--layers", default=None, help="the blocks tapped (--layers, comma-separated; default: the preset's)")
    ap.add_argument("--batches", default=None, help="only these batches (comma-separated names; default: all)")
    ap.add_argument("--cache", type=Path, default=ROOT / "bench-out" / "decision")
    ap.add_argument("--methods", default="balanced,balanced/half-peak,balanced/grown,balanced/mebin,balanced/image,"
                                         "fdr,gmm,gmm/mebin,gmm/image,mad,mad/image,otsu,otsu/image",
                    help="image method[/pixel method] pairs; without a pixel method, the batch's default (as `musc "
                         "score` draws it: 'half-peak' on whole images, the preset's tile_pixel_decision on tiles)")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    from musc.backbones import get_preset
    from musc.decision import PIXEL_METHODS, decide

    methods = [tuple((m + "/").split("/")[:2]) for m in args.methods.split(",")]
    tile_pixel = MuScConfig.for_method(args.method).tile_pixel_decision
    patch = get_preset("dinov2_vits14").patch_size  # pixels of one patch in the maps' frame, whole images or tiles
    layers = tuple(int(v) for v in args.layers.split(",")) if args.layers else None
    rule = (f" --map-rule {args.map_rule}" if args.map_rule else "") + (
        f" --tile-map-rule {args.tile_map_rule}" if args.tile_map_rule else "") + (
        f" --layers {args.layers}" if args.layers else "") + (
        f" --map-baseline {args.map_baseline:g}" if args.map_baseline is not None else "") + (
        f" --tile-image-score {args.tile_image_score}" if args.tile_image_score else "")
    chosen = order = batches()
    if args.batches:
        wanted = args.batches.split(",")
        unknown = sorted(set(wanted) - set(chosen))
        if unknown:
            raise SystemExit(f"unknown batch {', '.join(unknown)}; known: {', '.join(chosen)}")
        chosen = {k: v for k, v in chosen.items() if k in wanted}
    suffix = ("" if args.method == "musc" else f" --method {args.method}") + rule
    suffix += f" --batches {args.batches}" if args.batches else ""
    section = ("decision" if args.method == "musc" else f"decision-{args.method}") + variant_name(
        "", args.map_rule, args.tile_map_rule, layers, args.map_baseline, args.tile_image_score)
    kept = {}  # the rows of the batches not run again (--batches), from BENCHMARKS.md
    for row in section_rows(section) if args.batches else []:
        batch = row.split("|")[1].strip()
        if batch in order and batch not in chosen:
            kept.setdefault(batch, []).append(row)
    lines = [f"## Label-free decisions: F1 at the automatic threshold vs F1-max ({args.method + rule} maps)", "",
             f"`python benchmarks/bench_decision.py --size {args.size}{suffix}` — dinov2_vits14 at {args.size}; F1 in %, "
             "and as a share of F1-max (the oracle threshold that needs labels; no automatic method sees labels). "
             "Pixel F1 is over all pixels of the batch at the model's input size, masks drawn in the flagged images by "
             "the pixel rule after the slash; where none is named, by the batch's default as `musc score` draws "
             f"it: `half-peak` on whole images, `{tile_pixel}` on tiled batches. `mtd-80pct` is held "
             "out: it was not used to choose the default. `mtd-tall` and "
             "`mtd-wide` (elongated MTD images; tiled by the `-tiles` presets) were added after `balanced` was "
             "chosen, and seen when the two-group limit of the undecided check was set. `mtd-mid-tall` and "
             "`mtd-mid-wide` (MTD images 1.5 to 1.8 times as long as wide; scored whole) are held out, run after all "
             "of that. `mtd-tall-normal` and `mtd-wide-normal` (the normal images of `mtd-tall` and `mtd-wide` alone: "
             "all-normal elongated batches) are held out too, added after the default was chosen. "
             "`mtd-TYPE` / `mtd-TYPE-b` (the accuracy panel's one-defect-type sets: 80 normal images and 20 "
             "of one type, 12 for fray) were added after the `half-peak` masks were chosen, so they are held out for "
             "them. "
             "On tiled batches `balanced`'s count is capped by the relative evidence (`Result.relative_evidence`) "
             "where the cached run holds it (runs from 2026-11-30 on). "
             "Rate: the estimated defect rate with its 90 % interval (map-based methods only). "
             "`true count` rows are references, not methods: the top k images (k = the true number of defective "
             "ones) by the final scores or by the map maxima, what a rule reaches that knows exactly how many images "
             "are defective." + (" Rows of batches not named by `--batches` in a later run are kept from the "
                                  "run before it (they may list fewer methods)." if kept else ""), "",
             "| batch | defective | method | flagged | image F1 | F1-max | share | pixel F1 | pixel F1-max | share | "
             "est. rate | says |", "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---|---|"]
    rows: dict[str, list[str]] = {}
    pct = lambda v: "n/a" if v is None else f"{100 * v:.1f}"
    share = lambda a, b: "n/a" if a is None or not b else f"{100 * a / b:.0f}%"
    for name, samples in chosen.items():
        data = scored(name, samples, args.size, args.cache, args.method, args.map_rule, args.tile_map_rule, layers,
                      args.map_baseline, args.tile_image_score)
        labels, masks = data["labels"], data["masks"]
        img_oracle = f1_max(labels, data["scores"]) if labels.any() and not labels.all() else None
        pix_oracle = f1_max(masks.ravel(), data["maps"].ravel()) if masks.any() else None
        default_pixel = tile_pixel if "relative_evidence" in data else PIXEL_METHODS[0]  # tiled batches hold it
        batch_rows = rows.setdefault(name, [])
        for image_method, pixel_method in methods:
            method = f"{image_method}/{pixel_method}" if pixel_method else image_method
            d = decide(data["scores"], data["maps"], image_method, pixel_method=pixel_method or default_pixel,
                       evidence=data.get("evidence"), relative_evidence=data.get("relative_evidence"), patch=patch)
            fi, fp = f1(d.image.defective, labels), f1(d.masks, masks)
            rate = d.rate
            says = "cannot decide" if d.image.undecided else ("warns" if d.image.warnings else "")
            batch_rows.append(
                f"| {name} | {int(labels.sum())}/{len(labels)} | {method} | {d.image.count} | {pct(fi)} | "
                f"{pct(img_oracle)} | {share(fi, img_oracle)} | {pct(fp)} | {pct(pix_oracle)} | {share(fp, pix_oracle)} | "
                + (f"{100 * rate.estimate:.0f}% [{100 * rate.low:.0f}, {100 * rate.high:.0f}] "
                   f"(true {100 * labels.mean():.0f}%)" if rate is not None else "")
                + f" | {says} |")
            print(batch_rows[-1], flush=True)
        if labels.any() and not labels.all():  # references: a perfect estimate of how many images are defective
            k = int(labels.sum())
            maxima = data["maps"].reshape(len(labels), -1).max(axis=1)
            for key, ranking in (("scores", data["scores"]), ("map maxima", maxima)):
                top = np.zeros(len(labels), dtype=bool)
                top[np.argsort(-ranking, kind="stable")[:k]] = True
                fi = f1(top, labels)
                batch_rows.append(f"| {name} | {k}/{len(labels)} | true count, top by {key} (uses labels) | {k} | "
                                  f"{pct(fi)} | {pct(img_oracle)} | {share(fi, img_oracle)} | | | | | |")
                print(batch_rows[-1], flush=True)
    lines += [row for batch in order for row in rows.get(batch, kept.get(batch, []))]
    publish(section, lines, not args.no_write)


if __name__ == "__main__":
    main()
