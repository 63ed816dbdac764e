"""Native-resolution tiles: find defects far smaller than a patch of the whole image resized to S x S.

Every image of the batch is resized to one canvas (the batch's median size times `tile_scale`, aspect ratio
kept) and cut into overlapping S x S tiles on the same grid of positions. Two ways to score them
(`tile_matching`, a registry below): `aligned` scores each tile position as its own mutual-scoring batch
(tile p of image i against tile p of every other image: products in a fixture; the time grows with the
number of positions, not with its square); `all` scores every tile against all tiles of every other image
(each image is the bag of all its tiles' patches: products that move; time x the number of positions).
Stage 1 runs per tile either way (its neighbourhoods and normalisation stay inside a tile). The tile maps are blended back into one
map per image with a smooth window, a weighted mean, so overlaps leave no seams and a constant image gives a
constant map (drawn by `MuScConfig.map_rule_for(tiled=True)`; `tile_map_rule` 'finest' keeps the r = 1 scores
alone, for thin defects). The image score (`MuScConfig.image_score_for(tiled=True)`) reads the blended maps: the
maximum of the whole map, the scale-max of each view's (the default's), or the finest view's maximum; re-scoring
(`MuScConfig.rescoring_for`) uses the mean of the tiles' image embeddings (RsCIN) or the salient patch vector of
the image's highest-scoring tile (RsCon), or is left out ('none', the default preset's on tiles). Reference images
(few-shot MuSc, MuSc+) are cut into the same tiles and join the scoring of their position (aligned tiles). A tiled
bank (`TiledFeatures`) keeps the references' tiles and the plan they were cut on: new images are cut on that plan.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from .decision import PIXEL_METHODS
from .errors import ConfigError, InputError
from .io import upright_size
from .rescoring import get_image_score, peak
from .scoring import (finest_view_index, get_map_rule, image_levels, mutual_scores, nearest_other_scores,
                      shallow_blocks, shallow_views, subtract_image_baseline)
from .types import Features, TiledFeatures

if TYPE_CHECKING:
    from .config import MuScConfig
    from .pipeline import ImageSource, MuSc
    from .types import Result

Plan = tuple[tuple[int, int], list[tuple[int, int]]]
"""A tile plan: the canvas (width, height) every image is resized to, and the tile positions (x, y) on it."""


def tile_starts(length: int, side: int, overlap: float) -> list[int]:
    """Start offsets of tiles of `side` covering [0, length), evenly spread, overlapping by at least `overlap`."""
    if length <= side:
        return [0]
    stride = max(1.0, side * (1.0 - overlap))
    count = math.ceil((length - side) / stride) + 1
    return [round(k * (length - side) / (count - 1)) for k in range(count)]


MIN_TILE_SUBSET = 30
"""config.tile_subsets splits a tiled batch only into subsets of at least this many images (smaller batches are cheap
to score whole; the batches measured in BENCHMARKS.md were split into subsets of 33 to 67 images)."""


def tile_subset_count(positions: int, images: int) -> int:
    """How many random subsets config.tile_subsets scores a batch of `images` cut into `positions` tile positions in:
    one per position, each of at least MIN_TILE_SUBSET images; 1 = no split."""
    return max(1, min(positions, images // MIN_TILE_SUBSET))


RELATIVE_LEVEL = 0.9
"""A tiled image's relative evidence (`Result.relative_evidence`) is its evidence less this quantile of its own
finest-view patch scores over all its tiles (the level `--map-baseline 0.9` takes off)."""

AUTO_MIN_ASPECT = 2.0
"""tile_scale 'auto' cuts tiles only when the batch's median long side is at least this many times its short side
(three tiles or more at any overlap above 0); below it the whole image, squeezed to a square, is one tile.
Measured (BENCHMARKS.md, accuracy panel): batches 2.3 to 2.5 times as long as wide, cut into three tiles, keep or
gain AUROC-cls and gain PRO; batches about 1.6 times as long, cut into two, lost 5 to 7 points of AUROC-cls
against whole images (the threshold was 1.5 until then)."""


def median_size(sizes: Sequence[tuple[int, int]]) -> tuple[float, float]:
    """The batch's median (width, height): what its canvas and the 'auto' rules are based on."""
    return float(np.median([s[0] for s in sizes])), float(np.median([s[1] for s in sizes]))


def near_square(width: float, height: float) -> bool:
    """Long side below AUTO_MIN_ASPECT x the short one: tiles 'auto' take such images whole."""
    return max(width, height) < AUTO_MIN_ASPECT * min(width, height)


def elongated_note(sizes: Sequence[tuple[int, int]]) -> str | None:
    """A note for whole-image runs on elongated images (median long side at least AUTO_MIN_ASPECT x the short one):
    they were squeezed to squares, and tiles would cut them along the long side; None otherwise."""
    if not sizes:
        return None
    w, h = median_size(sizes)
    if near_square(w, h):
        return None
    return (f"the images are elongated (median {w:.0f} x {h:.0f} px) and were squeezed to squares; the default "
            "preset, musc-scales-tiles, cuts them into tiles along the long side instead (higher PRO on the three "
            "elongated sets measured, about 1.5 x the time; README, How it works)")


def canvas_size(sizes: Sequence[tuple[int, int]], scale: float | str, side: int) -> tuple[int, int]:
    """(width, height) every image is resized to: the batch's median size times `scale`, at least one tile.

    `scale` 'auto': the median size's short side becomes `side` (aspect kept), or one `side` square tile for
    batches closer to square than AUTO_MIN_ASPECT."""
    w, h = median_size(sizes)
    if scale == "auto":
        if near_square(w, h):
            return side, side
        scale = side / min(w, h)
    return max(side, round(w * float(scale))), max(side, round(h * float(scale)))


def blend_window(side: int) -> torch.Tensor:
    """(side, side) weights, highest in the tile centre and small but positive at its border (no division by 0)."""
    ramp = torch.sin(torch.linspace(0, math.pi, side + 2)[1:-1]) + 1e-3
    return ramp[:, None] * ramp[None, :]


def blend(tile_maps: torch.Tensor, starts: Sequence[tuple[int, int]], canvas: tuple[int, int]) -> torch.Tensor:
    """(P, N, S, S) tile maps at positions `starts` ((x, y) each) -> (N, H, W) weighted mean over the tiles."""
    p, n, side, _ = tile_maps.shape
    width, height = canvas
    window = blend_window(side).to(tile_maps)
    total = torch.zeros((n, height, width), dtype=tile_maps.dtype, device=tile_maps.device)
    weight = torch.zeros((height, width), dtype=tile_maps.dtype, device=tile_maps.device)
    for k, (x, y) in enumerate(starts):
        total[:, y:y + side, x:x + side] += tile_maps[k] * window
        weight[y:y + side, x:x + side] += window
    return total / weight


def image_reads_shallow_blocks(config: "MuScConfig") -> bool:
    """Whether a tiled image score reads the finest view of the shallower blocks (`tile_image_blocks` 'shallow' and
    a tiled image score that reads views)."""
    return config.tile_image_blocks == "shallow" and get_image_score(config.image_score_for(tiled=True)).uses_views


def reads_shallow_blocks(config: "MuScConfig") -> bool:
    """Whether a tiled batch reads the views of the shallower blocks: its maps (`tile_map_blocks` 'shallow') or its
    image score (`image_reads_shallow_blocks`). Only then do the engines keep the per-block scores they need."""
    return config.tile_map_blocks == "shallow" or image_reads_shallow_blocks(config)


def score_aligned(model: "MuSc", positions: Sequence["Features"], progress: bool = True,
                  references: Sequence["Features"] | None = None, scorer: Callable[..., torch.Tensor] | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per tile position p, MSM of tile p against tile p of the other images: (P, V, N, h, w) patch scores per
    stage-1 view (`MuSc.patch_scores`), and the same over the shallower blocks alone (P, V, N, h, w) when the maps or
    the image score read them (`reads_shallow_blocks`; else None).

    `positions[p]`: the features of every image's tile at position p; `references[p]`: the reference images'
    tiles at p (few-shot MuSc or MuSc+, as config.mode says); `scorer`: what scores a position without references
    (`MuSc.patch_scores`; None = MSM)."""
    shallow = reads_shallow_blocks(model.config)
    grids, shallow_grids = [], []
    for k, features in enumerate(tqdm(positions, desc="scoring tile positions", unit="tile", disable=not progress,
                                      leave=False)):
        total, pairs, _ = model.patch_scores(features, progress=False, keep_pairs=shallow, scorer=scorer,
                                             references=None if references is None else references[k])
        grids.append(total)
        if shallow:
            shallow_grids.append(shallow_views(pairs, model.views()))
    return torch.stack(grids), torch.stack(shallow_grids) if shallow else None


def score_all(model: "MuSc", positions: Sequence["Features"], progress: bool = True,
              references: Sequence["Features"] | None = None, scorer: Callable[..., torch.Tensor] | None = None
              ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Every tile against all tiles of the other images: (P, V, N, h, w) patch scores per stage-1 view (and the
    same over the shallower blocks when the maps or the image score read them, as `score_aligned`).

    Stage 1 runs per tile; the P tiles' patch vectors of an image are then joined into one set, so a patch's
    nearest-patch distance to image j is its distance to the closest patch anywhere in j. `references[p]`: the
    reference images' tiles at p, joined the same way (few-shot MuSc or MuSc+, as config.mode says). Subsets,
    the memory budget, fast mode and the product precision apply as in `MuSc.patch_scores`, and so does `scorer`.
    """
    tokens = [features.tokens for features in positions]
    n_pos, n = len(tokens), tokens[0][0].shape[0]
    _, _, h, w = tokens[0][0].shape
    layers = model._tap_layers(len(tokens[0]))
    device = tokens[0][0].device
    ref_z = None
    if references is not None:  # per block and view, (M, P*h*w, C): every tile of each reference image
        per_position = [model._aggregated_references(features, layers, device) for features in references]
        ref_z = [[torch.cat([agg[li][ri] for agg in per_position], dim=1) for ri in range(len(model.views()))]
                 for li in range(len(layers))]

    def stage1(li: int, index: torch.Tensor) -> Iterator[torch.Tensor]:
        per_tile = [model._aggregate(tokens[p][li][index], layers[li]) for p in range(n_pos)]
        for tiles in zip(*per_tile):  # one view of every tile at a time
            yield torch.cat(tiles, dim=1)  # (n, P*h*w, C)

    shallow = reads_shallow_blocks(model.config)
    total, pairs, _ = model.score_views(n, n_pos * h * w, layers, stage1, ref_z, scorer or mutual_scores, progress,
                                        shallow, device, "scoring all tiles")
    shallow_grids = (shallow_views(pairs, model.views()).view(-1, n, n_pos, h, w).permute(2, 0, 1, 3, 4) if shallow
                     else None)
    return total.view(-1, n, n_pos, h, w).permute(2, 0, 1, 3, 4), shallow_grids


TILE_MATCHING = {"aligned": score_aligned, "all": score_all}
"""How tiles are scored (config.tile_matching): a name -> (model, features per position, progress, reference
features per position, scorer) -> (P, V, N, h, w) scores, and the same over the shallower blocks when the maps or the
image score read them (`reads_shallow_blocks`; else None)."""


def image_sizes(images: Sequence["ImageSource"]) -> list[tuple[int, int]]:
    """(width, height) of each image as it is read (upright), from file headers where the images are paths."""
    from .pipeline import _as_image

    sizes = []
    for src in images:
        if isinstance(src, (str, Path)):
            with Image.open(src) as im:
                sizes.append(upright_size(im))
        elif isinstance(src, Image.Image):  # its size without converting it
            sizes.append(upright_size(src))
        else:
            sizes.append(_as_image(src).size)
    return sizes


class TiledScorer:
    """Runs a MuSc model on native-resolution tiles (config.tile_scale) and blends one map per image."""

    def __init__(self, model: "MuSc") -> None:
        self.model = model
        self.config = model.config

    def plan(self, sizes: Sequence[tuple[int, int]]) -> Plan:
        """The canvas (width, height) and the tile positions (x, y) for a batch of original sizes."""
        side = self.model.backbone.image_size
        canvas = canvas_size(sizes, self.config.tile_scale, side)
        xs, ys = tile_starts(canvas[0], side, self.config.tile_overlap), tile_starts(canvas[1], side, self.config.tile_overlap)
        return canvas, [(x, y) for y in ys for x in xs]

    def extract_tiles(self, images: Sequence["ImageSource"], canvas: tuple[int, int],
                      starts: Sequence[tuple[int, int]], progress: bool = True
                      ) -> tuple[list[list[torch.Tensor]], list[torch.Tensor]]:
        """Every image resized to the canvas and cut at `starts`: per position, the tapped blocks' (N, C, h, w)
        tokens, and per position the (N, D) tile embeddings."""
        from .pipeline import _as_image

        c = self.config
        bb = self.model.backbone
        side = bb.image_size
        n, n_pos = len(images), len(starts)
        tokens: list[list[torch.Tensor]] = []
        embeddings: list[torch.Tensor] = []
        with tqdm(total=n, desc=f"extracting {n_pos} tiles per image", unit="img", disable=not progress,
                  leave=False) as bar:
            for i, src in enumerate(images):
                im = _as_image(src).resize(canvas, Image.BICUBIC)
                batch = torch.stack([bb.preprocess(im.crop((x, y, x + side, y + side))) for x, y in starts])
                taps, emb = [], []
                for b0 in range(0, n_pos, c.batch_size):
                    t, e = bb.extract(batch[b0:b0 + c.batch_size])
                    taps.append(t)
                    emb.append(e)
                if i == 0:  # per position and tapped block, (N, C, h, w), filled in place
                    tokens = [[t.new_empty((n, *t.shape[1:])) for t in taps[0]] for _ in range(n_pos)]
                    embeddings = [emb[0].new_empty((n, emb[0].shape[1])) for _ in range(n_pos)]
                for b0, (t, e) in zip(range(0, n_pos, c.batch_size), zip(taps, emb)):
                    for k in range(len(e)):
                        for store, layer_tokens in zip(tokens[b0 + k], t):
                            store[i] = layer_tokens[k]
                        embeddings[b0 + k][i] = e[k]
                bar.update(1)
        return tokens, embeddings

    def features(self, images: Sequence["ImageSource"], progress: bool = True, plan: Plan | None = None
                 ) -> TiledFeatures:
        """The tiles' features of `images`, cut on `plan` (canvas, starts) or on the plan of their own sizes
        (gathered from the workers on the Ray engine)."""
        plan = plan or self.plan(image_sizes(images))
        if self.config.engine == "ray":
            from .distributed import RayEngine

            return RayEngine(self.model).tiled_features(images, plan, progress)
        canvas, starts = plan
        tokens, embeddings = self.extract_tiles(images, canvas, starts, progress)
        return TiledFeatures([Features(t, e) for t, e in zip(tokens, embeddings)], canvas, list(starts))

    def check(self, references: Any, keep_pairs: bool) -> None:
        """Errors for what tiles cannot take: whole-image reference features, an empty reference set, per-pair maps."""
        if isinstance(references, Features):
            raise ConfigError("native-resolution tiles need tiled references, not whole-image features (a bank "
                              "built without --tiles): rebuild the bank with the same --tiles, give --reference DIR, "
                              "or leave out --tiles")
        if references is not None and not isinstance(references, TiledFeatures) and len(references) < 1:
            raise InputError("the reference set is empty")
        if keep_pairs:
            raise ConfigError("per-pair maps are not kept with tiles")

    def plan_for(self, sizes: Sequence[tuple[int, int]], references: Any) -> Plan:
        """A tiled bank's plan (new images are cut where its references were), else the plan of `sizes`."""
        if isinstance(references, TiledFeatures):
            return references.canvas, list(references.starts)
        return self.plan(sizes)

    def reference_tiles(self, references: Any, plan: Plan, progress: bool = True) -> TiledFeatures | None:
        """The references' tiles: a tiled bank's own, or reference images cut on `plan`."""
        if references is None or isinstance(references, TiledFeatures):
            return references
        return self.features(references, progress, plan)

    def score(self, images: Sequence["ImageSource"], progress: bool = True, references: Any = None,
              keep_pairs: bool = False) -> "Result":
        """Maps and scores of `images` on tiles. `references`: reference images (cut on the test images' plan) or
        a tiled bank's `TiledFeatures` (the test images are cut on the bank's plan)."""
        self.check(references, keep_pairs)
        t0 = time.perf_counter()
        sizes = image_sizes(images)
        plan = self.plan_for(sizes, references)
        test = self.features(images, progress, plan)
        references = self.reference_tiles(references, plan, progress)
        t_extract = time.perf_counter() - t0
        t0 = time.perf_counter()
        grids, shallow, salient, embeddings = self.match(test, references, progress)
        del test, references  # finishing needs only the scores (less memory on large batches)
        result = self.finish(grids, embeddings, salient, plan, {"extraction": t_extract}, t0, shallow)
        return self.model.describe_inputs(result, images, sizes)

    def score_features(self, features: TiledFeatures, progress: bool = True,
                       references: TiledFeatures | None = None) -> "Result":
        """Maps and scores of images already cut into tiles (`features`), against reference tiles cut on the same
        plan (few-shot MuSc or MuSc+, as config.mode says): `score` without the extraction, as
        `MuSc.score_features` is for whole images."""
        if references is not None and (references.canvas != features.canvas
                                       or list(references.starts) != list(features.starts)):
            raise ConfigError(f"the reference tiles were cut on another plan (canvas {references.canvas}, "
                              f"{len(references.starts)} tiles) than the images' (canvas {features.canvas}, "
                              f"{len(features.starts)} tiles)")
        from .pipeline import check_features

        check_features(features.num_images, references is not None)
        t0 = time.perf_counter()
        grids, shallow, salient, embeddings = self.match(features, references, progress)
        return self.finish(grids, embeddings, salient, (features.canvas, list(features.starts)), {}, t0, shallow)

    def match(self, features: TiledFeatures, references: TiledFeatures | None, progress: bool = True,
              scorer: Callable[..., torch.Tensor] | None = None
              ) -> tuple[torch.Tensor, torch.Tensor | None, list[torch.Tensor] | None, torch.Tensor]:
        """The tiles scored as config.tile_matching says (`TILE_MATCHING`, with `scorer`): patch scores (P, V, N, h,
        w), the finest view of the shallower blocks (or None), and what stage 3 compares images by
        (`image_embeddings`)."""
        grids, shallow = TILE_MATCHING[self.config.tile_matching](
            self.model, features.positions, progress, None if references is None else references.positions, scorer)
        return (grids, shallow, *self.image_embeddings(features.positions, grids))

    def image_embeddings(self, positions: Sequence["Features"], grids: torch.Tensor
                         ) -> tuple[list[torch.Tensor] | None, torch.Tensor]:
        """What stage 3 compares tiled images by (`finish`): RsCon's salient vectors per position (None without
        RsCon), and every tile's class token (P, N, D)."""
        salient = None
        if self.config.rescoring_for(tiled=True) == "rscon":
            salient = [self.model.salient_vectors(position.tokens, grids[k].mean(dim=0))
                       for k, position in enumerate(positions)]
        return salient, torch.stack([position.embeddings for position in positions])

    def score_each_against_others(self, features: TiledFeatures, progress: bool = True) -> list["Result"]:
        """MuSc+ of every tiled image against all the others (a tiled bank's leave-one-out), as
        `MuSc.score_each_against_others` does for whole images: one Result per image, equal to scoring it alone
        against the others' tiles, from stage 1 run once and one distance table per (block, view) and position."""
        if features.num_images < 2:
            raise InputError(f"scoring each image against the others needs at least 2 images, got "
                             f"{features.num_images}")
        from .pipeline import MuSc

        alone = TiledScorer(MuSc(self.config.replace(mode="musc+", subsets=1, tile_subsets=False),
                                 backbone=self.model.backbone))
        t0 = time.perf_counter()
        grids, shallow, salient, embeddings = alone.match(features, None, progress, scorer=nearest_other_scores)
        plan = (features.canvas, list(features.starts))
        return [alone.finish(grids[:, :, i:i + 1], embeddings[:, i:i + 1],
                             None if salient is None else [s[i:i + 1] for s in salient], plan, {}, t0,
                             None if shallow is None else shallow[:, :, i:i + 1])
                for i in range(features.num_images)]

    def finish(self, grids: torch.Tensor, embeddings: torch.Tensor, salient: Sequence[torch.Tensor] | None,
               plan: Plan, timings: dict[str, float], scoring_started: float,
               shallow: torch.Tensor | None = None) -> "Result":
        """Tile patch scores per view (P, V, N, h, w) -> (less each image's baseline over all its tiles with
        `map_baseline`) one blended map per image (`map_rule_for(tiled=True)` over
        all positions at once), each view's blended map maxima, then the image scores (`MuSc.finish_maps`). The
        decisions' evidence (`Result.evidence`) is the finest view's blended map maxima: on tiles a thin defect stands
        out most at r = 1, and counting defects from it flagged images closer to the labelled oracle on every tiled
        batch measured (README, Decisions without labels), while the maps keep the map rule. Its relative evidence
        (`Result.relative_evidence`) is that less the image's own level (`RELATIVE_LEVEL`).

        `embeddings`: each tile's (P, N, D); `salient`: RsCon's descriptors per position (N, C), of which each
        image keeps its highest-scoring tile's; `scoring_started`: when scoring began (perf_counter), for the
        timings; `shallow`: the patch scores over the shallower blocks (P, V, N, h, w; `reads_shallow_blocks`), which
        the maps read in place of `grids` with `tile_map_blocks` 'shallow', and whose finest view the image score
        reads with `tile_image_blocks` 'shallow' (evidence and view maxima keep every block). Shared by the local and
        the Ray engine."""
        canvas, starts = plan
        map_rule, image_score = self.config.map_rule_for(tiled=True), self.config.image_score_for(tiled=True)
        image_shallow = image_reads_shallow_blocks(self.config)
        if self.config.map_baseline is not None:  # each image's level over all its tiles
            grids = subtract_image_baseline(grids, self.config.map_baseline)
            if shallow is not None:
                shallow = subtract_image_baseline(shallow, self.config.map_baseline)
        map_grids = shallow if self.config.tile_map_blocks == "shallow" else grids
        fused = get_map_rule(map_rule)(map_grids, self.model.views())  # (P, N, h, w)
        stacked = torch.stack([self.model.upsample(grid) for grid in fused])  # (P, N, S, S)
        maps = blend(stacked, starts, canvas)

        rule = get_image_score(image_score)
        patch_area = (self.model.backbone.image_size / grids.shape[-1]) ** 2  # pixels of one patch on the canvas

        def blended(position_grids: torch.Tensor) -> torch.Tensor:  # (P, N, h, w) -> (N, H*W) on the canvas
            return blend(torch.stack([self.model.upsample(grid) for grid in position_grids]), starts, canvas).flatten(1)

        def view_stats(v: int) -> tuple[torch.Tensor, torch.Tensor]:  # one view's blended map at a time: its maxima
            view = blended(grids[:, v])
            maxima = view.amax(dim=1)
            read = blended(shallow[:, finest]) if image_shallow and v == finest else view
            return maxima, read.amax(dim=1) if rule.reduce is peak else rule.reduce(read, patch_area)  # what it reads

        finest = finest_view_index(self.model.views())
        view_maxima = view_values = None
        if rule.uses_views:
            view_maxima, view_values = (torch.stack(part) for part in zip(*map(view_stats, range(grids.shape[1]))))
        evidence = view_maxima[finest] if view_maxima is not None else view_stats(finest)[0]
        relative = evidence - image_levels(grids[:, finest:finest + 1], RELATIVE_LEVEL)[0]  # the finest view only
        timings = {**timings, "scoring": time.perf_counter() - scoring_started}
        if salient is not None:
            best = stacked.flatten(2).amax(dim=2).argmax(dim=0)  # each image's highest-scoring tile
            emb = torch.stack([salient[int(best[i])][i] for i in range(maps.shape[0])])
        else:
            emb = embeddings.mean(dim=0)
        result = self.model.finish_maps(maps, emb, timings, view_maxima=view_maxima, view_values=view_values,
                                        tiled=True)
        result.evidence = evidence.cpu().numpy().astype(np.float64)
        result.relative_evidence = relative.cpu().numpy().astype(np.float64)
        side = self.model.backbone.image_size
        plan_note = f"{len(starts)} tiles of {side} px per image on a {canvas[0]} x {canvas[1]} canvas"
        if self.config.rescoring_for(tiled=True) == "none" and self.config.rscin_windows:
            plan_note += "; scores not re-scored (tile_rescoring 'none')"
        if map_rule != self.config.map_rule:
            plan_note += f"; maps by the map rule {map_rule!r} (tile_map_rule)"
        if image_score != self.config.image_score:
            plan_note += f"; images scored by {image_score!r} (tile_image_score)"
        blocks = ", ".join(map(str, shallow_blocks(self.model.backbone.layers)))
        if self.config.tile_map_blocks == "shallow":
            plan_note += f"; maps from blocks {blocks} (tile_map_blocks)"
        if image_shallow:
            plan_note += f"; image scores read the finest view of blocks {blocks} (tile_image_blocks)"
        if self.config.tile_pixel_decision != PIXEL_METHODS[0]:
            plan_note += f"; masks drawn by {self.config.tile_pixel_decision!r} (tile_pixel_decision)"
        result.notes.insert(0, plan_note)
        return result


__all__ = ["elongated_note", "tile_subset_count", "MIN_TILE_SUBSET", "TiledScorer", "TILE_MATCHING", "image_sizes",
           "AUTO_MIN_ASPECT", "RELATIVE_LEVEL", "reads_shallow_blocks", "image_reads_shallow_blocks", "score_aligned",
           "score_all", "tile_starts", "canvas_size", "blend", "blend_window", "Plan"]
