"""The Ray engine: the same MuSc, run as tasks on a Ray cluster (optional extra: pip install musc-ad[ray]).

Work is split so that no task and not the driver ever holds every image's features:

- extraction: one task per shard of images; the driver resolves the backbone's weights once and ships them,
  so every worker computes with the very same weights (random, imported or from the hub) and needs no
  weights file or network of its own. Features stay in the object store; only image embeddings and sizes
  come back to the driver.
- LNAMD: one task per (block of images, tapped block), giving every r of that block.
- MSM: one task per unordered pair of image blocks (the pair-symmetric product of `scoring`): it returns
  the nearest-patch distances of both blocks' patches in the other block's images. One reduce task per
  block gathers its row of the distance table and takes the interval mean.

With tiles (aligned), a shard's task cuts and extracts its images' tiles, one object per tile position, and
each position is scored as its own batch of the tasks above; the driver blends the maps as the local engine
does (`TiledScorer.finish`).

Blocks are sized from the memory budget, so each task's working memory stays within it. Subsets are
scored as independent sets of tasks. The driver adds the per-pair patch scores, then finishes exactly as
the local engine does (`MuSc.finish`): the same numbers, up to float rounding of the products (BENCHMARKS.md).
Tasks whose worker dies are run again by Ray (`max_retries`), so a lost worker does not change the result.
"""

from __future__ import annotations

import logging
import math
import socket
import time
import uuid
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import numpy as np
import torch

from .errors import ConfigError, InputError

if TYPE_CHECKING:
    from .pipeline import ImageSource, MuSc
    from .tiling import Plan
    from .types import Features, Result, TiledFeatures

log = logging.getLogger(__name__)

TASK_RETRIES = 3
"""How many times Ray runs a task again when its worker dies."""
DEFAULT_TASK_BUDGET_MB = 1024
"""Working memory of one task when --memory-budget is not given."""
SHARD_BATCHES = 4
"""Extraction shard size in backbone batches."""


def import_ray() -> Any:
    """The ray module, or a ConfigError saying how to install it."""
    try:
        import ray
    except ImportError as exc:
        raise ConfigError("the ray engine needs Ray: pip install 'musc-ad[ray]'") from exc
    return ray


def _reachable(address: str, timeout: float = 5.0) -> bool:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"--ray-address must be HOST:PORT or 'auto', got {address!r}")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return True
    except OSError:
        return False


def connect(address: str | None = None) -> Any:
    """Join the Ray cluster at `address` ('HOST:PORT' or 'auto'), or start a Ray runtime here when None.

    An unreachable address fails within seconds with one line, before anything is computed or written.
    """
    ray = import_ray()
    if address not in (None, "auto") and not _reachable(address):
        raise InputError(f"cannot reach the Ray cluster at {address}: start one with `ray start --head` "
                         "(workers join with `ray start --address HOST:PORT`), or leave out --ray-address "
                         "to run Ray on this machine")
    if ray.is_initialized():  # already connected (a driver script, or an earlier call): use that runtime
        return ray
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
    except ConnectionError as exc:
        raise InputError(f"cannot connect to the Ray cluster at {address}: {exc}") from exc
    return ray


# Tasks. Plain functions here; `_remote` wraps them with ray.remote on first use (Ray is optional).

_WORKER_BACKBONES: dict[tuple, Any] = {}


def _worker_backbone(spec: dict, state: dict[str, torch.Tensor]) -> Any:
    """The backbone in this worker process, built once per (preset, size, taps, shipped weights)."""
    from .backbones import PRESETS, Backbone, register_preset

    preset = spec["preset"]
    key = (preset.name, spec["image_size"], spec["layers"], spec["device"], spec["half"], spec["weights_id"])
    if key not in _WORKER_BACKBONES:
        if PRESETS.get(preset.name) != preset:
            register_preset(preset, overwrite=True)  # custom presets registered only on the driver
        bb = Backbone.load(preset.name, spec["image_size"], spec["layers"], pretrained=False, device=spec["device"],
                           half=spec["half"])
        bb.model.load_state_dict(state, strict=True)
        bb.weights_source = spec["source"]
        _WORKER_BACKBONES.clear()  # one model per worker at a time
        _WORKER_BACKBONES[key] = bb
    return _WORKER_BACKBONES[key]


def _extract_shard(spec: dict, state: dict[str, torch.Tensor], sources: list) -> tuple[list[torch.Tensor], dict]:
    """Features of one shard: (tokens per tapped block, {embeddings, sizes}); batches as the local engine makes them."""
    from .pipeline import MuSc

    bb = _worker_backbone(spec, state)
    model = MuSc(spec["config"], backbone=bb)
    features, sizes = model.extract(sources, progress=False)
    return features.tokens, {"embeddings": features.embeddings, "sizes": sizes}


def _extract_tiles_shard(spec: dict, state: dict[str, torch.Tensor], sources: list, canvas: tuple[int, int],
                         starts: list[tuple[int, int]]) -> tuple:
    """Tiles of one shard cut on (canvas, starts): each position's tokens per tapped block (one object per
    position), then {embeddings (P, n, D), sizes}."""
    from .pipeline import MuSc
    from .tiling import TiledScorer, image_sizes

    bb = _worker_backbone(spec, state)
    tokens, embeddings = TiledScorer(MuSc(spec["config"], backbone=bb)).extract_tiles(sources, canvas, starts, False)
    return (*tokens, {"embeddings": torch.stack(embeddings), "sizes": image_sizes(sources)})


def _aggregate_block(spec: dict, layer_pos: int, layer: int, pieces: list[tuple[int, list[int]]],
                     *shards: list[torch.Tensor]) -> list[torch.Tensor]:
    """Stage 1 (and the fast mode's projection) of one block of images at one tapped block: a (b, L, C) per view."""
    from .pipeline import MuSc

    tokens = torch.cat([shards[k][layer_pos][idx] for k, idx in pieces])
    return list(MuSc(spec["config"])._aggregate(tokens, layer))


def _salient_shard(spec: dict, layer_pos: int, layer: int, best: torch.Tensor, shard: list[torch.Tensor]
                   ) -> torch.Tensor:
    """RsCon's descriptors of one shard: the first stage-1 view at each image's highest-scoring patch."""
    from .pipeline import MuSc

    z = next(MuSc(spec["config"])._aggregate(shard[layer_pos], layer))
    return z[torch.arange(z.shape[0]), best]


def _pair_block(spec: dict, r_pos: int, za: list[torch.Tensor], zb: list[torch.Tensor] | None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Nearest-patch distances between two blocks (both directions), or within one block (zb None)."""
    from .scoring import cross_nearest_distances, nearest_patch_distances

    a = za[r_pos]
    if zb is None:
        return nearest_patch_distances(a, block_bytes=spec["tile_bytes"], matmul_dtype=spec["matmul_dtype"]), None
    return cross_nearest_distances(a, zb[r_pos], block_bytes=spec["tile_bytes"], matmul_dtype=spec["matmul_dtype"])


def _reference_block(spec: dict, r_pos: int, za: list[torch.Tensor], refs: list[torch.Tensor]) -> torch.Tensor:
    """Distances of one block's patches to the nearest patch of each reference image: (b, L, K)."""
    from .scoring import distances_to_references

    return distances_to_references(za[r_pos], refs[r_pos], block_bytes=spec["tile_bytes"],
                                   matmul_dtype=spec["matmul_dtype"])


def _reduce_block(spec: dict, n_columns: int, *parts: torch.Tensor) -> torch.Tensor:
    """One block's patch scores (b, L) from its row of the distance table: `n_columns` test parts in image
    order (the block's own part holds +inf for its own image), then the reference parts, if any."""
    from .scoring import interval_mean_excluding_self

    c = spec["config"]
    if c.mode == "musc+" and len(parts) > n_columns:
        return torch.cat(parts[n_columns:], dim=-1).amin(dim=-1)
    return interval_mean_excluding_self(torch.cat(parts, dim=-1), c.interval, c.interval_skip)


def _evaluate_category(spec: dict, state: dict[str, torch.Tensor], category: Any, size: str) -> tuple[Any, Any]:
    """One whole category (extraction, scoring, metrics) on one worker, with the local engine there."""
    from .evaluation import evaluate_category
    from .pipeline import MuSc

    bb = _worker_backbone(spec, state)
    return evaluate_category(MuSc(spec["config"], backbone=bb), category, size, progress=False)


_REMOTES: dict[tuple, Any] = {}


def _remote(fn: Callable, **options: Any) -> Any:
    ray = import_ray()
    key = (fn.__name__, *sorted(options.items()))
    if key not in _REMOTES:
        _REMOTES[key] = ray.remote(max_retries=TASK_RETRIES, **options)(fn)
    return _REMOTES[key]


@dataclass
class _Progress:
    """One progress bar over every task of a run; `wait` blocks on refs while advancing it."""

    bar: Any

    def wait(self, refs: list[Any]) -> None:
        ray = import_ray()
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            self.bar.update(len(done))
        ray.get(refs)  # raise a task's error here, once every task has ended


def blocks_for(n: int, n_patches: int, channels: int, budget: int, workers: int) -> list[np.ndarray]:
    """Split range(n) into contiguous blocks: small enough that a pair task and a reduce task fit the budget,
    and at least about two per worker, so that the cluster has work for every worker."""
    per_image = 4 * n_patches * (2 * channels + 2 * n)  # inputs of a pair task plus its and its reduce's tables
    by_budget = max(1, budget // max(1, per_image))
    by_workers = max(1, math.ceil(n / max(2, 2 * workers)))
    size = max(1, min(n, by_budget, by_workers))
    return [np.arange(i, min(n, i + size)) for i in range(0, n, size)]


_WEIGHTS_IDS: "weakref.WeakKeyDictionary[torch.nn.Module, str]" = weakref.WeakKeyDictionary()


def _weights_id(module: torch.nn.Module) -> str:
    """A name for one driver-side model's weights, so that workers never reuse another model's (two random
    models share their weights' source label, not their weights)."""
    if module not in _WEIGHTS_IDS:
        _WEIGHTS_IDS[module] = uuid.uuid4().hex
    return _WEIGHTS_IDS[module]


class RayEngine:
    """Runs a MuSc model's extraction and mutual scoring as Ray tasks; finishing and decisions stay with the driver."""

    def __init__(self, model: "MuSc") -> None:
        self.model = model
        self.config = model.config

    def _spec(self) -> dict:
        from .pipeline import score_matmul_dtype

        bb = self.model.backbone
        c = self.config
        return {"preset": bb.preset, "image_size": bb.image_size, "layers": bb.layers, "device": c.device,
                "half": c.half, "source": bb.weights_source, "weights_id": _weights_id(bb.model),
                "config": c.replace(engine="local", ray_address=None),
                "tile_bytes": None,
                "matmul_dtype": score_matmul_dtype(c.score_dtype, bb.device)}

    def _ship(self, ray: Any, spec: dict) -> tuple[dict, Any, int]:
        """The weights put in the object store once, and the device and GPU count of the backbone tasks."""
        state = ray.put({k: v.detach().cpu() for k, v in self.model.backbone.model.state_dict().items()})
        gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
        return {**spec, "device": "cuda" if gpus else "cpu"}, state, gpus

    def _shard_size(self) -> int:
        """Images per extraction task."""
        return max(1, SHARD_BATCHES * self.config.batch_size)

    def _workers(self, ray: Any) -> int:
        resources = ray.cluster_resources()
        return max(1, int(resources.get("GPU", 0)) or int(resources.get("CPU", 1)))

    def _extract(self, ray: Any, spec: dict, images: Sequence["ImageSource"], bar: _Progress,
                 plan: Plan | None = None) -> tuple[list, list, torch.Tensor, list]:
        """Submit one task per shard; returns (token refs per shard, shard index lists, embeddings, sizes).

        With a tile `plan` (canvas, starts): each shard's refs are a list, one per tile position, and the
        embeddings are (P, N, D)."""
        spec, state, gpus = self._ship(ray, spec)
        if plan is None:
            task, args = _remote(_extract_shard, num_returns=2, num_gpus=gpus), ()
        else:
            task, args = _remote(_extract_tiles_shard, num_returns=len(plan[1]) + 1, num_gpus=gpus), plan
        shard = self._shard_size()
        starts = list(range(0, len(images), shard))
        outs = [task.remote(spec, state, list(images[s:s + shard]), *args) for s in starts]
        token_refs = [o[0] if plan is None else list(o[:-1]) for o in outs]
        bar.wait([o[-1] for o in outs])
        meta = ray.get([o[-1] for o in outs])
        embeddings = torch.cat([m["embeddings"] for m in meta], dim=-2)
        sizes = [size for m in meta for size in m["sizes"]]
        shards = [np.arange(s, min(len(images), s + shard)) for s in starts]
        return token_refs, shards, embeddings, sizes

    def evaluate(self, categories: Sequence[Any], size: str, progress: bool = True) -> Iterator[tuple[Any, Any, Any]]:
        """Evaluate categories as independent tasks; yields (category, result, report) as each one finishes."""
        from tqdm.auto import tqdm

        ray = connect(self.config.ray_address)
        spec, state, gpus = self._ship(ray, self._spec())
        task = _remote(_evaluate_category, num_gpus=gpus)
        pending = {task.remote(spec, state, category, size): category for category in categories}
        with tqdm(total=len(pending), desc="categories (ray)", unit="task", disable=not progress, leave=False) as bar:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                category = pending.pop(done[0])
                result, report = ray.get(done[0])
                bar.update(1)
                yield category, result, report

    def extract(self, images: Sequence["ImageSource"], progress: bool = True) -> tuple["Features", list[tuple[int, int]]]:
        """Features of all images gathered on the driver (for banks, which store them)."""
        from tqdm.auto import tqdm

        from .types import Features

        ray = connect(self.config.ray_address)
        n_shards = math.ceil(len(images) / self._shard_size())
        with tqdm(total=n_shards, desc="extracting (ray)", unit="task", disable=not progress, leave=False) as bar:
            refs, _, embeddings, sizes = self._extract(ray, self._spec(), images, _Progress(bar))
        tokens = [torch.cat(parts) for parts in zip(*ray.get(refs))]
        return Features(tokens, embeddings), sizes

    def tiled_features(self, images: Sequence["ImageSource"], plan: Plan, progress: bool = True) -> "TiledFeatures":
        """Every tile's features of all images, cut on `plan`, gathered on the driver (tiled banks, references)."""
        from tqdm.auto import tqdm

        from .types import Features, TiledFeatures

        ray = connect(self.config.ray_address)
        n_shards = math.ceil(len(images) / self._shard_size())
        with tqdm(total=n_shards, desc="extracting tiles (ray)", unit="task", disable=not progress, leave=False) as bar:
            refs, _, embeddings, _ = self._extract(ray, self._spec(), images, _Progress(bar), plan)
        positions = [Features([torch.cat(parts) for parts in zip(*ray.get([shard[p] for shard in refs]))], embeddings[p])
                     for p in range(len(plan[1]))]
        return TiledFeatures(positions, plan[0], list(plan[1]))

    def score(self, images: Sequence["ImageSource"], progress: bool = True, keep_pairs: bool = False,
              references: Any = None) -> "Result":
        """Score the images on the cluster: the local engine's Result, computed as tasks."""
        from tqdm.auto import tqdm

        from .types import Features

        c = self.config
        n = len(images)
        if references is None and n < 2:
            raise InputError(f"MuSc needs at least 2 images to score them against each other, got {n}")
        if c.tile_scale is not None:
            return self._score_tiles(images, progress, keep_pairs, references)
        ray = connect(c.ray_address)
        spec = self._spec()
        t0 = time.perf_counter()
        with tqdm(desc="scoring (ray)", unit="task", disable=not progress, leave=False) as bar:
            bar.total = math.ceil(n / self._shard_size())
            progress_bar = _Progress(bar)
            token_refs, shards, embeddings, sizes = self._extract(ray, spec, images, progress_bar)
            if references is not None and not isinstance(references, Features):
                if len(references) < 1:
                    raise InputError("the reference set is empty")
                references = self.extract(references, progress=False)[0]
            t_extract = time.perf_counter() - t0
            t0 = time.perf_counter()
            grid, pairs = self._mutual_scores(ray, spec, n, token_refs, shards, references, progress_bar, keep_pairs)
        bb = self.model.backbone
        if c.rescoring == "rscon":
            embeddings = self._salient(ray, spec, grid.mean(dim=0), token_refs, shards)
        timings = {"extraction": t_extract, "scoring": time.perf_counter() - t0}
        h = w = bb.grid
        result = self.model.finish(grid.view(len(grid), n, h, w), embeddings, timings,
                                   {k: v.view(n, h, w) for k, v in pairs.items()} if keep_pairs else None)
        return self.model.describe_inputs(result, images, sizes)

    def _salient(self, ray: Any, spec: dict, grid: torch.Tensor, token_refs: list, shards: list[np.ndarray]
                 ) -> torch.Tensor:
        """RsCon's descriptors (N, C) at each image's highest-scoring patch of `grid` (N, L), computed where the
        features are."""
        pos, layer = self.model.salient_tap(len(self.model.backbone.layers))
        best = grid.argmax(dim=1)
        task = _remote(_salient_shard)
        return torch.cat(ray.get([task.remote(spec, pos, layer, best[torch.as_tensor(idx)], ref)
                                  for idx, ref in zip(shards, token_refs)]))

    def _score_tiles(self, images: Sequence["ImageSource"], progress: bool, keep_pairs: bool, references: Any
                     ) -> "Result":
        """Native-resolution tiles as tasks: tiles extracted per shard, each tile position scored as its own
        batch (aligned tiles), maps blended and finished on the driver as the local engine does."""
        from tqdm.auto import tqdm

        from .scoring import shallow_views
        from .tiling import TiledScorer, image_sizes, reads_shallow_blocks

        c = self.config
        if c.tile_matching != "aligned":
            raise ConfigError(f"--tile-matching {c.tile_matching} runs on the local engine only: leave out --engine "
                              "ray, or use aligned tiles")
        tiler = TiledScorer(self.model)
        tiler.check(references, keep_pairs)
        ray = connect(c.ray_address)
        spec = self._spec()
        n = len(images)
        t0 = time.perf_counter()
        plan = tiler.plan_for(image_sizes(images), references)
        n_pos = len(plan[1])
        with tqdm(desc="scoring tiles (ray)", unit="task", disable=not progress, leave=False) as bar:
            bar.total = math.ceil(n / self._shard_size())
            progress_bar = _Progress(bar)
            token_refs, shards, embeddings, sizes = self._extract(ray, spec, images, progress_bar, plan)
            ref_tiles = tiler.reference_tiles(references, plan, progress=False)
            ref_positions = None if ref_tiles is None else ref_tiles.positions
            t_extract = time.perf_counter() - t0
            t0 = time.perf_counter()
            h = w = self.model.backbone.grid
            grids: list[torch.Tensor] = []
            salient: list[torch.Tensor] | None = [] if c.rescoring_for(tiled=True) == "rscon" else None
            shallow = reads_shallow_blocks(c)
            shallow_grids: list[torch.Tensor] = []
            for p in range(n_pos):
                at_p = [refs[p] for refs in token_refs]
                grid, pairs = self._mutual_scores(ray, spec, n, at_p, shards,
                                                  None if ref_positions is None else ref_positions[p], progress_bar,
                                                  shallow)
                grids.append(grid.view(len(grid), n, h, w))
                if shallow:
                    shallow_grids.append(shallow_views(pairs, self.model.views()).view(-1, n, h, w))
                if salient is not None:
                    salient.append(self._salient(ray, spec, grid.mean(dim=0), at_p, shards))
        result = tiler.finish(torch.stack(grids), embeddings, salient, plan, {"extraction": t_extract}, t0,
                              torch.stack(shallow_grids) if shallow else None)
        return self.model.describe_inputs(result, images, sizes)

    def _mutual_scores(self, ray: Any, spec: dict, n: int, token_refs: list, shards: list[np.ndarray],
                       references: Any, bar: _Progress, keep_pairs: bool
                       ) -> tuple[torch.Tensor, dict[tuple[int, int], torch.Tensor]]:
        """Every (tapped block, subset, r) as pair and reduce tasks; returns each view's patch scores (V, N, L),
        the mean over the tapped blocks, as `MuSc.patch_scores` does.

        The sums run in the local engine's order (tapped block, subset, r), so they round the same way.
        """
        from .pipeline import split_subsets

        c = self.config
        bb = self.model.backbone
        n_patches = bb.grid ** 2
        channels = bb.model.embed_dim if c.projection_dim is None else min(c.projection_dim, bb.model.embed_dim)
        budget = (c.memory_budget_mb or DEFAULT_TASK_BUDGET_MB) * 2**20
        spec = {**spec, "tile_bytes": max(1, min(16 * 2**20, budget // 4))}
        parts = split_subsets(n, c.subsets, c.seed) if references is None or n >= 2 * c.subsets else [np.arange(n)]
        owner = np.concatenate([np.full(len(s), k) for k, s in enumerate(shards)])
        local = np.concatenate([np.arange(len(s)) for s in shards])
        aggregate = _remote(_aggregate_block)
        ref_shard = ray.put(references.tokens) if references is not None else None
        workers = self._workers(ray)
        views = self.model.views()
        total = torch.zeros((len(views), n, n_patches), dtype=torch.float32)
        pairs: dict[tuple[int, int], torch.Tensor] = {}
        for layer_pos, layer in enumerate(bb.layers):
            ref_z = None
            if ref_shard is not None:  # the references' LNAMD, once per tapped block
                ref_z = aggregate.remote(spec, layer_pos, layer, [(0, list(range(references.num_images)))], ref_shard)
                bar.bar.total += 1
            for subset in parts:
                blocks = [subset[b] for b in blocks_for(len(subset), n_patches, channels, budget, workers)]
                z = []
                for block in blocks:
                    needed = sorted(set(owner[block].tolist()))
                    pieces = [(k, local[block][owner[block] == o].tolist()) for k, o in enumerate(needed)]
                    z.append(aggregate.remote(spec, layer_pos, layer, pieces, *[token_refs[o] for o in needed]))
                bar.bar.total += len(blocks)
                for r_pos, r in enumerate(views):
                    for block, s in zip(blocks, self._score_blocks(ray, spec, r_pos, z, ref_z, bar)):
                        index = torch.as_tensor(block)
                        total[r_pos, index] += s
                        if keep_pairs:
                            pairs.setdefault((layer, r), torch.zeros_like(total[0]))[index] = s
                bar.wait(z + ([ref_z] if ref_z is not None else []))
        total /= len(bb.layers)
        return total, pairs

    def _score_blocks(self, ray: Any, spec: dict, r_pos: int, z: list, ref_z: Any, bar: _Progress
                      ) -> list[torch.Tensor]:
        """Pair tasks over the unordered block pairs, then one reduce per block: each block's (b, L) scores."""
        pair, to_refs, reduce = _remote(_pair_block, num_returns=2), _remote(_reference_block), _remote(_reduce_block)
        nb = len(z)
        mutual = self.config.mode != "musc+" or ref_z is None
        outs = {(i, j): pair.remote(spec, r_pos, z[i], None if i == j else z[j])
                for i in range(nb) for j in range(i, nb)} if mutual else {}
        refs = [to_refs.remote(spec, r_pos, z[i], ref_z) for i in range(nb)] if ref_z is not None else []
        reduces = []
        for i in range(nb):
            # block i's row: its distances to block j come from pair (i, j) first half or pair (j, i) second half
            columns = [outs[(i, j)][0] if i <= j else outs[(j, i)][1] for j in range(nb)] if mutual else []
            reduces.append(reduce.remote(spec, len(columns), *columns, *refs[i:i + 1]))
        bar.bar.total += len(outs) + len(refs) + len(reduces)
        bar.wait([o[0] for o in outs.values()] + refs)
        bar.wait(reduces)
        return ray.get(reduces)


__all__ = ["RayEngine", "connect", "import_ray", "blocks_for", "TASK_RETRIES"]
