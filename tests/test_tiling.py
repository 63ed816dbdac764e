"""Native-resolution tiles: positions, seamless blending, and the pipeline on tiles."""

import numpy as np
import pytest
import torch
from PIL import Image

from musc import MuSc, MuScConfig
from musc.errors import ConfigError
from musc.tiling import TiledScorer, blend, canvas_size, tile_starts

from conftest import textured

TINY = dict(backbone="test_tiny_dino", image_size=56, pretrained=False, device="cpu", batch_size=4)


@pytest.mark.parametrize("length,side,overlap", [(56, 56, 0.25), (57, 56, 0.25), (500, 224, 0.25), (1254, 224, 0.5)])
def test_tiles_cover_the_canvas_with_the_overlap(length, side, overlap):
    starts = tile_starts(length, side, overlap)
    assert starts[0] == 0 and starts[-1] + side == max(length, side)
    gaps = np.diff(starts)
    assert (gaps <= side * (1 - overlap) + 1).all() and (gaps > 0).all()


def test_blending_a_constant_gives_a_constant_and_no_seams():
    canvas = (150, 90)
    starts = [(x, y) for y in tile_starts(90, 56, 0.25) for x in tile_starts(150, 56, 0.25)]
    tiles = torch.full((len(starts), 3, 56, 56), 0.7)
    out = blend(tiles, starts, canvas)
    assert out.shape == (3, 90, 150) and torch.allclose(out, torch.full_like(out, 0.7), atol=1e-6)
    ramp = torch.linspace(0, 1, 150)[None, None, :].expand(1, 90, 150)  # a smooth map cut into tiles comes back
    cut = torch.stack([ramp[:, y:y + 56, x:x + 56] for x, y in starts])
    assert torch.allclose(blend(cut, starts, canvas), ramp, atol=1e-6)


def test_canvas_keeps_the_aspect_ratio():
    assert canvas_size([(500, 1250), (500, 1260), (500, 1240)], 1.0, 224) == (500, 1250)
    assert canvas_size([(500, 1250)], 0.5, 224) == (250, 625)
    assert canvas_size([(100, 120)], 1.0, 224) == (224, 224)


def test_one_tile_equals_the_whole_image():
    images = [Image.fromarray(textured(i, 56)) for i in range(5)]
    whole = MuSc(MuScConfig(**TINY))
    tiled = MuSc(MuScConfig(**TINY, tile_scale=1.0), backbone=whole.backbone)
    a, b = whole.score(images, progress=False), tiled.score(images, progress=False)
    assert np.allclose(a.maps, b.maps, atol=1e-6) and np.allclose(a.scores, b.scores, atol=1e-6)


@pytest.mark.parametrize("method", ["musc", "muscv2"])
def test_tiles_find_a_small_defect_in_a_tall_image(method):
    rng = np.random.default_rng(0)
    images = []
    for i in range(6):
        arr = np.vstack([textured(10 * i + k, 112) for k in range(2)])[:, :84]  # 224 x 84: not square
        if i == 3:
            arr = arr.copy()
            arr[150:156, 40:46] = 255  # 6 px: a fraction of one patch once the image is squeezed to 56 x 56
        images.append(Image.fromarray(arr))
    config = MuScConfig.for_method(method, **TINY, tile_scale=1.0, rscin_windows=(1,))
    result = MuSc(config).score(images, progress=False)
    assert result.maps.shape == (6, 224, 84)
    assert int(np.argmax(result.raw_scores)) == 3
    y, x = np.unravel_index(np.argmax(result.maps[3]), result.maps[3].shape)
    assert abs(y - 153) <= 14 and abs(x - 43) <= 14
    assert result.map_at_original_size(3).shape == (224, 84)
    assert len(TiledScorer(MuSc(config)).plan([(84, 224)])[1]) == 10  # 2 columns x 5 rows


def test_tiles_refuse_what_they_do_not_support_yet():
    with pytest.raises(ConfigError, match="tile_scale"):
        MuScConfig(**TINY, tile_scale=0).validate()
    with pytest.raises(ConfigError, match="local engine"):
        MuScConfig(**TINY, tile_scale=1.0, engine="ray").validate()
    images = [Image.fromarray(textured(i, 56)) for i in range(3)]
    with pytest.raises(ConfigError, match="reference"):
        MuSc(MuScConfig(**TINY, tile_scale=1.0)).score(images, references=images, progress=False)
