"""`musc evaluate`: score each category of a labelled dataset and compute the paper's metrics.

Labels and masks are read only to compute metrics, after scoring; they never reach the model or
the subset split.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Literal, Sequence

import numpy as np

from .datasets import Category, get_reader, load_mask, resize_mask
from .errors import DatasetError
from .export import run_facts, write_result
from .io import ResultFolder, atomic_write_csv, atomic_write_text, check_output_folder
from .metrics import METRIC_COLUMNS, METRIC_TITLES, all_metrics
from .pipeline import MuSc
from .types import Result

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
MetricsSize = Literal["model", "original"]


@dataclass
class CategoryReport:
    """Metrics of one category (None = undefined) with counts, notes and timings."""

    name: str
    metrics: dict[str, float | None]
    num_images: int
    num_anomalous: int
    notes: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    skipped: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"category": self.name, "metrics": self.metrics, "num_images": self.num_images,
                "num_anomalous": self.num_anomalous, "notes": self.notes, "timings_s": self.timings}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "CategoryReport":
        return cls(data["category"], data["metrics"], data["num_images"], data["num_anomalous"], data.get("notes", []),
                   data.get("timings_s", {}), skipped=True)


def ground_truth(category: Category, result: Result, size: MetricsSize) -> tuple[list[np.ndarray], list[np.ndarray]] | None:
    """(masks, maps) at the evaluation size, or None when the category has no masks."""
    if not category.has_masks:
        return None
    masks, maps = [], []
    sizes = result.original_sizes or []
    for i, sample in enumerate(category.samples):
        mask = load_mask(sample, sizes[i])
        if size == "model":
            masks.append(resize_mask(mask, tuple(result.maps.shape[-2:])))
            maps.append(result.maps[i])
        else:
            masks.append(mask)
            maps.append(result.map_at_original_size(i))
    return masks, maps


def metrics_for(category: Category, result: Result, size: MetricsSize = "model") -> dict[str, float | None]:
    """The seven metrics of a scored category."""
    gt = ground_truth(category, result, size)
    return all_metrics(category.labels, result.scores, *(gt if gt is not None else (None, None)))


def check_category(category: Category) -> list[str]:
    """Raise on a category that cannot be evaluated; returns the notes on metrics it leaves undefined."""
    notes = category.check()
    if len(category.samples) < 2:
        raise DatasetError(f"category {category.name!r} has {len(category.samples)} test image(s); MuSc needs at least 2")
    return notes


def evaluate_category(model: MuSc, category: Category, size: MetricsSize = "model", progress: bool = True,
                      keep_pairs: bool = False) -> tuple[Result, CategoryReport]:
    """Score a category's test images (no labels involved), then compute its metrics."""
    notes = check_category(category)
    result = model.score([s.path for s in category.samples], progress=progress, keep_pairs=keep_pairs)
    t0 = time.perf_counter()
    metrics = metrics_for(category, result, size)
    result.timings["metrics"] = time.perf_counter() - t0
    report = CategoryReport(category.name, metrics, len(category.samples), int(category.labels.sum()), notes,
                            dict(result.timings))
    return result, report


def mean_metrics(reports: Sequence[CategoryReport]) -> dict[str, float | None]:
    """Mean over categories of each metric, over the categories where it is defined (None if none)."""
    out: dict[str, float | None] = {}
    for key in METRIC_COLUMNS:
        values = [r.metrics[key] for r in reports if r.metrics.get(key) is not None]
        out[key] = float(np.mean(values)) if values else None
    return out


def _pct(value: float | None) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.1f}"


def markdown_table(reports: Sequence[CategoryReport], title: str = "") -> str:
    """Per-category rows and the mean, in percent, in the paper's column order."""
    lines = [f"### {title}", ""] if title else []
    lines.append("| category | " + " | ".join(METRIC_TITLES) + " |")
    lines.append("|---|" + "---:|" * len(METRIC_TITLES))
    for r in reports:
        lines.append(f"| {r.name} | " + " | ".join(_pct(r.metrics.get(k)) for k in METRIC_COLUMNS) + " |")
    if len(reports) > 1:
        mean = mean_metrics(reports)
        lines.append("| **mean** | " + " | ".join(_pct(mean[k]) for k in METRIC_COLUMNS) + " |")
    return "\n".join(lines) + "\n"


def write_summary(out: Path, reports: Sequence[CategoryReport], extra: dict[str, Any] | None = None) -> None:
    """metrics.md, metrics.csv and metrics.json for all categories and their mean."""
    mean = mean_metrics(reports)
    atomic_write_text(out / "metrics.md", markdown_table(reports))
    rows = [[r.name, *("" if r.metrics.get(k) is None else f"{r.metrics[k]:.6f}" for k in METRIC_COLUMNS)]
            for r in reports]
    rows.append(["mean", *("" if mean[k] is None else f"{mean[k]:.6f}" for k in METRIC_COLUMNS)])
    atomic_write_csv(out / "metrics.csv", ["category", *METRIC_COLUMNS], rows)
    payload = {"categories": [r.to_dict() for r in reports], "mean": mean, **(extra or {})}
    atomic_write_text(out / "metrics.json", json.dumps(payload, indent=2) + "\n")


def draw_references(category: Category, shots: int, seed: int) -> list[Path]:
    """K training normals of a category drawn with a seed (sorted, so a seed always gives the same set)."""
    pool = sorted(category.train_normals)
    if len(pool) < shots:
        raise DatasetError(f"category {category.name!r} has {len(pool)} training normal image(s); "
                           f"--shots {shots} needs at least {shots}")
    picks = np.random.default_rng(seed).choice(len(pool), size=shots, replace=False)
    return [pool[i] for i in sorted(picks)]


def _pm(values: list[float | None]) -> str:
    vals = [v for v in values if v is not None]
    if not vals:
        return "n/a"
    return f"{100 * np.mean(vals):.1f} ± {100 * np.std(vals):.1f}"


def few_shot_table(runs: dict[str, dict[str, list[CategoryReport]]], shots: int) -> str:
    """Per mode: a table of mean ± std over seeds for each category, and the mean over categories."""
    out = []
    for mode, per_cat in runs.items():
        out += [f"### {mode}, {shots}-shot (mean ± std over {len(next(iter(per_cat.values())))} seeds)", "",
                "| category | " + " | ".join(METRIC_TITLES) + " |", "|---|" + "---:|" * len(METRIC_TITLES)]
        for name, reports in per_cat.items():
            out.append(f"| {name} | " + " | ".join(_pm([r.metrics.get(k) for r in reports]) for k in METRIC_COLUMNS) + " |")
        if len(per_cat) > 1:
            n_seeds = len(next(iter(per_cat.values())))
            per_seed = [mean_metrics([reports[i] for reports in per_cat.values()]) for i in range(n_seeds)]
            out.append("| **mean** | " + " | ".join(_pm([m[k] for m in per_seed]) for k in METRIC_COLUMNS) + " |")
        out.append("")
    return "\n".join(out)


def run_few_shot(dataset: str, root: str | Path, categories: Sequence[str] | None, model: MuSc, out: str | Path,
                 shots: int, seeds: Sequence[int], size: MetricsSize = "model", overwrite: bool = False,
                 progress: bool = True, on_report: Any = None) -> dict[str, dict[str, list[CategoryReport]]]:
    """K-shot evaluation in both modes (few-shot MuSc and MuSc+), each seed drawing its own references."""
    root, out = Path(root), check_output_folder(out, replaced=False)
    reader = get_reader(dataset)
    chosen = _choose(reader, root, dataset, categories)
    runs: dict[str, dict[str, list[CategoryReport]]] = {"musc": {}, "musc+": {}}
    for name in chosen:
        category = reader.load(root, name)
        notes = category.check()
        features = sizes = None
        paths = [s.path for s in category.samples]
        tiled = model.config_for(paths)[0].tile_scale is not None  # tiles 'auto' on near-square images: whole
        config = model.config if tiled else model.config.replace(tile_scale=None)
        for seed in seeds:
            for mode in runs:
                run_dir = out / name / f"{shots}shot-{mode.replace('+', 'plus')}-seed{seed}"
                if (run_dir / METRICS_FILE).is_file() and not overwrite:
                    report = CategoryReport.from_dict(json.loads((run_dir / METRICS_FILE).read_text()))
                else:
                    refs = draw_references(category, shots, seed)
                    scorer = MuSc(config.replace(mode=mode), backbone=model.backbone)
                    if tiled:  # test and reference images cut on one plan per run
                        result = scorer.score(paths, progress, references=refs)
                    else:
                        if features is None:
                            features, sizes = model.extract(paths, progress)
                        ref_features, _ = model.extract(refs, progress)
                        result = scorer.score_features(features, progress, references=ref_features)
                        result.original_sizes, result.paths = sizes, [str(p) for p in paths]
                    metrics = metrics_for(category, result, size)
                    report = CategoryReport(name, metrics, len(category.samples), int(category.labels.sum()),
                                            notes, dict(result.timings))
                    with ResultFolder(run_dir) as folder:
                        write_result(result, folder, root=root, save_maps=False, save_images=False, progress=False,
                                     columns={"label": [s.label for s in category.samples]},
                                     extra={"references": [str(p) for p in refs], "seed": seed, "mode": mode,
                                            "notes": result.notes})
                        atomic_write_text(folder / METRICS_FILE, json.dumps(report.to_dict(), indent=2) + "\n")
                runs[mode].setdefault(name, []).append(report)
                if on_report is not None:
                    on_report(report, mode, seed)
    text = few_shot_table(runs, shots)
    atomic_write_text(out / f"metrics_{shots}shot.md", text)
    payload = {mode: {name: [r.to_dict() for r in reports] for name, reports in per_cat.items()}
               for mode, per_cat in runs.items()}
    atomic_write_text(out / f"metrics_{shots}shot.json", json.dumps(
        {"shots": shots, "seeds": list(seeds), "runs": payload, "config": model.config.to_dict()}, indent=2) + "\n")
    return runs


def _choose(reader: Any, root: Path, dataset: str, categories: Sequence[str] | None) -> list[str]:
    known = reader.categories(root)
    if not known:
        raise DatasetError(f"{dataset}: no category found in {root}: expected the {reader.description} layout "
                           "(README, musc evaluate, lists each layout)")
    chosen = list(known) if not categories or list(categories) == ["all"] else list(categories)
    unknown = [c for c in chosen if c not in known]
    if unknown:
        raise DatasetError(f"{dataset}: unknown categories {', '.join(unknown)}; found: {', '.join(known)}")
    return chosen


def run_evaluation(dataset: str, root: str | Path, categories: Sequence[str] | None, model: MuSc, out: str | Path,
                   size: MetricsSize = "model", overwrite: bool = False, save_maps: bool = False,
                   save_images: bool = False, progress: bool = True,
                   on_report: Any = None) -> list[CategoryReport]:
    """Evaluate the chosen categories (None = all), resuming: a category with a metrics.json is skipped."""
    root = Path(root)
    out = check_output_folder(out, replaced=False)
    reader = get_reader(dataset)
    chosen = _choose(reader, root, dataset, categories)
    reports: dict[str, CategoryReport] = {}
    pending = []
    for name in chosen:
        if (out / name / METRICS_FILE).is_file() and not overwrite:
            reports[name] = CategoryReport.from_dict(json.loads((out / name / METRICS_FILE).read_text()))
            log.info("skipping %s: results exist (use --overwrite)", name)
            if on_report is not None:
                on_report(reports[name])
        else:
            pending.append(reader.load(root, name))
            check_category(pending[-1])  # broken ground truth stops the run before any work
    for category, result, report in _evaluated(model, pending, size, progress):
        columns = {"label": [s.label for s in category.samples],
                   "defect_type": [s.defect_type for s in category.samples]}
        with ResultFolder(out / category.name) as folder:  # replaced whole: a category folder never mixes two runs
            write_result(result, folder, root=root, save_maps=save_maps, save_images=save_images,
                         progress=progress, columns=columns, extra={"notes": result.notes})
            atomic_write_text(folder / METRICS_FILE, json.dumps(report.to_dict(), indent=2) + "\n")
        reports[category.name] = report
        if on_report is not None:
            on_report(report)
    reports = [reports[name] for name in chosen]
    write_summary(out, reports, {"dataset": dataset, "root": str(root), "metrics_size": size,
                                 "engine": model.config.engine, "config": model.config.to_dict(), **run_facts()})
    return reports


def _evaluated(model: MuSc, categories: list[Category], size: MetricsSize, progress: bool
               ) -> Iterator[tuple[Category, Result, CategoryReport]]:
    """(category, result, report) for each category: one after another here, or as Ray tasks, which finish in
    any order (the driver still writes every result folder)."""
    if model.config.engine == "ray" and categories:
        from .distributed import RayEngine

        yield from RayEngine(model).evaluate(categories, size, progress)
        return
    for category in categories:
        result, report = evaluate_category(model, category, size, progress)
        yield category, result, report


__all__ = ["run_few_shot", "draw_references", "few_shot_table", "CategoryReport", "evaluate_category", "metrics_for", "run_evaluation", "write_summary", "markdown_table",
           "mean_metrics", "ground_truth"]
