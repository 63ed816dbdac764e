"""musc: zero-shot industrial anomaly classification and segmentation by mutual scoring (MuSc, ICLR 2024).

The three stages of the paper live in three modules:
- `musc.aggregation`: LNAMD, local neighbourhood aggregation of patch tokens at several degrees r.
- `musc.scoring`: MSM, mutual scoring of every image's patches by all the other images.
- `musc.rescoring`: RsCIN, refining image scores over the images' similarity graph.
`musc.pipeline.MuSc` composes them behind one call; `musc.decision.decide` says which images are defective, and
where, without labels.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .backbones import PRESETS, Backbone, BackbonePreset, get_preset, register_preset
from .config import MuScConfig
from .decision import Decision, Decisions, decide
from .errors import BackboneError, ConfigError, DatasetError, ImageReadError, InputError, MuscError
from .pipeline import MuSc
from .rescoring import rscin
from .types import Features, Result

rescore = rscin

__all__ = [
    "MuSc", "MuScConfig", "Result", "Features", "rscin", "rescore", "decide", "Decision", "Decisions",
    "Backbone", "BackbonePreset", "PRESETS", "get_preset", "register_preset",
    "MuscError", "ConfigError", "InputError", "ImageReadError", "BackboneError", "DatasetError",
    "__version__",
]
