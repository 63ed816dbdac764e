"""The run configuration: one frozen dataclass whose defaults are the paper's settings."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .decision import PIXEL_METHODS
from .errors import ConfigError

DEVICES = ("auto", "cpu", "cuda")
SCORE_DTYPES = ("auto", "float32", "float16", "bfloat16")
MODES = ("musc", "musc+")
ENGINES = ("local", "ray")
AGGREGATIONS = ("lnamd", "snamd", "lnamd+snamd")
RESCORINGS = ("rscin", "rscon")
TILE_RESCORINGS = (*RESCORINGS, "none")
IMAGE_SCORES = ("max", "scale-max", "finest-max", "z-blend", "finest-top3", "finest-top3-level")
MAP_RULES = ("mean", "z-max", "finest")
TILE_MATCHINGS = ("aligned", "all")
TILE_BLOCKS = ("all", "shallow")
METHODS: dict[str, dict[str, Any]] = {
    "musc": {"aggregation": "lnamd", "map_rule": "mean", "image_score": "max", "rescoring": "rscin",
             "rscin_windows": (1, 2, 3)},
    "musc-scales": {"aggregation": "lnamd", "map_rule": "mean", "image_score": "scale-max", "rescoring": "rscin",
                    "rscin_windows": (1, 2, 3)},
    "muscv2": {"aggregation": "snamd", "map_rule": "mean", "image_score": "max", "rescoring": "rscon",
               "rscin_windows": (1, 7)},
    "muscv2-tiles": {"aggregation": "snamd", "map_rule": "mean", "image_score": "max", "rescoring": "rscon",
                     "rscin_windows": (1, 7), "tile_scale": "auto", "tile_overlap": 0.1},
    "musc-scales-tiles": {"aggregation": "lnamd", "map_rule": "mean", "image_score": "scale-max", "rescoring": "rscin",
                          "rscin_windows": (1, 2, 3), "interval_skip": 0.03, "tile_scale": "auto", "tile_overlap": 0.1,
                          "tile_subsets": True, "tile_rescoring": "none", "tile_image_score": "finest-top3-level",
                          "tile_map_rule": "finest", "tile_map_blocks": "shallow", "tile_pixel_decision": "grown"},
}
"""Presets (`--method`): `musc` is the ICLR 2024 paper exactly; `musc-scales` is the paper's stages and maps with each
image scored by its strongest scale (image_score 'scale-max'); `muscv2` takes MuSc-V2's 2D
stages (SNAMD, RsCon with windows 1 and 7); `muscv2-tiles` adds tiles along the long side of elongated images
(tile_scale 'auto', 10 % overlap); `musc-scales-tiles` is `musc-scales` with the nearest 3 % of the other images'
distances left out of MSM's interval mean (interval_skip) and the same tiles, each tile position scored in as many
random subsets as there are positions (tile_subsets), so that tiles cost about the mutual-scoring work of whole
images, no re-scoring of a tiled batch (tile_rescoring 'none'), a tiled image scored by the mean of its r = 1 map
over its strongest three patches' area less half its own level, that map's 0.9 quantile (tile_image_score
'finest-top3-level'), and a tiled batch's maps from its r = 1 scores over the tapped blocks but the deepest
(tile_map_rule 'finest', tile_map_blocks 'shallow'), decided into masks by `grown` (tile_pixel_decision);
`musc-thin` is `musc-scales-tiles` for thin defects in elongated parts: its tiled images are scored from those blocks
too (tile_image_blocks 'shallow') and its masks drawn by `half-peak`, which fits a thin crack; whole images are scored
as by the default. They set stages and tiling only: backbone, size and blocks stay the user's."""
METHODS["musc-thin"] = {**METHODS["musc-scales-tiles"], "tile_image_blocks": "shallow",
                        "tile_pixel_decision": "half-peak"}

DEFAULT_METHOD = "musc-scales-tiles"
"""The preset `musc score` and `musc evaluate` use unless --method says otherwise (chosen on the accuracy panel,
BENCHMARKS.md): `musc-scales` with interval_skip 0.03 on near-square images, tiles along the long side of elongated
ones, scored without RsCIN by their strongest three patches' area less half their own level, with maps from their r = 1
scores over the shallower blocks."""


@dataclass(frozen=True)
class MuScConfig:
    """Every setting of a MuSc run. Constructing one only stores values; `validate()` checks them.

    Defaults follow the paper: CLIP ViT-L/14-336 run at 518 px, blocks 5/11/17/23,
    aggregation degrees r = 1, 3, 5, the smallest 30% of the N-1 image distances averaged,
    and RsCIN with windows 1, 2, 3.
    """

    backbone: str = "clip_vit_l14_336"
    image_size: int | None = None
    """Input side S (images are resized to S x S); None = the preset's default (518 for the /14 presets)."""
    layers: tuple[int, ...] | None = None
    """0-indexed transformer blocks to tap, in any order (they are tapped and labelled in block order); None = the
    preset's four blocks."""
    r_values: tuple[int, ...] = (1, 3, 5)
    interval: float = 0.3
    """Fraction of the N-1 nearest-patch distances (the smallest ones) averaged into a patch score."""
    interval_skip: float = 0.0
    """Fraction of the N-1 nearest-patch distances left out below the interval (musc.scoring.interval_bounds): the
    mean then runs over the distances from this share up to `interval`. 0 in the paper."""
    rscin_windows: tuple[int, ...] = (1, 2, 3)
    """RsCIN window sizes; an empty tuple turns RsCIN off."""
    subsets: int = 1
    """Score the images in this many random, label-free subsets (RsCIN still sees all)."""
    seed: int = 0
    device: str = "auto"
    half: bool = True
    """Half-precision backbone inference when running on a GPU (ignored on CPU)."""
    batch_size: int = 8
    weights: str | None = None
    """Local state dict (timm layout, .safetensors or .pth) instead of hub weights."""
    pretrained: bool = True
    """False builds the backbone with random weights (for tests and smoke runs)."""
    memory_budget_mb: int | None = None
    """Upper bound for the scoring stage's working memory; None = a default per device."""
    score_dtype: str = "auto"
    """Precision of the similarity products in MSM: float32, or float16/bfloat16 inputs with float32 accumulation
    (tensor-core speed on a GPU). 'auto' = float16 on a GPU (maps within 1e-3 of float32 and the same metrics on
    real data, BENCHMARKS.md), float32 on the CPU (where half products are no faster)."""
    projection_dim: int | None = None
    """Approximate fast mode: random projection of the patch vectors to this many dimensions before MSM."""
    mode: str = "musc"
    """With reference images: 'musc' (few-shot: references join the scorers) or 'musc+' (references only)."""
    aggregation: str = "lnamd"
    """Stage 1 variant (musc.aggregation.AGGREGATIONS): 'lnamd' (MuSc) or 'snamd' (MuSc-V2)."""
    map_rule: str = "mean"
    """How each view's patch scores become one map (musc.scoring.MAP_RULES): 'mean' (MuSc: the mean over views)
    or 'z-max' (each view standardised by the batch's median and MAD, then the largest per patch) or 'finest' (the
    finest view alone: LNAMD's smallest r)."""
    tile_map_rule: str | None = None
    """The map rule when the images are cut into tiles; None = `map_rule`. Tiles exist for defects much smaller
    than a patch of the whole image, which the wider neighbourhoods of r = 3 and 5 smear ('finest', the default
    preset's: README, How it works)."""
    map_baseline: float | None = None
    """Each image's own level taken off its patch scores before the map rule: this quantile of each view's scores
    in that image (over all its tiles) is subtracted (musc.scoring.subtract_image_baseline); None = off (the
    paper). For aligned products whose normal images vary as a whole (lighting, surface); it scores down defects
    that change a whole image (an option: README, How it works)."""
    image_score: str = "max"
    """An image's score before re-scoring (musc.rescoring.IMAGE_SCORES): 'max' (MuSc: its map's maximum) or
    'scale-max' (the strongest of its per-view map maxima, each view's scaled to [0, 1] over the batch) or
    'finest-max' (the maximum of its finest view's map: LNAMD's r = 1) or 'z-blend' (each view's maxima as robust
    z-scores over the batch, the finest view's weighted 2/3 with three views) or 'finest-top3' (the mean of its
    finest view's map over its strongest three patches' area) or 'finest-top3-level' (that less half the image's
    level, the 0.9 quantile of that map)."""
    tile_image_score: str | None = None
    """The image score when the images are cut into tiles; None = `image_score`. 'finest-max' (an option) ranks thin
    defects a fraction of one tile wide better, and wide ones worse; 'finest-top3' averages that map over its strongest
    three patches' area and ranked all three tiled sets measured higher; 'finest-top3-level' (the default preset's)
    takes half the image's own level (the 0.9 quantile of that map) off it, so that normal images whose whole map
    stands high rank lower (README, How it works)."""
    tile_map_blocks: str = "all"
    """The tapped blocks whose patch scores make a tiled batch's maps: 'all' of them, or 'shallow' (the default
    preset's): all but the deepest, whose patches see a thin defect a fraction of one tile wide least
    sharply. Only the maps change: image scores, evidence and decisions keep their blocks; with one tapped block it
    reads that one (README, How it works)."""
    tile_image_blocks: str = "all"
    """The tapped blocks whose finest view a tiled image's score reads: 'all' of them (the finest view the maps and
    decisions use), or 'shallow' (an option): all but the deepest, so a thin defect a fraction of one tile wide is
    ranked by the blocks that still see it sharply. Only the image score changes: maps, evidence and decisions keep
    every tapped block; with one tapped block it reads that one (README, How it works)."""
    tile_pixel_decision: str = "half-peak"
    """The mask rule (`--pixel-decision`, musc.decision.PIXEL_METHODS) a tiled batch's maps are decided with unless
    the user names one; whole images use 'half-peak'. The default preset's is 'grown', for its r = 1 tiled maps, on
    which a wide defect is a plateau of patches that 'half-peak' marks only the top of (README, Decisions)."""
    rescoring: str = "rscin"
    """Stage 3 variant: 'rscin' (MuSc: image embeddings) or 'rscon' (MuSc-V2: each image's most anomalous patch)."""
    tile_rescoring: str | None = None
    """Stage 3 when the images are cut into tiles: 'rscin', 'rscon', or 'none' (the image scores before
    re-scoring, as with no RsCIN windows); None = `rescoring`. A tiled image's RsCIN embedding is the mean of its tiles'
    class tokens: it describes the whole product, not a defect a fraction of one tile wide."""
    tile_scale: float | str | None = None
    """Native-resolution tiles (musc.tiling): images are resized to the batch's median size times this factor and
    cut into overlapping image_size tiles; None = off (each image resized whole to image_size). 'auto': the
    short side of the batch's median size becomes image_size (aspect kept), so only elongated images are cut
    along their long side; near-square batches and a bank built without tiles take whole images."""
    tile_overlap: float = 0.25
    """Least overlap of neighbouring tiles, as a fraction of the tile side."""
    tile_matching: str = "aligned"
    """With tiles: 'aligned' (tile p of an image is scored against tile p of the others: products in a fixture) or
    'all' (against every tile of the others: products that move; scoring time x the number of tiles)."""
    tile_subsets: bool = False
    """With tiles and no --subsets: a batch cut into P tile positions is scored in P random label-free subsets (each
    of at least MIN_TILE_SUBSET images, musc.tiling), so P positions cost about the mutual scoring of whole images."""
    engine: str = "local"
    """Where the work runs: 'local' (this process) or 'ray' (tasks on a Ray cluster; same results)."""
    ray_address: str | None = None
    """The Ray cluster to join ('HOST:PORT' or 'auto'); None starts a Ray runtime on this machine."""

    def validate(self) -> None:
        """Raise ConfigError naming the first setting that cannot work."""
        if self.image_size is not None and self.image_size <= 0:
            raise ConfigError(f"image_size must be positive, got {self.image_size}")
        if not self.r_values:
            raise ConfigError("r_values must name at least one aggregation degree")
        for r in self.r_values:
            if r < 1 or r % 2 == 0:
                raise ConfigError(f"aggregation degree r must be a positive odd integer, got {r}")
        if len(set(self.r_values)) != len(self.r_values):
            raise ConfigError(f"r_values name an aggregation degree more than once: {list(self.r_values)}")
        if self.layers is not None:
            if not self.layers:
                raise ConfigError("layers must name at least one block")
            if any(i < 0 for i in self.layers):
                raise ConfigError(f"layers must be 0-indexed block numbers >= 0, got {list(self.layers)}")
            if len(set(self.layers)) != len(self.layers):
                raise ConfigError(f"layers name a block more than once: {list(self.layers)}")
        if not 0.0 < self.interval <= 1.0:
            raise ConfigError(f"interval must be in (0, 1], got {self.interval}")
        if not 0.0 <= self.interval_skip < self.interval:
            raise ConfigError(f"interval_skip must be in [0, interval = {self.interval}), got {self.interval_skip}")
        if any(k < 1 for k in self.rscin_windows):
            raise ConfigError(f"RsCIN windows must be >= 1, got {list(self.rscin_windows)}")
        if self.subsets < 1:
            raise ConfigError(f"subsets must be >= 1, got {self.subsets}")
        if self.device not in DEVICES and not self.device.startswith("cuda:"):
            raise ConfigError(f"device must be one of {', '.join(DEVICES)} (or cuda:N), got {self.device!r}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.memory_budget_mb is not None and self.memory_budget_mb < 1:
            raise ConfigError(f"memory_budget_mb must be >= 1, got {self.memory_budget_mb}")
        self._validate_fast()

    def _validate_fast(self) -> None:
        if self.score_dtype not in SCORE_DTYPES:
            raise ConfigError(f"score_dtype must be one of {', '.join(SCORE_DTYPES)}, got {self.score_dtype!r}")
        if self.mode not in MODES:
            raise ConfigError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.aggregation not in AGGREGATIONS:
            raise ConfigError(f"aggregation must be one of {', '.join(AGGREGATIONS)}, got {self.aggregation!r}")
        if self.map_rule not in MAP_RULES:
            raise ConfigError(f"map_rule must be one of {', '.join(MAP_RULES)}, got {self.map_rule!r}")
        if self.tile_map_rule is not None and self.tile_map_rule not in MAP_RULES:
            raise ConfigError(f"tile_map_rule must be one of {', '.join(MAP_RULES)} or None, got {self.tile_map_rule!r}")
        if self.map_baseline is not None and not 0 < self.map_baseline < 1:
            raise ConfigError(f"map_baseline must be a quantile in (0, 1) or None, got {self.map_baseline}")
        if self.image_score not in IMAGE_SCORES:
            raise ConfigError(f"image_score must be one of {', '.join(IMAGE_SCORES)}, got {self.image_score!r}")
        if self.tile_image_score is not None and self.tile_image_score not in IMAGE_SCORES:
            raise ConfigError(f"tile_image_score must be one of {', '.join(IMAGE_SCORES)} or None, "
                              f"got {self.tile_image_score!r}")
        if self.tile_map_blocks not in TILE_BLOCKS:
            raise ConfigError(f"tile_map_blocks must be one of {', '.join(TILE_BLOCKS)}, "
                              f"got {self.tile_map_blocks!r}")
        if self.tile_pixel_decision not in PIXEL_METHODS:
            raise ConfigError(f"tile_pixel_decision must be one of {', '.join(PIXEL_METHODS)}, "
                              f"got {self.tile_pixel_decision!r}")
        if self.tile_image_blocks not in TILE_BLOCKS:
            raise ConfigError(f"tile_image_blocks must be one of {', '.join(TILE_BLOCKS)}, "
                              f"got {self.tile_image_blocks!r}")
        if self.rescoring not in RESCORINGS:
            raise ConfigError(f"rescoring must be one of {', '.join(RESCORINGS)}, got {self.rescoring!r}")
        if self.tile_rescoring is not None and self.tile_rescoring not in TILE_RESCORINGS:
            raise ConfigError(f"tile_rescoring must be one of {', '.join(TILE_RESCORINGS)} or None, "
                              f"got {self.tile_rescoring!r}")
        if isinstance(self.tile_scale, str):
            if self.tile_scale != "auto":
                raise ConfigError(f"tile_scale must be a number in (0, 8] or 'auto', got {self.tile_scale!r}")
        elif self.tile_scale is not None and not 0 < self.tile_scale <= 8:
            raise ConfigError(f"tile_scale must be in (0, 8], got {self.tile_scale}")
        if not 0 <= self.tile_overlap <= 0.9:
            raise ConfigError(f"tile_overlap must be in [0, 0.9], got {self.tile_overlap}")
        if self.tile_matching not in TILE_MATCHINGS:
            raise ConfigError(f"tile_matching must be one of {', '.join(TILE_MATCHINGS)}, got {self.tile_matching!r}")
        if self.engine not in ENGINES:
            raise ConfigError(f"engine must be one of {', '.join(ENGINES)}, got {self.engine!r}")
        if self.ray_address is not None and self.engine != "ray":
            raise ConfigError("a Ray address needs the ray engine (--engine ray)")
        if self.projection_dim is not None and self.projection_dim < 8:
            raise ConfigError(f"projection_dim must be >= 8, got {self.projection_dim}")

    @classmethod
    def for_method(cls, method: str, **values: Any) -> "MuScConfig":
        """A configuration with a method preset's stages (METHODS), then `values` on top."""
        if method not in METHODS:
            raise ConfigError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
        return cls(**{**METHODS[method], **values})

    def rescoring_for(self, tiled: bool) -> str:
        """Stage 3 of a run on whole images (`rescoring`) or on tiles (`tile_rescoring`, else the same); 'none' =
        no re-scoring."""
        return (self.tile_rescoring or self.rescoring) if tiled else self.rescoring

    def image_score_for(self, tiled: bool) -> str:
        """The image score of a run on whole images (`image_score`) or on tiles (`tile_image_score`, else the same)."""
        return (self.tile_image_score or self.image_score) if tiled else self.image_score

    def map_rule_for(self, tiled: bool) -> str:
        """The map rule of a run on whole images (`map_rule`) or on tiles (`tile_map_rule`, else the same)."""
        return (self.tile_map_rule or self.map_rule) if tiled else self.map_rule

    def replace(self, **changes: Any) -> "MuScConfig":
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "MuScConfig":
        names = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise ConfigError(f"unknown configuration keys: {', '.join(unknown)}")
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**values)

    def save(self, path: str | Path, extra: dict[str, Any] | None = None) -> None:
        """Write the configuration (plus optional run facts) as JSON, atomically."""
        from .io import atomic_write_text

        payload = {"config": self.to_dict(), **(extra or {})}
        atomic_write_text(Path(path), json.dumps(payload, indent=2, default=str) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "MuScConfig":
        data = json.loads(Path(path).read_text())
        return cls.from_dict(data.get("config", data))


__all__ = ["MuScConfig", "DEVICES", "ENGINES", "METHODS", "DEFAULT_METHOD", "AGGREGATIONS", "RESCORINGS",
           "TILE_RESCORINGS", "IMAGE_SCORES", "MAP_RULES", "TILE_BLOCKS"]
