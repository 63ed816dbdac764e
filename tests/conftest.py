"""Shared fixtures: tiny random-init ViT presets (same timm code path as the real ones) and synthetic images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from musc.backbones import IMAGENET_MEAN, IMAGENET_STD, PRESETS, BackbonePreset, register_preset

TINY_DINO = register_preset(BackbonePreset(
    "test_tiny_dino", "vit_small_patch14_dinov2", "dino", 14, 56, 56, (0, 1, 2, 3), IMAGENET_MEAN, IMAGENET_STD,
    model_kwargs=dict(embed_dim=32, depth=4, num_heads=2)), overwrite=True)
TINY_CLIP = register_preset(BackbonePreset(
    "test_tiny_clip", "vit_base_patch16_clip_224", "clip", 16, 32, 64, (1, 3), IMAGENET_MEAN, IMAGENET_STD,
    num_classes=16, model_kwargs=dict(embed_dim=32, depth=4, num_heads=2)), overwrite=True)

SHARED = Path(__file__).resolve().parents[2] / "shared"
MTD_ROOT = SHARED / "datasets" / "mtd"


TINY_CLI = ["--backbone", "test_tiny_dino", "--image-size", "56", "--random-weights", "--device", "cpu", "-q"]
"""Command-line options of a fast run: the tiny random-weight test backbone on the CPU, quietly."""


def run_cli(*args):
    """Invoke the `musc` command line in-process (exceptions propagate, so a failure shows its traceback)."""
    from click.testing import CliRunner

    from musc.cli import main

    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def rows_of(out: Path) -> list[dict[str, str]]:
    """A result folder's scores.csv rows (rank order)."""
    from musc.io import read_scores_table

    return read_scores_table(out)[2]


def textured(seed: int, size: int = 112) -> np.ndarray:
    """A grey striped texture with a random phase and mild noise: all alike, none identical."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    base = 128 + 40 * np.sin(2 * np.pi * (xx + rng.uniform(0, 8)) / 8.0)
    img = base + rng.normal(0, 4, size=(size, size))
    return np.clip(img, 0, 255).astype(np.uint8)


def planted(img: np.ndarray, top: int = 40, left: int = 60, side: int = 20) -> np.ndarray:
    out = img.copy()
    out[top:top + side, left:left + side] = 255
    return out


@pytest.fixture(autouse=True)
def _seed_and_cache(tmp_path_factory, monkeypatch) -> None:
    """Fixed seed, and an empty musc cache so a user's imported weights never leak into tests."""
    torch.manual_seed(0)
    monkeypatch.setenv("MUSC_CACHE_DIR", str(tmp_path_factory.mktemp("musc-cache")))


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """Seven textured images in two sub-folders, one (defect/odd.png) with a bright planted square."""
    folder = tmp_path / "images"
    (folder / "good").mkdir(parents=True)
    (folder / "defect").mkdir()
    for i in range(6):
        Image.fromarray(textured(i)).save(folder / "good" / f"img_{i}.png")
    Image.fromarray(planted(textured(99))).save(folder / "defect" / "odd.png")
    return folder


def tiny_state_dict(name: str) -> dict[str, torch.Tensor]:
    from musc.backbones import Backbone

    return Backbone.load(name, pretrained=False, device="cpu").model.state_dict()


__all__ = ["TINY_DINO", "TINY_CLIP", "MTD_ROOT", "textured", "planted", "tiny_state_dict", "PRESETS"]
