"""Image scores compared on every labelled set of the accuracy panel: which rule turns the per-view maps into the
score an image is ranked by.

One run of the preset per set keeps what every rule reads (`Result.view_maxima`: each stage-1 view's per-image map
maxima, LNAMD's r = 1, 3, 5; the mean map's maxima; the re-scoring embeddings). Each rule's raw scores are then
re-scored as the run was (RsCIN on whole images, nothing on tiled batches in the default preset), so the rules
differ only in the image score. The rule the preset uses must reproduce the run's final scores, which checks the
offline path against the pipeline.

Rules: the registry's (`musc.rescoring.IMAGE_SCORES`: max, scale-max, finest-max) and, as candidates tried, each
other single view's maxima and softer combinations of the views' min-max-scaled maxima than scale-max's largest
(their mean, and their L2 and L4 norms).

Usage: python benchmarks/bench_image_scores.py [--size 224] [--method musc-scales-tiles] [--datasets ksdd,mtd-200]
       [--cache bench-out/image-scores] [--no-write]
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable

import numpy as np

from bench_accuracy import DATASETS, ELONGATED, HELD_OUT, samples
from common import ROOT, publish

from musc.metrics import auroc
from musc.rescoring import IMAGE_SCORES, minmax, rscin

Rule = Callable[[np.ndarray, np.ndarray, int], np.ndarray]


def scaled_norm(p: float) -> Rule:
    """The L-p norm (over views) of each view's min-max-scaled maxima: p = 1 their mean, large p their largest."""
    return lambda map_maxima, view_maxima, finest: np.mean(
        [minmax(row) ** p for row in view_maxima], axis=0) ** (1 / p)


def single_view(index: int) -> Rule:
    return lambda map_maxima, view_maxima, finest: view_maxima[index]


def rules(views: list[str], finest: int) -> dict[str, Rule]:
    """The registry's image scores, then the candidates: each view but the finest alone (`finest-max` is that one;
    `views` are the run's labels, `MuSc.views()`), and the norms over views."""
    out: dict[str, Rule] = {name: score.run for name, score in IMAGE_SCORES.items()}
    for index, label in enumerate(views):
        if index != finest:
            out[f"r = {label} only"] = single_view(index)
    out.update({"scaled mean": scaled_norm(1), "scaled L2": scaled_norm(2), "scaled L4": scaled_norm(4)})
    return out


def run(name: str, method: str, size: int, cache: Path) -> dict[str, np.ndarray]:
    """What every rule reads, from one run of `method` on the set (cached)."""
    path = cache / f"{name}-{method}-{size}.npz"
    if path.is_file():
        return dict(np.load(path))
    from musc import MuSc, MuScConfig
    from musc.scoring import finest_view_index

    chosen = samples(name)
    model = MuSc(MuScConfig.for_method(method, backbone="dinov2_vits14", image_size=size, device="cpu"))
    result = model.score([s.path for s in chosen], progress=False)
    if result.view_maxima is None:
        raise SystemExit(f"{method} on {name} kept no per-view maxima (its image score reads none)")
    tiled = result.evidence is not None
    config = result.config
    windows = () if config.rescoring_for(tiled) == "none" else config.rscin_windows
    data = {"labels": np.array([s.label for s in chosen], dtype=bool), "scores": result.scores,
            "map_maxima": result.map_maxima(), "view_maxima": result.view_maxima, "embeddings": result.embeddings,
            "finest": np.array(finest_view_index(model.views())), "views": np.array([str(v) for v in model.views()]),
            "windows": np.array(windows, dtype=int),
            "image_score": np.array(config.image_score_for(tiled))}
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(path, **data)
    return data


def final_scores(rule: Rule, data: dict[str, np.ndarray]) -> np.ndarray:
    raw = rule(data["map_maxima"], data["view_maxima"], int(data["finest"]))
    windows = tuple(int(k) for k in data["windows"])
    return rscin(raw, data["embeddings"], windows) if windows else np.asarray(raw, dtype=np.float64)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--method", default="musc-scales-tiles")
    ap.add_argument("--datasets", default=",".join([*DATASETS, *HELD_OUT, *ELONGATED]))
    ap.add_argument("--cache", type=Path, default=ROOT / "bench-out" / "image-scores")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    names = args.datasets.split(",")
    table: dict[str, dict[str, float]] = {}
    reference: dict[str, float] = {}
    columns: list[str] = []
    for name in names:
        data = run(name, args.method, args.size, args.cache)
        labels = data["labels"]
        candidates = rules([str(v) for v in data["views"]], int(data["finest"]))
        used = str(data["image_score"])
        np.testing.assert_allclose(final_scores(candidates[used], data), data["scores"], atol=1e-6,
                                   err_msg=f"the offline {used} does not reproduce the run's scores on {name}")
        table[name] = {rule: 100 * auroc(labels, final_scores(f, data)) for rule, f in candidates.items()}
        columns = columns or list(candidates)
        paper = run(name, "musc", args.size, args.cache)
        if paper["labels"].tolist() != labels.tolist():
            raise SystemExit(f"the cached musc run of {name} holds other images")
        reference[name] = 100 * auroc(labels, paper["scores"])
        print(name, " ".join(f"{k} {v:.1f}" for k, v in table[name].items()), flush=True)
    suffix = "" if args.datasets == ap.get_default("datasets") else f" --datasets {args.datasets}"
    lines = [f"## Image scores on the accuracy panel's sets ({args.method})", "",
             f"`python benchmarks/bench_image_scores.py --size {args.size} --method {args.method}{suffix}` — "
             f"dinov2_vits14 at {args.size}. AUROC-cls (%) of the final scores when only the image score changes: one "
             "run of the preset per set keeps each view's map maxima (`Result.view_maxima`), and each rule's raw "
             "scores are re-scored as the run was (RsCIN on whole images; tiled batches, ksdd, mtd-tall and "
             "mtd-wide, are not re-scored in the default preset). `max`, `scale-max`, `finest-max`: the registry's "
             "rules (`scale-max` the default's; `finest-max` = r = 1 only); the others are candidates: one other "
             "view alone, and the mean, L2 and L4 norms over views of the min-max-scaled maxima (`scale-max` is "
             "their largest). `musc`: the paper's preset, run on the same images. Under the table: the mean "
             "over the sets, and each rule against `musc` (mean and worst difference, sets more than a point below).",
             "", "| set | musc | " + " | ".join(f"`{c}`" if c in IMAGE_SCORES else c for c in columns) + " |",
             "|---|---:|" + "---:|" * len(columns)]
    for name in names:
        lines.append(f"| {name} | {reference[name]:.1f} | " + " | ".join(f"{table[name][c]:.1f}" for c in columns)
                     + " |")
    lines.append(f"| mean | {np.mean(list(reference.values())):.1f} | "
                 + " | ".join(f"{np.mean([table[n][c] for n in names]):.1f}" for c in columns) + " |")
    cells = []
    for c in columns:
        delta = np.array([table[n][c] - reference[n] for n in names])
        below = [n for n, d in zip(names, delta) if d < -1]
        cells.append(f"{delta.mean():+.1f} / {delta.min():+.1f} ({names[int(delta.argmin())]}) / "
                     + (", ".join(below) if below else "none"))
    lines.append("| vs `musc`: mean / worst / more than 1 below | | " + " | ".join(cells) + " |")
    publish(f"image-scores-{args.method}", lines, not args.no_write)


if __name__ == "__main__":
    main()
