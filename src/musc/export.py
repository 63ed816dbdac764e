"""Writing a Result to a folder: scores table, raw maps, heatmaps, overlays, configuration.

Every input gets its own output stem (`io.output_names`), and scores.csv names each image's files, so
no result overwrites another. The command line writes into an `io.ResultFolder`, which replaces the
whole folder at once; scores.csv, the table a person reads first, is written last.
"""

from __future__ import annotations

import json
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from .decision import PIXEL_METHODS, Decision
from .errors import InputError
from .io import (atomic_save_npy, atomic_save_png, atomic_write_csv, atomic_write_text, output_names, read_image,
                 read_scores_table)
from .types import Result, resize_map
from .visualization import heatmap, overlay

SCORES_FILE = "scores.csv"
CONFIG_FILE = "config.json"
MAP_SIZE = "map_size"
"""config.json's key for the maps' size in the model's frame (height, width): what `musc decide` decides on."""
INPUT_ORDER = "input_order"
"""config.json's key for the images' names in the order they were scored: `musc decide` reads the rows back in that
order (the decision itself does not depend on the order: the null's bootstrap resamples the sorted evidence)."""
REFERENCE_NULL = "reference_null"
"""config.json's key for the bank's null a run decided with (`musc.decision.ReferenceNull`'s fields), which `musc
decide` decides with again."""
MAP_PATCH = "map_patch"
"""config.json's key for the pixels of one patch in the maps' frame (`Result.map_patch`), which `grown` masks
smooth over."""
PIXEL_DECISION = "pixel_decision"
"""config.json's key for the mask rule the run's maps are decided with unless the user names one
(`Result.pixel_decision`): `musc decide`'s default too. Folders written before it existed: 'half-peak'."""
DECISION_COLUMNS = ("decision", "tail_probability", "q_value")
FILE_COLUMNS = ("map", "mask", "heatmap", "overlay")


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


def save_mask(path: Path, mask: np.ndarray, size: tuple[int, int] | None) -> None:
    """A binary mask as a 0/255 PNG, resized (nearest) to the image's original `size` (width, height) when given."""
    image = Image.fromarray(np.asarray(mask).astype(np.uint8) * 255)
    atomic_save_png(path, image if size is None else image.resize(tuple(size), Image.NEAREST))


def decision_columns(decision: Decision) -> dict[str, list[str]]:
    """scores.csv's columns from a decision: `decision` and, from a map-based decision that decided, each image's
    `tail_probability` under the batch's null and its `q_value` (DECISION_COLUMNS)."""
    columns = {"decision": decision.labels()}
    q_values = None if decision.undecided else decision.q_values  # computed once: the property adjusts anew
    if q_values is not None:
        columns["tail_probability"] = [f"{v:.3g}" for v in decision.p_values]
        columns["q_value"] = [f"{v:.3g}" for v in q_values]
    return columns


def write_decision_json(out: Path, decision: Decision, pixel_info: dict[str, Any] | None) -> None:
    payload = {"image": decision.to_dict(), "pixel": pixel_info or {}}
    atomic_write_text(out / "decision.json", json.dumps(payload, indent=2, default=float) + "\n")


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
                save_mask(out / files["mask"][i], masks[i], None if result.original_sizes is None
                          else result.original_sizes[i])
            if save_images:
                atomic_save_png(out / files["heatmap"][i], heatmap(amap, lo, hi))
                if result.paths:
                    atomic_save_png(out / files["overlay"][i], overlay(read_image(paths[i]), amap, lo, hi))
    facts = {**run_facts(), "weights": result.weights_source, "num_images": n, "timings_s": result.timings, "map_range": [lo, hi],
             MAP_SIZE: list(result.maps.shape[1:]), MAP_PATCH: result.map_patch(),
             PIXEL_DECISION: result.pixel_decision(), INPUT_ORDER: names, **(extra or {})}
    result.config.save(out / CONFIG_FILE, extra=facts)
    map_max = result.map_maxima()  # computed once: the ranking's tie-break, a column, and the evidence of whole images
    order = result.ranking(map_max)
    columns = dict(columns or {})
    if decision is not None:
        columns.update(decision_columns(decision))
        write_decision_json(out, decision, pixel_info)
    evidence = result.decision_evidence(map_max)  # what balanced and fdr test: map_max, or on tiles the finest view's
    relative = ([""] * n if result.relative_evidence is None  # whole images: none
                else [f"{v:.6f}" for v in result.relative_evidence])
    rows = [(rank + 1, str(paths[i]), f"{result.scores[i]:.6f}", f"{result.raw_scores[i]:.6f}", f"{map_max[i]:.6f}",
             f"{evidence[i]:.6f}", relative[i], names[i], *(values[i] for values in columns.values()),
             *(f[i] for f in files.values()))
            for rank, i in enumerate(order)]
    scores_path = out / SCORES_FILE
    atomic_write_csv(scores_path, ("rank", "path", "score", "raw_score", "map_max", "evidence", "relative_evidence",
                                   "name", *columns, *files), rows)
    return scores_path


@dataclass
class SavedResult:
    """What `musc decide` reads back from a result folder: scores.csv's rows (in the order the images were scored)
    and header, the final
    scores (N,), the decisions' evidence (N,; None when it is the map maxima, as on whole images) and relative
    evidence (N,; None on whole images, and in folders written before it existed), the map maxima (N,), the maps
    in the model's frame (N, H, W) and each image's original size (width, height)."""

    folder: Path
    header: list[str]
    rows: list[dict[str, str]]
    scores: np.ndarray
    evidence: np.ndarray | None
    map_max: np.ndarray
    maps: np.ndarray
    sizes: list[tuple[int, int]]
    relative_evidence: np.ndarray | None = None
    reference_null: Any = None
    """The bank's null the run decided with (`musc.decision.ReferenceNull`; config.json's `reference_null`), or None."""
    pixel_decision: str = PIXEL_METHODS[0]
    """The mask rule the run's maps are decided with unless the user names one (config.json's `pixel_decision`)."""
    map_patch: float | None = None
    """Pixels of one patch in the maps' frame (config.json's `map_patch`); None in folders written before it."""


def read_saved_result(folder: str | Path, progress: bool = False) -> SavedResult:
    """Read a `musc score` result folder back for a new decision. Its raw maps (maps/NAME.npy, at each image's
    original size) are resized bilinearly to the model's frame the run decided on (config.json's map_size), for the
    masks; what the image decisions read (scores, map maxima, evidence) comes from scores.csv, as the run wrote it
    (6 decimals). So a decision drawn again with the same options flags the same images, and its masks are within
    a pixel or so of the first ones."""
    folder = Path(folder)
    scores_csv, header, rows = read_scores_table(folder)
    missing = [c for c in ("score", "map_max", "evidence", "name", "map") if c not in header]
    if missing:
        raise InputError(f"{scores_csv} has no {', '.join(missing)} column: it was not written by this version of "
                         "`musc score`")
    config = folder / CONFIG_FILE
    facts = json.loads(config.read_text()) if config.is_file() else {}
    if MAP_SIZE not in facts:
        raise InputError(f"{config} does not say the maps' size ({MAP_SIZE}): score the images again with this "
                         "version of musc to decide them with `musc decide`")
    height, width = (int(v) for v in facts[MAP_SIZE])
    position = {name: i for i, name in enumerate(facts.get(INPUT_ORDER, []))}
    if len(position) == len(rows) and all(r.get("name") in position for r in rows):
        rows = sorted(rows, key=lambda r: position[r["name"]])
    maps, sizes = np.empty((len(rows), height, width), dtype=np.float32), []
    for i, row in enumerate(tqdm(rows, desc="reading maps", unit="img", disable=not progress, leave=False)):
        path = folder / row["map"] if row["map"] else None
        if path is None or not path.is_file():
            raise InputError(f"{folder} has no raw map for {row['path']} (maps/*.npy): `musc decide` needs them; "
                             "score without --no-maps")
        amap = np.load(path)
        if amap.ndim != 2:
            raise InputError(f"{path} is not a 2-D anomaly map (shape {amap.shape})")
        sizes.append((amap.shape[1], amap.shape[0]))
        maps[i] = resize_map(amap, (height, width))
    try:
        scores = np.array([float(r["score"]) for r in rows])
        evidence = np.array([float(r["evidence"]) for r in rows])
        map_max = np.array([float(r["map_max"]) for r in rows])
        relative = (np.array([float(r["relative_evidence"]) for r in rows])
                    if all(r.get("relative_evidence") for r in rows) else None)  # tiled runs of this version
    except ValueError as e:
        raise InputError(f"{scores_csv}: a score or evidence value is not a number ({e})") from None
    whole = relative is None and all(r["evidence"] == r["map_max"] for r in rows)  # whole images: map maxima tested
    null = None
    if facts.get(REFERENCE_NULL):
        from .decision import ReferenceNull

        try:
            null = ReferenceNull(**facts[REFERENCE_NULL])
        except TypeError as e:
            raise InputError(f"{config}: its {REFERENCE_NULL} is not a bank's null ({e})") from None
    pixel = facts.get(PIXEL_DECISION, PIXEL_METHODS[0])
    if pixel not in PIXEL_METHODS:
        raise InputError(f"{config}: its {PIXEL_DECISION} {pixel!r} is not one of {', '.join(PIXEL_METHODS)}")
    return SavedResult(folder, header, rows, scores, None if whole else evidence, map_max, maps, sizes, relative, null,
                       pixel, facts.get(MAP_PATCH))


def write_decision(saved: SavedResult, decision: Decision, masks: np.ndarray, pixel_info: dict[str, Any] | None,
                   progress: bool = False) -> Path:
    """Replace a result folder's decision: masks/NAME.png (one per image, at its original size), decision.json and
    scores.csv's decision columns (the other columns and the rows' order stay). Each file is replaced whole, and
    scores.csv, the table a person reads first, last. Returns its path."""
    folder = saved.folder
    names = [r["name"] for r in saved.rows]
    files = [f"masks/{name}.png" for name in names]
    for i in tqdm(range(len(names)), desc="writing masks", unit="img", disable=not progress, leave=False):
        save_mask(folder / files[i], masks[i], saved.sizes[i])
    write_decision_json(folder, decision, pixel_info)
    columns = decision_columns(decision)
    kept = [c for c in saved.header if c not in DECISION_COLUMNS and c != "mask"]
    first_file = next((i for i, c in enumerate(kept) if c in FILE_COLUMNS), len(kept))
    header = [*kept[:first_file], *columns, *kept[first_file:]]
    header.insert(header.index("map") + 1, "mask")  # where `musc score` puts it (read_saved_result needs "map")
    rows = [[columns[c][i] if c in columns else files[i] if c == "mask" else row.get(c, "") for c in header]
            for i, row in enumerate(saved.rows)]
    if "rank" in header:  # scores.csv lists the images by rank, as `musc score` writes it
        rank = header.index("rank")
        rows.sort(key=lambda r: int(r[rank]))
    scores_path = folder / SCORES_FILE
    atomic_write_csv(scores_path, header, rows)
    return scores_path


__all__ = ["write_result", "run_facts", "read_saved_result", "write_decision", "SavedResult", "save_mask",
           "decision_columns", "SCORES_FILE", "CONFIG_FILE", "MAP_SIZE", "INPUT_ORDER", "REFERENCE_NULL",
           "MAP_PATCH", "PIXEL_DECISION"]
