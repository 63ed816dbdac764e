"""A bank of reference features: extracted once from known-good images, reused to score new images one at a time.

The bank stores each tapped block's patch tokens of every reference image (float32, safetensors) and
the settings they were made with: backbone, weights, input size, blocks and r values. LNAMD is
recomputed from the tokens when the bank is used (milliseconds), which keeps the file three times
smaller than storing every (block, r) pair and the results identical to scoring with the images. A
SHA-256 checksum over the tensors guards against a damaged file.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from .errors import InputError
from .types import Features

FORMAT = "musc-bank/1"
SETTINGS = ("backbone", "image_size", "layers", "r_values", "weights")


def _checksum(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for key in sorted(tensors):
        h.update(key.encode())
        h.update(tensors[key].contiguous().numpy().tobytes())
    return h.hexdigest()


@dataclass
class Bank:
    """Reference features plus the settings that made them."""

    features: Features
    settings: dict[str, Any]
    paths: list[str]

    @property
    def size(self) -> int:
        return self.features.num_images

    def save(self, path: str | Path) -> Path:
        """Write the bank as one safetensors file, atomically."""
        from safetensors.torch import save_file

        path = Path(path)
        tensors = {f"tokens.{i}": t.detach().cpu().float().contiguous() for i, t in enumerate(self.features.tokens)}
        tensors["embeddings"] = self.features.embeddings.detach().cpu().float().contiguous()
        meta = {"format": FORMAT, "settings": json.dumps(self.settings), "paths": json.dumps(self.paths),
                "sha256": _checksum(tensors)}
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
        count = sum(1 for k in tensors if k.startswith("tokens."))
        features = Features([tensors[f"tokens.{i}"] for i in range(count)], tensors["embeddings"])
        return cls(features, json.loads(meta["settings"]), json.loads(meta["paths"]))

    def check_matches(self, settings: dict[str, Any]) -> None:
        """Refuse a bank made with other settings than the current run, naming each difference."""
        diffs = [f"{k}: bank {self.settings.get(k)!r}, run {settings.get(k)!r}" for k in SETTINGS
                 if _norm(self.settings.get(k)) != _norm(settings.get(k))]
        if diffs:
            raise InputError("the bank was made with other settings than this run (" + "; ".join(diffs)
                             + "); rebuild it with `musc bank build` and the same options")


def _norm(value: Any) -> Any:
    return list(value) if isinstance(value, (tuple, list)) else value


def run_settings(model: Any) -> dict[str, Any]:
    """The settings of a MuSc model that a bank must share with it."""
    bb = model.backbone
    return {"backbone": bb.preset.name, "image_size": bb.image_size, "layers": list(bb.layers),
            "r_values": list(model.config.r_values), "weights": bb.weights_source}


def build_bank(model: Any, images: Sequence[Any], progress: bool = True) -> Bank:
    """Extract the reference images' features once."""
    if len(images) < 1:
        raise InputError("a bank needs at least one reference image")
    features, _ = model.extract(images, progress)
    features = Features([t.cpu() for t in features.tokens], features.embeddings.cpu())
    return Bank(features, run_settings(model), [str(p) for p in images])


__all__ = ["Bank", "build_bank", "run_settings"]
