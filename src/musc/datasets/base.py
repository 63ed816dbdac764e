"""What every dataset reader yields, and the helpers they share. Readers know nothing about the model."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from ..errors import DatasetError
from ..io import IMAGE_EXTENSIONS, upright

NORMAL, ANOMALOUS = 0, 1


@dataclass(frozen=True)
class Sample:
    """One test image with its ground truth (used only for metrics, never for scoring)."""

    path: Path
    label: int
    """0 = normal, 1 = anomalous."""
    defect_type: str
    mask_paths: tuple[Path, ...] = ()
    """Mask files whose union is the defect mask; empty = no mask (all-zero for normal images)."""
    mask_threshold: int = 0
    """A mask pixel is defect where its value is > mask_threshold."""


@dataclass
class Category:
    """The test samples of one category plus its training normals (for few-shot use)."""

    name: str
    samples: list[Sample]
    train_normals: list[Path] = field(default_factory=list)

    @property
    def labels(self) -> np.ndarray:
        return np.array([s.label for s in self.samples], dtype=np.int64)

    @property
    def has_masks(self) -> bool:
        return any(s.mask_paths for s in self.samples)

    def check(self) -> list[str]:
        """Problems that make some metrics undefined (returned as messages); raises on broken ground truth."""
        notes = []
        if not self.samples:
            raise DatasetError(f"category {self.name!r} has no test images")
        labels = self.labels
        if not (labels == NORMAL).any():
            notes.append(f"category {self.name!r} has no normal test image: image-level metrics are undefined")
        if not (labels == ANOMALOUS).any():
            notes.append(f"category {self.name!r} has no anomalous test image: image and pixel metrics are undefined")
        missing = [s.path for s in self.samples if s.label == ANOMALOUS and not s.mask_paths]
        if missing and self.has_masks:
            shown = ", ".join(str(p) for p in missing[:3])
            raise DatasetError(f"category {self.name!r}: {len(missing)} anomalous image(s) have no mask, e.g. {shown}")
        if missing and not self.has_masks:
            notes.append(f"category {self.name!r} has no masks: pixel-level metrics are undefined")
        return notes


def images_in(folder: Path, recursive: bool = False) -> list[Path]:
    """Image files in a folder (sorted); empty list when the folder does not exist."""
    if not folder.is_dir():
        return []
    pattern = "**/*" if recursive else "*"
    return sorted(p for p in folder.glob(pattern) if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise DatasetError(f"{what} not found: {path}")
    return path


def first_existing(candidates: Sequence[Path]) -> Path | None:
    return next((c for c in candidates if c.is_file()), None)


def load_mask(sample: Sample, image_size: tuple[int, int] | None = None) -> np.ndarray:
    """The binary mask (H, W) of a sample; all zero when it has none. image_size = (width, height) to check."""
    if not sample.mask_paths:
        if image_size is None:
            raise DatasetError(f"no mask and no image size for {sample.path}")
        return np.zeros((image_size[1], image_size[0]), dtype=bool)
    mask = None
    for path in sample.mask_paths:
        try:
            with Image.open(path) as img:
                img = upright(img)  # as its image is read
                arr = np.asarray(img if img.mode in ("L", "I", "I;16") else img.convert("L"))
        except (OSError, ValueError) as exc:
            raise DatasetError(f"cannot read mask {path}: {exc}") from exc
        part = arr > sample.mask_threshold
        if mask is not None and part.shape != mask.shape:
            raise DatasetError(f"mask parts of {sample.path} differ in size: {path}")
        mask = part if mask is None else (mask | part)
    assert mask is not None
    if image_size is not None and (mask.shape[1], mask.shape[0]) != tuple(image_size):
        raise DatasetError(f"mask {sample.mask_paths[0]} is {mask.shape[1]}x{mask.shape[0]} but its image "
                           f"{sample.path} is {image_size[0]}x{image_size[1]}")
    return mask


def resize_mask(mask: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a binary mask to size x size, or to (height, width)."""
    h, w = (size, size) if isinstance(size, int) else size
    img = Image.fromarray(mask.astype(np.uint8) * 255)
    return np.asarray(img.resize((w, h), Image.NEAREST)) > 127
