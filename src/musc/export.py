"""Writing a Result to a folder: scores table, raw maps, heatmaps, overlays, configuration.

Every input gets its own output stem (`io.output_names`), and scores.csv names each image's files, so
no result overwrites another. The command line writes into an `io.ResultFolder`, which replaces the
whole folder at once; scores.csv, the table a person reads first, is written last.
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from .decision import Decision
from .io import atomic_save_npy, atomic_save_png, atomic_write_csv, atomic_write_text, output_names, read_image
from .types import Result
from .visualization import heatmap, overlay

SCORES_FILE = "scores.csv"
CONFIG_FILE = "config.json"


def run_facts() -> dict[str, Any]:
    """Versions and machine facts stored next to every result so a run can be repeated."""
    import timm
    import torch

    from . import __version__

    return {
        "musc_version": __version__,
        "torch_version": torch.__version__,
        "timm_version": timm.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def write_result(result: Result, out: str | Path, root: str | Path | None = None, save_maps: bool = True,
                 save_images: bool = True, progress: bool = True, extra: dict[str, Any] | None = None,
                 columns: dict[str, Sequence[Any]] | None = None, decision: Decision | None = None,
                 masks: np.ndarray | None = None, pixel_info: dict[str, Any] | None = None) -> Path:
    """Write result files into `out`; returns the path of scores.csv.

    `columns` adds per-image columns to scores.csv (e.g. ground-truth labels in an evaluation). With a
    `decision`, scores.csv gets a `decision` column (and, from a map-based decision that decided, each image's
    `tail_probability` under the batch's null and its `q_value`) and decision.json says how the threshold was chosen;
    `masks` (N, S, S) are written as masks/NAME.png at each image's original size.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    n = len(result)
    paths = [Path(p) for p in result.paths] if result.paths else [Path(f"image_{i:05d}.png") for i in range(n)]
    names = output_names(paths, Path(root) if root is not None else None)
    files = {kind: [f"{kind}s/{name}.{ext}" if wanted else "" for name in names]
             for kind, ext, wanted in (("map", "npy", save_maps), ("mask", "png", masks is not None),
                                       ("heatmap", "png", save_images), ("overlay", "png", save_images and bool(result.paths)))}
    lo, hi = float(result.maps.min()), float(result.maps.max())
    if save_maps or save_images or masks is not None:
        for i in tqdm(range(n), desc="writing", unit="img", disable=not progress, leave=False):
            amap = result.map_at_original_size(i).astype(np.float32)
            if save_maps:
                atomic_save_npy(out / files["map"][i], amap)
            if masks is not None:
                m = Image.fromarray(masks[i].astype(np.uint8) * 255)
                if result.original_sizes is not None:
                    m = m.resize(result.original_sizes[i], Image.NEAREST)
                atomic_save_png(out / files["mask"][i], m)
            if save_images:
                atomic_save_png(out / files["heatmap"][i], heatmap(amap, lo, hi))
                if result.paths:
                    atomic_save_png(out / files["overlay"][i], overlay(read_image(paths[i]), amap, lo, hi))
    facts = {**run_facts(), "weights": result.weights_source, "num_images": n, "timings_s": result.timings, "map_range": [lo, hi], **(extra or {})}
    result.config.save(out / CONFIG_FILE, extra=facts)
    map_max = result.map_maxima()  # computed once: the ranking's tie-break, a column, and the evidence of whole images
    order = result.ranking(map_max)
    columns = dict(columns or {})
    if decision is not None:
        columns["decision"] = decision.labels()
        q_values = None if decision.undecided else decision.q_values  # computed once: the property adjusts anew
        if q_values is not None:
            columns["tail_probability"] = [f"{v:.3g}" for v in decision.p_values]
            columns["q_value"] = [f"{v:.3g}" for v in q_values]
        payload = {"image": decision.to_dict(), "pixel": pixel_info or {}}
        atomic_write_text(out / "decision.json", json.dumps(payload, indent=2, default=float) + "\n")
    evidence = result.decision_evidence(map_max)  # what balanced and fdr test: map_max, or on tiles the finest view's
    rows = [(rank + 1, str(paths[i]), f"{result.scores[i]:.6f}", f"{result.raw_scores[i]:.6f}", f"{map_max[i]:.6f}",
             f"{evidence[i]:.6f}", names[i], *(values[i] for values in columns.values()),
             *(f[i] for f in files.values()))
            for rank, i in enumerate(order)]
    scores_path = out / SCORES_FILE
    atomic_write_csv(scores_path, ("rank", "path", "score", "raw_score", "map_max", "evidence", "name", *columns,
                                   *files), rows)
    return scores_path


__all__ = ["write_result", "run_facts", "SCORES_FILE", "CONFIG_FILE"]
