"""A bank of reference features: extracted once from known-good images, reused to score new images one at a time.

The bank stores each tapped block's patch tokens of every reference image (float32, safetensors) and
the settings they were made with: backbone, weights, input size, blocks and r values. LNAMD is
recomputed from the tokens when the bank is used (milliseconds), which keeps the file three times
smaller than storing every (block, r) pair and the results identical to scoring with the images. A
SHA-256 checksum over the tensors guards against a damaged file.

Built with tiles (`--tiles`), the bank holds every tile position's tokens and the plan the references were cut
on (canvas and tile positions); new images are cut on that plan, so the result is the one with the reference
images themselves when the images have the references' size.

With at least three references, the bank also holds each reference's evidence and map maximum when it is scored
against the others as MuSc+ scores a new image (leave one out): what a normal image's evidence looks like against
this bank, the null of `musc.decision.decide_against_references` (`Bank.reference_null`). Reference images given
without a bank get the same kind of null: `leave_one_out` on their features for MuSc+, `few_shot_null` for few-shot
MuSc.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch

from .decision import MIN_REFERENCES
from .errors import InputError
from .types import Features, TiledFeatures

if TYPE_CHECKING:
    from .tiling import Plan

FORMAT = "musc-bank/1"
SETTINGS = ("backbone", "image_size", "layers", "r_values", "weights", "tiles")


def _checksum(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for key in sorted(tensors):
        h.update(key.encode())
        h.update(tensors[key].contiguous().numpy().tobytes())
    return h.hexdigest()


@dataclass
class Bank:
    """Reference features plus the settings that made them."""

    features: Features | TiledFeatures
    settings: dict[str, Any]
    paths: list[str]
    reference_evidence: np.ndarray | None = None
    """(K,) each reference's evidence scored against the others with MuSc+ (`leave_one_out`); None in banks of fewer
    than three references or built before musc kept it."""
    reference_map_max: np.ndarray | None = None
    """(K,) the same runs' map maxima."""

    @property
    def size(self) -> int:
        return self.features.num_images

    def save(self, path: str | Path) -> Path:
        """Write the bank as one safetensors file, atomically."""
        from safetensors.torch import save_file

        path = Path(path)
        tiled = isinstance(self.features, TiledFeatures)
        parts = self.features.positions if tiled else [self.features]
        tensors = {}
        for k, part in enumerate(parts):
            prefix = f"tiles.{k}." if tiled else ""
            tensors.update({f"{prefix}tokens.{i}": t.detach().cpu().float().contiguous() for i, t in enumerate(part.tokens)})
            tensors[f"{prefix}embeddings"] = part.embeddings.detach().cpu().float().contiguous()
        if self.reference_evidence is not None and self.reference_map_max is not None:
            tensors["reference.evidence"] = torch.as_tensor(np.asarray(self.reference_evidence, dtype=np.float64))
            tensors["reference.map_max"] = torch.as_tensor(np.asarray(self.reference_map_max, dtype=np.float64))
        meta = {"format": FORMAT, "settings": json.dumps(self.settings), "paths": json.dumps(self.paths),
                "sha256": _checksum(tensors)}
        if tiled:
            meta["plan"] = json.dumps({"canvas": list(self.features.canvas),
                                       "starts": [list(xy) for xy in self.features.starts]})
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        save_file(tensors, str(tmp), metadata=meta)
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Bank":
        """Read a bank; InputError if it is missing, not a bank, or damaged."""
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise InputError(f"bank not found: {path}")
        try:
            with safe_open(str(path), framework="pt") as fh:
                meta = fh.metadata() or {}
                tensors = {k: fh.get_tensor(k) for k in fh.keys()}
        except Exception as exc:  # noqa: BLE001
            raise InputError(f"cannot read bank {path}: {exc}") from exc
        if meta.get("format") != FORMAT:
            raise InputError(f"{path} is not a musc bank (format {meta.get('format')!r})")
        if _checksum(tensors) != meta.get("sha256"):
            raise InputError(f"bank {path} is damaged: its checksum does not match")
        def part(prefix: str) -> Features:
            count = sum(1 for k in tensors if k.startswith(f"{prefix}tokens."))
            return Features([tensors[f"{prefix}tokens.{i}"] for i in range(count)], tensors[f"{prefix}embeddings"])

        features: Features | TiledFeatures
        if "plan" in meta:
            plan = json.loads(meta["plan"])
            features = TiledFeatures([part(f"tiles.{k}.") for k in range(len(plan["starts"]))],
                                     tuple(plan["canvas"]), [tuple(xy) for xy in plan["starts"]])
        else:
            features = part("")
        held = [tensors[k].numpy() if k in tensors else None for k in ("reference.evidence", "reference.map_max")]
        return cls(features, json.loads(meta["settings"]), json.loads(meta["paths"]), *held)

    @property
    def reference_null(self) -> Any:
        """The null of `musc.decision.decide_against_references` from the references' leave-one-out evidence, or
        None when the bank holds none."""
        if self.reference_evidence is None:
            return None
        from .decision import reference_null

        return reference_null(self.reference_evidence, self.reference_map_max)

    @property
    def tiled(self) -> bool:
        return isinstance(self.features, TiledFeatures)

    def check_matches(self, settings: dict[str, Any]) -> None:
        """Refuse a bank made with other settings than the current run, naming each difference.

        Tiles: a tiled bank needs the same tile settings; a bank without tiles also serves `--tiles auto`, which
        then scores whole images (as it does with any whole-image references)."""
        whole_for_auto = self.settings.get("tiles") is None and (settings.get("tiles") or {}).get("scale") == "auto"
        diffs = [f"{k}: bank {self.settings.get(k)!r}, run {settings.get(k)!r}" for k in SETTINGS
                 if _norm(self.settings.get(k)) != _norm(settings.get(k)) and not (k == "tiles" and whole_for_auto)]
        if diffs:
            raise InputError("the bank was made with other settings than this run (" + "; ".join(diffs)
                             + "); rebuild it with `musc bank build` and the same options")


def _norm(value: Any) -> Any:
    return list(value) if isinstance(value, (tuple, list)) else value


def tiles_setting(config: Any) -> dict[str, Any] | None:
    """How a run cuts tiles, as a bank records it: None for whole images."""
    if config.tile_scale is None:
        return None
    return {"scale": config.tile_scale, "overlap": config.tile_overlap}


def run_settings(model: Any) -> dict[str, Any]:
    """The settings of a MuSc model that a bank must share with it."""
    bb = model.backbone
    return {"backbone": bb.preset.name, "image_size": bb.image_size, "layers": list(bb.layers),
            "r_values": list(model.config.r_values), "weights": bb.weights_source, "tiles": tiles_setting(model.config)}


def _cpu(features: Features | TiledFeatures) -> Features | TiledFeatures:
    if isinstance(features, TiledFeatures):
        return TiledFeatures([_cpu(f) for f in features.positions], features.canvas, features.starts)
    return Features([t.cpu() for t in features.tokens], features.embeddings.cpu())


def leave_one_out(model: Any, features: Features | TiledFeatures, progress: bool = True
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Each reference image scored against the features of the others as MuSc+ scores a new image against a bank:
    its evidence (`Result.decision_evidence`) and its map maximum, (K,) each. All K at once on the local engine
    (`MuSc.score_each_against_others`, on this process whatever the engine): stage 1 once, one pair-symmetric
    distance table per (block, view)."""
    from .tiling import TiledScorer

    results = (TiledScorer(model).score_each_against_others(features, progress)
               if isinstance(features, TiledFeatures) else model.score_each_against_others(features, progress))
    return (np.array([float(r.decision_evidence()[0]) for r in results]),
            np.array([float(r.map_maxima()[0]) for r in results]))


def reference_features(model: Any, references: Sequence[Any], images: Sequence[Any], progress: bool = True
                       ) -> Features | TiledFeatures:
    """The reference images' features as `model.score(images, references=references)` uses them: whole images, or
    tiles cut on the plan of `images` (tiles 'auto' resolved for them). Scoring `images` against these gives that
    result, and `leave_one_out` on them the references' null without extracting them twice."""
    resolved, plan, _, _ = _batch_plan(model, images, references)
    return _cpu(_extract_on(resolved, references, plan, progress))


def _batch_plan(model: Any, images: Sequence[Any], references: Sequence[Any]
                ) -> tuple[Any, Plan | None, list[tuple[int, int]] | None, str]:
    """`model` as `model.score(images, references=references)` resolves it (tiles 'auto'), the tile plan of
    `images` with their sizes (None, None for whole images), and the configuration's note."""
    from .tiling import TiledScorer, image_sizes

    config, note = model.config_for(images, references)
    resolved = type(model)(config, backbone=model.backbone)
    if config.tile_scale is None:
        return resolved, None, None, note
    sizes = image_sizes(images)
    return resolved, TiledScorer(resolved).plan(sizes), sizes, note


def _extract_on(model: Any, images: Sequence[Any], plan: Plan | None, progress: bool = True
                ) -> Features | TiledFeatures:
    """The features of `images`: whole (no plan), or tiles cut on `plan`."""
    from .tiling import TiledScorer

    return model.extract(images, progress)[0] if plan is None else TiledScorer(model).features(images, progress, plan)


def few_shot_null(model: Any, references: Sequence[Any], images: Sequence[Any], progress: bool = True) -> Any:
    """Few-shot MuSc's null (mode 'musc'): each reference image scored as the test `images` are, against the other
    references and the test images (those of one of their subsets with config.subsets: `few_shot_reference_null`).
    Without subsets both are the zero-shot MSM of the union, each image against all the others, so a normal test
    image's evidence and a reference's come from one distribution: the references' evidence is a sample of what a
    normal image's looks like in this batch (`musc.decision.reference_null`; at least MIN_REFERENCES of them)."""
    _check_few_shot(model, references, images)
    few_shot, test, refs, _, _ = _few_shot_features(model, references, images, progress)
    return few_shot_reference_null(few_shot, refs, test, progress)


def few_shot_scores(model: Any, references: Sequence[Any], images: Sequence[Any], progress: bool = True
                    ) -> tuple[Any, Any]:
    """Few-shot MuSc of `images` against `references` (`model.score(images, references=references)` with mode
    'musc') and the references' null (`few_shot_null`), every image extracted once: both passes score the same
    features (`MuSc.score_features`). The Ray engine extracts on its workers, so there the test images are scored
    on it and the null is read here from features extracted again."""
    _check_few_shot(model, references, images)
    if model.config.engine == "ray":
        return model.score(images, progress=progress, references=references), few_shot_null(model, references,
                                                                                          images, progress)
    t0 = time.perf_counter()
    few_shot, test, refs, sizes, note = _few_shot_features(model, references, images, progress)
    t_extract = time.perf_counter() - t0
    result = few_shot.score_features(test, progress, references=refs)
    result.timings = {"extraction": t_extract, **result.timings}
    result.config = model.config
    if note:
        result.notes.append(note)
    return model.describe_inputs(result, images, sizes), few_shot_reference_null(few_shot, refs, test, progress)


def few_shot_reference_null(model: Any, references: Features | TiledFeatures, images: Features | TiledFeatures,
                            progress: bool = True) -> Any:
    """The references' null from features: each reference scored as a test image is, against the other references
    and the test images its pool holds. With config.subsets the test images are split as `MuSc.patch_scores`
    splits them (each scored against the others of its subset and every reference), and reference i joins subset
    i mod S: it is scored against the other references and that subset's images, a pool of the same size."""
    from .decision import reference_null
    from .pipeline import split_subsets

    c, n, k = model.config, images.num_images, references.num_images
    parts = split_subsets(n, c.subsets, c.seed) if n >= 2 * c.subsets else [np.arange(n)]
    whole = type(model)(c.replace(mode="musc", subsets=1), backbone=model.backbone)
    evidence, peaks = np.empty(k), np.empty(k)
    for s, part in enumerate(parts):
        pool = images if len(parts) == 1 else images.subset(part.tolist())
        own = whole.score_features(references, progress, references=pool)  # every reference against the pool
        joined = np.arange(s, k, len(parts))
        evidence[joined], peaks[joined] = own.decision_evidence()[joined], own.map_maxima()[joined]
    return reference_null(evidence, peaks)


def _check_few_shot(model: Any, references: Sequence[Any], images: Sequence[Any]) -> None:
    """InputError for too few references to read a null from, or a batch `model.score` would refuse."""
    from .pipeline import check_batch

    if len(references) < MIN_REFERENCES:
        raise InputError(f"a null from references needs at least {MIN_REFERENCES} reference images, got "
                         f"{len(references)}")
    model.config.validate()
    check_batch(len(images), True, model.config.subsets)


def _few_shot_features(model: Any, references: Sequence[Any], images: Sequence[Any], progress: bool = True
                       ) -> tuple[Any, Features | TiledFeatures, Features | TiledFeatures, list[tuple[int, int]], str]:
    """The few-shot model of this batch (tiles 'auto' resolved as `model.score` resolves them), the test images'
    and the references' features (tiles cut on the test images' plan), the images' sizes and the note."""
    few_shot = type(model)(model.config.replace(mode="musc"), backbone=model.backbone)
    few_shot, plan, sizes, note = _batch_plan(few_shot, images, references)
    if plan is None:  # whole images: their sizes as they are read
        test, sizes = few_shot.extract(images, progress)
    else:
        test = _extract_on(few_shot, images, plan, progress)
    return few_shot, test, _extract_on(few_shot, references, plan, progress), sizes, note


def build_bank(model: Any, images: Sequence[Any], progress: bool = True) -> Bank:
    """Extract the reference images' features once (every tile's, on the references' own plan, with tiles; whole
    images when tiles 'auto' would not cut them), and with at least three references their leave-one-out evidence
    (`leave_one_out`), which lets a bank decide new images one at a time."""
    if len(images) < 1:
        raise InputError("a bank needs at least one reference image")
    from .tiling import TiledScorer

    features: Features | TiledFeatures
    resolved, _ = model.config_for(images)
    if resolved.tile_scale is None and model.config.tile_scale is not None:  # tiles 'auto', near-square: whole
        model = type(model)(resolved, backbone=model.backbone)
    if tiles_setting(model.config) is not None:
        features = _cpu(TiledScorer(model).features(images, progress))
    else:
        features = _cpu(model.extract(images, progress)[0])
    held: tuple[np.ndarray | None, np.ndarray | None] = (None, None)
    if len(images) >= MIN_REFERENCES:
        held = leave_one_out(model, features, progress)
    return Bank(features, run_settings(model), [str(p) for p in images], *held)


__all__ = ["Bank", "build_bank", "few_shot_null", "few_shot_reference_null", "few_shot_scores", "leave_one_out",
           "reference_features", "run_settings", "tiles_setting"]
