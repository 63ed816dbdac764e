"""Small typed records passed between the stages and returned to the user."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .config import MuScConfig
from .decision import PIXEL_METHODS, Decisions, decide, rank_order


@dataclass
class Features:
    """What the backbone gives for a set of images."""

    tokens: list[torch.Tensor]
    """Per tapped block: (N, C, h, w) patch tokens on the patch grid."""
    embeddings: torch.Tensor
    """(N, D) image embeddings (used by RsCIN)."""

    @property
    def num_images(self) -> int:
        return int(self.embeddings.shape[0])

    def subset(self, index: torch.Tensor | list[int]) -> "Features":
        index = torch.as_tensor(index, dtype=torch.long)
        return Features([t[index.to(t.device)] for t in self.tokens], self.embeddings[index.to(self.embeddings.device)])


@dataclass
class TiledFeatures:
    """Features of images cut into tiles on one plan (musc.tiling): what a tiled bank holds."""

    positions: list[Features]
    """Per tile position, the features of every image's tile there."""
    canvas: tuple[int, int]
    """(width, height) every image is resized to before it is cut."""
    starts: list[tuple[int, int]]
    """(x, y) of each tile position on the canvas."""

    @property
    def num_images(self) -> int:
        return self.positions[0].num_images

    def subset(self, index: torch.Tensor | list[int]) -> "TiledFeatures":
        """The same plan with these images only, at every tile position."""
        return TiledFeatures([p.subset(index) for p in self.positions], self.canvas, self.starts)


@dataclass
class Result:
    """Scores and maps of one MuSc run over N images."""

    scores: np.ndarray
    """(N,) final image scores (RsCIN-refined when enabled); higher = more anomalous."""
    raw_scores: np.ndarray
    """(N,) image scores before re-scoring (config.image_score): 'max', each map's maximum; 'scale-max', each
    image's strongest per-view map maximum, scaled over the batch."""
    maps: np.ndarray
    """(N, S, S) float32 anomaly maps at the model's input size."""
    embeddings: np.ndarray
    """(N, D) what re-scoring measured image similarity on: the image embeddings (class token, or CLIP's projected
    embedding; with tiles, the mean over tile positions) for `rscin`, each image's salient patch vector
    (with tiles: its highest-scoring tile's) for `rscon`."""
    config: MuScConfig
    paths: list[str] | None = None
    original_sizes: list[tuple[int, int]] | None = None
    """(width, height) of each input image."""
    timings: dict[str, float] = field(default_factory=dict)
    """Seconds per stage: extraction, aggregation, scoring, rescoring, upsampling."""
    weights_source: str | None = None
    """Where the backbone's weights came from (file path, 'hub:<timm id>' or 'random')."""
    pair_maps: dict[tuple[int, int], np.ndarray] | None = None
    """Optional (N, h, w) patch-score grids per (block, r) pair, for ablations."""
    notes: list[str] = field(default_factory=list)
    """Things the user should know about this result (e.g. RsCIN skipped for a single image)."""
    evidence: np.ndarray | None = None
    """(N,) what the map-based decisions (`balanced`, `fdr`) test per image; None = each map's maximum. A tiled
    batch sets the maximum of its finest view's blended map (LNAMD's smallest r), which counts thin defects better
    than the mean map's maximum (musc.tiling)."""
    relative_evidence: np.ndarray | None = None
    """(N,) on tiled batches, `evidence` less the image's own level (`musc.tiling.RELATIVE_LEVEL` quantile of its
    finest view's patch scores over all its tiles): how far its strongest region stands above the rest of it. A
    normal image whose whole map stands high (lighting, the surface of that part) has high evidence but not high
    relative evidence; `balanced` flags no more images than the same count on it finds, when it finds any
    (musc.decision). None on whole images."""
    view_maxima: np.ndarray | None = None
    """(V, N) each stage-1 view's per-image map maximum, one row per label of `MuSc.views()` (LNAMD: each r, in the
    order given; SNAMD: one row): what the per-view image scores read (`scale-max`, `finest-max`). None when the run
    did not compute them: a tiled batch whose image score reads only its maps' maxima (`max`)."""

    def map_maxima(self) -> np.ndarray:
        """(N,) each map's maximum: the scores.csv column `map_max`."""
        return self.maps.reshape(len(self), -1).max(axis=1).astype(np.float64)

    def decision_evidence(self, map_maxima: np.ndarray | None = None) -> np.ndarray:
        """(N,) `evidence`, or each map's maximum (`map_maxima` when already at hand) when the run set none: the
        scores.csv column `evidence`."""
        if self.evidence is not None:
            return np.asarray(self.evidence, dtype=np.float64)
        return self.map_maxima() if map_maxima is None else map_maxima

    @property
    def tiled(self) -> bool:
        """Whether the images were cut into tiles (tiled batches set `relative_evidence`)."""
        return self.relative_evidence is not None

    def pixel_decision(self) -> str:
        """The mask rule the maps are decided with unless the user names one: the config's `tile_pixel_decision` on
        tiled batches, 'half-peak' on whole images (musc.decision.PIXEL_METHODS)."""
        return self.config.tile_pixel_decision if self.tiled else PIXEL_METHODS[0]

    def map_patch(self) -> int:
        """Pixels of one patch in the maps' frame (whole images and tiles alike: the backbone's patch size), which
        `grown` masks smooth over."""
        from .backbones import get_preset

        return get_preset(self.config.backbone).patch_size

    def decide(self, method: str = "balanced", **options: Any) -> Decisions:
        """Which images are defective and where, decided as `musc score` decides them: `musc.decision.decide` on
        these scores, maps, evidence and relative evidence, the masks drawn by `pixel_decision()` unless
        `pixel_method` is given. `options`: decide's fdr, k, rate, threshold, pixel_method, pixel_threshold."""
        options.setdefault("pixel_method", self.pixel_decision())
        return decide(self.scores, self.maps, method, evidence=self.evidence, relative_evidence=self.relative_evidence,
                      patch=self.map_patch(), **options)

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    def __repr__(self) -> str:
        """One line for a notebook or a log, not the arrays: what was scored, how, and the range of the scores."""
        n = len(self)
        scores = f"scores {self.scores.min():.3g} to {self.scores.max():.3g}" if n else "no scores"
        return (f"Result({n} image{'' if n == 1 else 's'}, {self.config.backbone} at {self.config.image_size}, maps "
                f"{' x '.join(str(d) for d in self.maps.shape[1:])}, {scores}"
                + (f", {len(self.notes)} note{'' if len(self.notes) == 1 else 's'}" if self.notes else "") + ")")

    def ranking(self, map_maxima: np.ndarray | None = None) -> np.ndarray:
        """Image indices from most to least anomalous: by score, ties broken by the map maxima (`map_maxima` when
        already at hand; as `balanced` breaks them: scale-max gives each view's strongest image 1.0, so without
        re-scoring several can tie), then by input order."""
        return rank_order(self.scores, self.map_maxima() if map_maxima is None else map_maxima)

    def map_at_original_size(self, index: int) -> np.ndarray:
        """The anomaly map of image `index` resized bilinearly to its original (height, width)."""
        if self.original_sizes is None:
            return self.maps[index]
        w, h = self.original_sizes[index]
        return resize_map(self.maps[index], (h, w))


def resize_map(amap: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A 2-D anomaly map resized bilinearly to `size` (height, width), as float32: to an image's original size for the
    result files, and back to the model's frame for `musc decide`."""
    m = torch.from_numpy(np.ascontiguousarray(amap, dtype=np.float32))[None, None]
    return F.interpolate(m, size=tuple(size), mode="bilinear", align_corners=False)[0, 0].numpy()


__all__ = ["Features", "TiledFeatures", "Result", "resize_map"]
