"""The MuSc model: composes backbone -> stage 1 (LNAMD or SNAMD) -> MSM -> maps -> stage 3 (image score, then
RsCIN or RsCon).

Variants come from each stage's registry by the names in the config; other engines (Ray, tiles) reuse these
steps. No file output here.
"""

from __future__ import annotations

import logging
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterator, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from .aggregation import get_aggregation
from .backbones import Backbone
from .config import MuScConfig
from .errors import ConfigError, InputError
from .io import read_image, to_rgb, upright
from .rescoring import get_image_score, peak, rscin
from .scoring import (finest_view_index, get_map_rule, mutual_scores, nearest_other_scores, random_projection,
                      reference_scores, subtract_image_baseline)
from .types import Features, Result, TiledFeatures

log = logging.getLogger(__name__)

ImageSource = Union[str, Path, Image.Image, np.ndarray]


def _as_image(source: ImageSource) -> Image.Image:
    if isinstance(source, (str, Path)):
        return read_image(source)
    if isinstance(source, Image.Image):
        return to_rgb(upright(source))
    if isinstance(source, np.ndarray):
        if source.ndim == 2 or (source.ndim == 3 and source.shape[2] in (1, 3, 4)):
            arr = source[..., 0] if source.ndim == 3 and source.shape[2] == 1 else source
            return to_rgb(Image.fromarray(arr))
        raise InputError(f"an image array must have shape (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), got {source.shape}")
    raise InputError(f"cannot use an object of type {type(source).__name__} as an image")


def split_subsets(n: int, subsets: int, seed: int) -> list[np.ndarray]:
    """Split range(n) into `subsets` random parts of near-equal size (label-free, seeded), each sorted."""
    if subsets < 1:
        raise ConfigError(f"subsets must be >= 1, got {subsets}")
    if subsets == 1:
        return [np.arange(n)]
    if n // subsets < 2:
        raise InputError(f"{n} images cannot be split into {subsets} subsets of at least 2 images")
    perm = np.random.default_rng(seed).permutation(n)
    return [np.sort(part) for part in np.array_split(perm, subsets)]


def check_batch(count: int, references: bool, subsets: int = 1) -> None:
    """InputError for a batch of `count` images MuSc cannot score (`MuSc.score`, and the few-shot passes of musc.bank):
    fewer than 2 without references, none with them, or too few to split into `subsets` of at least 2."""
    if not references and count < 2:
        raise InputError(f"MuSc needs at least 2 images to score them against each other, got {count} "
                         "(give reference images to score a single one)")
    if references and count < 1:
        raise InputError("no images to score")
    if subsets > 1 and count // subsets < 2:
        raise InputError(f"{count} images cannot be split into {subsets} subsets of at least 2 images")


def check_features(count: int, references: bool) -> None:
    """InputError unless the features of `count` images can be scored (`MuSc.score_features`,
    `TiledScorer.score_features`): at least 2 images, or 1 with references."""
    if count < 1 or (not references and count < 2):
        raise InputError(f"MuSc needs at least 2 images to score them against each other, got {count} "
                         "(give reference images to score a single one)")


def score_matmul_dtype(score_dtype: str, device: torch.device) -> torch.dtype | None:
    """The dtype of the MSM similarity products for a config value on a device (None = float32)."""
    if score_dtype == "auto":
        return torch.float16 if device.type == "cuda" else None
    return None if score_dtype == "float32" else getattr(torch, score_dtype)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class MuSc:
    """Zero-shot anomaly scoring of a set of unlabeled images by mutual scoring.

    >>> model = MuSc(MuScConfig(backbone="dinov2_vits14", image_size=224))
    >>> result = model.score(["a.png", "b.png", "c.png"])
    >>> result.scores, result.maps.shape
    """

    def __init__(self, config: MuScConfig | None = None, backbone: Backbone | None = None) -> None:
        self.config = config or MuScConfig()
        self._backbone = backbone
        self._reference_cache: dict[int, tuple[weakref.ref, list[list[torch.Tensor]]]] = {}

    @property
    def backbone(self) -> Backbone:
        """The backbone, built on first use from the configuration."""
        if self._backbone is None:
            c = self.config
            c.validate()
            self._backbone = Backbone.load(c.backbone, c.image_size, c.layers, weights=c.weights,
                                           pretrained=c.pretrained, device=c.device, half=c.half)
        return self._backbone

    def extract(self, images: Sequence[ImageSource], progress: bool = True) -> tuple[Features, list[tuple[int, int]]]:
        """Backbone features of all images, plus each image's original (width, height)."""
        if self.config.engine == "ray":
            from .distributed import RayEngine

            return RayEngine(self).extract(images, progress)
        bb = self.backbone
        bs = self.config.batch_size
        n = len(images)
        tokens: list[torch.Tensor] = []
        embeddings = torch.empty(0)
        sizes: list[tuple[int, int]] = []

        def load(start: int) -> tuple[list[tuple[int, int]], torch.Tensor]:
            pil = [_as_image(src) for src in images[start:start + bs]]
            return [im.size for im in pil], torch.stack([bb.preprocess(im) for im in pil])

        # One thread decodes and resizes the next batch while the backbone runs on this one.
        with tqdm(total=n, desc="extracting", unit="img", disable=not progress, leave=False) as bar, \
                ThreadPoolExecutor(max_workers=1, thread_name_prefix="musc-load") as pool:
            pending = pool.submit(load, 0) if n else None
            for start in range(0, n, bs):
                batch_sizes, batch = pending.result()
                if start + bs < n:
                    pending = pool.submit(load, start + bs)
                sizes.extend(batch_sizes)
                taps, emb = bb.extract(batch)
                if start == 0:  # filled in place: the features never exist twice (no concatenation at the end)
                    tokens = [t.new_empty((n, *t.shape[1:])) for t in taps]
                    embeddings = emb.new_empty((n, *emb.shape[1:]))
                for store, t in zip(tokens, taps):
                    store[start:start + len(batch)] = t
                embeddings[start:start + len(batch)] = emb
                bar.update(len(batch))
        return Features(tokens, embeddings), sizes

    def _tap_layers(self, count: int) -> tuple[int, ...]:
        """Block numbers of the feature maps (labels for per-pair results), without building a backbone."""
        if self._backbone is not None:
            return self._backbone.layers
        from .backbones import get_preset

        layers = tuple(sorted(self.config.layers or get_preset(self.config.backbone).layers))  # as Backbone.load
        return layers if len(layers) == count else tuple(range(count))

    def views(self) -> tuple:
        """Labels of the sets of patch vectors stage 1 gives per tapped block (LNAMD: each r; SNAMD: one)."""
        return get_aggregation(self.config.aggregation).views(self.config.r_values)

    def _aggregate(self, tokens: torch.Tensor, layer: int) -> Iterator[torch.Tensor]:
        """Stage 1 (the configured variant), one set of patch vectors at a time (then the fast mode's projection)."""
        c = self.config
        for z in get_aggregation(c.aggregation).run(tokens, c.r_values):
            yield z if c.projection_dim is None else random_projection(z, c.projection_dim, seed=c.seed + layer)

    def _aggregated_references(self, references: Features, layers: tuple[int, ...],
                               device: torch.device) -> list[list[torch.Tensor]]:
        """Stage 1 of the references per block and view, kept while the same references are alive (a bank scoring
        one new image after another; each tile position of a tiled bank is its own entry)."""
        alive = {key: entry for key, entry in self._reference_cache.items() if entry[0]() is not None}
        self._reference_cache = alive  # references nobody holds any more are forgotten
        entry = alive.get(id(references))  # a live entry under this id is these references: ids are unique
        if entry is None:
            aggregated = [list(self._aggregate(t.to(device), layer)) for layer, t in zip(layers, references.tokens)]
            entry = alive[id(references)] = (weakref.ref(references), aggregated)
        return entry[1]

    def _score_pair(self, z: torch.Tensor, refs: torch.Tensor | None, scorer: Callable[..., torch.Tensor],
                    budget: int | None, matmul_dtype: torch.dtype | None, progress: Callable[[int], None]) -> torch.Tensor:
        """Patch scores of one (block, r) pair: zero-shot MSM, few-shot MSM with references, or MuSc+."""
        c = self.config
        if refs is None:
            return scorer(z, c.interval, budget, matmul_dtype=matmul_dtype, progress=progress, skip=c.interval_skip)
        progress(len(z))
        if c.mode == "musc+":
            return reference_scores(z, refs, matmul_dtype=matmul_dtype)
        return mutual_scores(z, c.interval, budget, matmul_dtype=matmul_dtype, refs=refs, skip=c.interval_skip)

    def patch_scores(self, features: Features, progress: bool = True, keep_pairs: bool = False,
                     scorer: Callable[..., torch.Tensor] | None = None, references: Features | None = None
                     ) -> tuple[torch.Tensor, dict[tuple[int, int], torch.Tensor], dict[str, float]]:
        """MSM over every (block, view) pair and subset: (V, N, h, w) patch scores of each stage-1 view (LNAMD: each
        r), the mean over the tapped blocks (+ per-pair grids, timings). config.map_rule makes them one map.

        `scorer(z, interval, budget, matmul_dtype=..., progress=..., skip=...)` replaces `mutual_scores` (benchmarks
        use it to compare formulations on the same features). With `references`, config.mode picks few-shot MuSc
        (references join every subset's scorers) or MuSc+ (references alone score).
        """
        n = features.num_images
        _, _, h, w = features.tokens[0].shape
        if references is not None and [t.shape[1:] for t in references.tokens] != [t.shape[1:] for t in features.tokens]:
            raise InputError("reference features do not match the test features (other backbone, size or blocks)")
        device = features.tokens[0].device
        layers = self._tap_layers(len(features.tokens))
        ref_z = self._aggregated_references(references, layers, device) if references is not None else None

        def stage1(li: int, index: torch.Tensor) -> Iterator[torch.Tensor]:
            tok = features.tokens[li]
            return self._aggregate(tok if len(index) == n else tok[index], layers[li])

        total, pairs, timings = self.score_views(n, h * w, layers, stage1, ref_z, scorer or mutual_scores, progress,
                                                 keep_pairs, device, "mutual scoring")
        grids = {k: v.view(n, h, w) for k, v in pairs.items()}
        return total.view(-1, n, h, w), grids, timings

    def score_views(self, n: int, n_patches: int, layers: Sequence[int],
                    stage1: Callable[[int, torch.Tensor], Iterator[torch.Tensor]],
                    ref_z: Sequence[Sequence[torch.Tensor]] | None, scorer: Callable[..., torch.Tensor],
                    progress: bool, keep_pairs: bool, device: torch.device, desc: str
                    ) -> tuple[torch.Tensor, dict[tuple[int, int], torch.Tensor], dict[str, float]]:
        """The MSM loop of the local engines (whole images, tiles matched anywhere): for each tapped block (`layers`:
        their numbers), subset and stage-1 view, one mutual scoring of the subset's patch vectors
        (`stage1(block position, image index)` yields them view by view, (n, n_patches, C)), with the references'
        vectors `ref_z[block position][view]` when given. Returns each view's scores (V, N, L), the
        mean over the tapped blocks, the per-(block, view) scores when `keep_pairs`, and the timings."""
        c = self.config
        references = ref_z is not None
        parts = split_subsets(n, c.subsets, c.seed) if not references or n >= 2 * c.subsets else [np.arange(n)]
        budget = None if c.memory_budget_mb is None else c.memory_budget_mb * 2**20
        views = self.views()
        matmul_dtype = score_matmul_dtype(c.score_dtype, device)
        total = torch.zeros((len(views), n, n_patches), dtype=torch.float32, device=device)
        pairs: dict[tuple[int, int], torch.Tensor] = {}
        t_agg = t_score = 0.0
        with tqdm(total=len(layers) * len(views) * n, desc=desc, unit="img", disable=not progress, leave=False) as bar:
            for li, layer in enumerate(layers):
                for idx in parts:
                    index = torch.as_tensor(idx, device=device)
                    zs = stage1(li, index)
                    for ri, r in enumerate(views):
                        t0 = time.perf_counter()
                        z = next(zs)
                        _sync(device)
                        t_agg += time.perf_counter() - t0
                        t0 = time.perf_counter()
                        s = self._score_pair(z, ref_z[li][ri] if references else None, scorer, budget, matmul_dtype,
                                             bar.update)
                        _sync(device)
                        t_score += time.perf_counter() - t0
                        total[ri, index] += s
                        if keep_pairs:
                            pairs.setdefault((layer, r), torch.zeros_like(total[0]))[index] = s
                        del z  # freed before the next view is aggregated
        total /= len(layers)
        return total, pairs, {"aggregation": t_agg, "scoring": t_score}

    def upsample(self, patch_scores: torch.Tensor) -> torch.Tensor:
        """(N, h, w) -> (N, S, S) bilinear with align_corners=True, as in the paper's code."""
        size = self.backbone.image_size
        return F.interpolate(patch_scores[:, None], size=(size, size), mode="bilinear", align_corners=True)[:, 0]

    def score_features(self, features: Features | TiledFeatures, progress: bool = True, keep_pairs: bool = False,
                       scorer: Callable[..., torch.Tensor] | None = None,
                       references: Features | TiledFeatures | None = None) -> Result:
        """Maps and scores from already extracted features (and optional reference features): whole images, or
        tiles (`TiledScorer.score_features`, references cut on the same plan; no per-pair maps or scorer there)."""
        if isinstance(features, TiledFeatures) or isinstance(references, TiledFeatures):
            from .tiling import TiledScorer

            if not isinstance(features, TiledFeatures) or not isinstance(references, (TiledFeatures, type(None))):
                raise ConfigError("tiled features are scored against tiled references: both cut on one plan")
            if keep_pairs or scorer is not None:
                raise ConfigError("per-pair maps and another scorer are not available on tiles")
            return TiledScorer(self).score_features(features, progress, references)
        check_features(features.num_images, references is not None)
        view_grids, pairs, timings = self.patch_scores(features, progress, keep_pairs, scorer, references)
        return self.finish(view_grids, self.image_embeddings(features, view_grids), timings,
                           pairs if keep_pairs else None)

    def image_embeddings(self, features: Features, view_grids: torch.Tensor) -> torch.Tensor:
        """What stage 3 compares images by: the class tokens, or with RsCon each image's salient patch vector (the
        arg-max of the mean over views, on every engine and map rule)."""
        if self.config.rescoring == "rscon":
            return self.salient_vectors(features.tokens, view_grids.mean(dim=0))
        return features.embeddings

    def score_each_against_others(self, features: Features, progress: bool = True) -> list[Result]:
        """MuSc+ of every image against all the others (a bank's leave-one-out): one Result per image, equal to
        scoring it alone against the other images' features (`score_features(features.subset([i]),
        references=features.subset(others))` with mode 'musc+'), for stage 1 run once and one pair-symmetric
        distance table per (block, view) instead of N scorings against N - 1 references. Each image is finished
        alone, so batch-wide rules (`z-max` maps, re-scoring) see what they see when it is scored alone."""
        if features.num_images < 2:
            raise InputError(f"scoring each image against the others needs at least 2 images, got "
                             f"{features.num_images}")
        alone = type(self)(self.config.replace(mode="musc+", subsets=1, tile_subsets=False), backbone=self.backbone)
        view_grids, _, timings = alone.patch_scores(features, progress, scorer=nearest_other_scores)
        embeddings = alone.image_embeddings(features, view_grids)
        return [alone.finish(view_grids[:, i:i + 1], embeddings[i:i + 1], dict(timings))
                for i in range(features.num_images)]

    def salient_tap(self, count: int) -> tuple[int, int]:
        """RsCon's tapped block among `count`: (its position, its block number), the second-to-last one."""
        pos = max(0, count - 2)
        return pos, self._tap_layers(count)[pos]

    def salient_vectors(self, tokens: Sequence[torch.Tensor], grid: torch.Tensor) -> torch.Tensor:
        """RsCon's descriptors: the stage-1 vector (first view) of the second-to-last tapped block at each image's
        highest-scoring patch, (N, C). Aggregated again here rather than kept through scoring (less memory)."""
        from .rescoring import salient_patch_vectors

        pos, layer = self.salient_tap(len(tokens))
        z = next(self._aggregate(tokens[pos], layer))
        return torch.from_numpy(salient_patch_vectors(z.cpu().numpy(), grid.flatten(1).cpu().numpy()))

    def finish(self, view_grids: torch.Tensor, embeddings: torch.Tensor, timings: dict[str, float],
               pairs: dict[tuple[int, int], torch.Tensor] | None = None) -> Result:
        """Per-view patch-score grids (V, N, h, w) -> maps (less each image's baseline with config.map_baseline,
        then config.map_rule, upsampled), raw and re-scored image scores: a Result.

        The last stage of every engine: the local one and the Ray one share it. Bilinear upsampling with aligned
        corners keeps each grid's maximum, so the per-view maxima are taken on the grids.
        """
        t0 = time.perf_counter()
        if self.config.map_baseline is not None:
            view_grids = subtract_image_baseline(view_grids, self.config.map_baseline)
        maps = self.upsample(get_map_rule(self.config.map_rule)(view_grids, self.views()))
        timings["upsampling"] = time.perf_counter() - t0
        flat = view_grids.flatten(2)  # (V, N, h*w): each view's values on the patch grid, one patch apiece
        reduce = get_image_score(self.config.image_score).reduce
        return self.finish_maps(maps, embeddings, timings, pairs, flat.amax(dim=2),
                                None if reduce is peak else reduce(flat, 1.0))

    def finish_maps(self, maps: torch.Tensor, embeddings: torch.Tensor, timings: dict[str, float],
                    pairs: dict[tuple[int, int], torch.Tensor] | None = None,
                    view_maxima: torch.Tensor | None = None, view_values: torch.Tensor | None = None,
                    tiled: bool = False) -> Result:
        """Anomaly maps (N, H, W), each view's per-image map maxima (V, N; None = the maps' own) and the same views
        reduced as the image score reads them (V, N, `ImageScore.reduce`; None = the maxima) -> raw scores
        (`config.image_score_for(tiled)`) and re-scored scores: a Result (tiles blend their own maps and join here,
        `tiled`)."""
        c = self.config
        map_maxima = maps.flatten(1).amax(dim=1).cpu().numpy().astype(np.float64)
        views = map_maxima[None] if view_maxima is None else view_maxima.cpu().numpy().astype(np.float64)
        values = views if view_values is None else view_values.cpu().numpy().astype(np.float64)
        finest = 0 if view_maxima is None else finest_view_index(self.views())
        t0 = time.perf_counter()
        emb = embeddings.cpu().numpy()
        raw_np = get_image_score(c.image_score_for(tiled)).run(map_maxima, values, finest)
        notes = []
        if c.map_baseline is not None:
            notes.append(f"each image's own {c.map_baseline:g} quantile of its patch scores taken off (map_baseline)")
        stage = c.rescoring_for(tiled)
        windows = () if stage == "none" else c.rscin_windows
        if windows and len(raw_np) < 2:
            notes.append(f"{'RsCon' if stage == 'rscon' else 'RsCIN'} skipped: it needs a batch of at least 2 images; "
                         "the score is the map maximum")
            scores = raw_np
        else:
            scores = rscin(raw_np, emb, windows) if windows else raw_np
        timings["rescoring"] = time.perf_counter() - t0
        return Result(scores=scores, raw_scores=raw_np, maps=maps.cpu().numpy().astype(np.float32, copy=False),
                      embeddings=emb, config=c, timings=timings, notes=notes,
                      pair_maps={k: v.cpu().numpy() for k, v in pairs.items()} if pairs is not None else None,
                      view_maxima=None if view_maxima is None else views)

    def score(self, images: Sequence[ImageSource], progress: bool = True, keep_pairs: bool = False,
              references: Sequence[ImageSource] | Features | TiledFeatures | None = None) -> Result:
        """Score a set of unlabeled images of one product: anomaly maps and image scores for each.

        `references`: known-normal images (or their features, e.g. a loaded bank; tiled features with tiles) used
        as config.mode says.
        """
        self.config.validate()
        check_batch(len(images), references is not None, self.config.subsets)
        if isinstance(references, TiledFeatures) and self.config.tile_scale is None:
            raise ConfigError("these reference features are tiled (a bank built with --tiles): score with the same "
                              "--tiles")
        config, note = self.config_for(images, references)
        if config != self.config:
            model = MuSc(config, backbone=self._backbone)
            result = model.score(images, progress=progress, keep_pairs=keep_pairs, references=references)
            self._backbone = model._backbone
            result.config = self.config  # the configuration asked for; the note says what it meant for this batch
            if note:
                result.notes.append(note)
            return result
        if self.config.engine == "ray":
            from .distributed import RayEngine

            return RayEngine(self).score(images, progress=progress, keep_pairs=keep_pairs, references=references)
        if self.config.tile_scale is not None:
            from .tiling import TiledScorer

            return TiledScorer(self).score(images, progress=progress, references=references, keep_pairs=keep_pairs)
        _ = self.backbone  # build it first so that model loading is not counted as extraction
        t0 = time.perf_counter()
        features, sizes = self.extract(images, progress)
        if references is not None and not isinstance(references, Features):
            if len(references) < 1:
                raise InputError("the reference set is empty")
            references = self.extract(references, progress)[0]
        _sync(features.embeddings.device)
        t_extract = time.perf_counter() - t0
        result = self.score_features(features, progress, keep_pairs, references=references)
        result.timings = {"extraction": t_extract, **result.timings}
        return self.describe_inputs(result, images, sizes)

    def config_for(self, images: Sequence[ImageSource], references: object = None) -> tuple[MuScConfig, str]:
        """The configuration that scores this batch, and a note when that needs saying. Tiles 'auto' take whole
        images when the batch's plan is one tile, or when a bank built without tiles meets elongated images (with
        a note); config.tile_subsets splits a zero-shot tiled batch into `tile_subset_count` subsets (with a note).
        A tiled bank keeps its own plan, so it is scored as configured."""
        c = self.config
        auto = c.tile_scale == "auto"
        split = c.tile_subsets and c.subsets == 1 and references is None
        if c.tile_scale is None or isinstance(references, TiledFeatures) or not (auto or split):
            return c, ""
        from .tiling import TiledScorer, image_sizes, tile_subset_count

        _, starts = TiledScorer(self).plan(image_sizes(images))
        if auto and (len(starts) == 1 or isinstance(references, Features)):
            note = "" if len(starts) == 1 else "tiles 'auto' take whole images with a bank built without tiles"
            return c.replace(tile_scale=None), note
        subsets = tile_subset_count(len(starts), len(images)) if split else 1
        if subsets == 1:
            return c, ""
        return c.replace(subsets=subsets, tile_subsets=False), (
            f"each tile position scored in {subsets} random subsets of about {len(images) // subsets} images drawn "
            f"with seed {c.seed} (tile_subsets: about the mutual-scoring work of whole images; another --seed draws "
            "others, and the scores and the label-free decision move with it)")

    def describe_inputs(self, result: Result, images: Sequence[ImageSource], sizes: list[tuple[int, int]]) -> Result:
        """Record on a result what it was computed from: original sizes, weights, and paths when all are paths."""
        result.original_sizes = sizes
        result.weights_source = self.backbone.weights_source
        result.paths = [str(p) for p in images] if all(isinstance(p, (str, Path)) for p in images) else None
        return result


__all__ = ["MuSc", "split_subsets", "check_batch", "check_features", "ImageSource"]
