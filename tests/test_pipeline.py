import numpy as np
import pytest
import torch
from PIL import Image

from musc import MuSc, MuScConfig, Result
from musc.errors import ConfigError, ImageReadError, InputError
from musc.pipeline import split_subsets
from musc.types import Features

from conftest import planted, textured

TINY = MuScConfig(backbone="test_tiny_dino", image_size=112, pretrained=False, device="cpu", batch_size=3)


def images(n=7):
    imgs = [textured(i) for i in range(n - 1)] + [planted(textured(99))]
    return [Image.fromarray(a) for a in imgs]


def test_planted_defect_has_highest_score_and_map_peak_on_it():
    result = MuSc(TINY).score(images())
    assert isinstance(result, Result)
    assert result.maps.shape == (7, 112, 112) and result.maps.dtype == np.float32
    assert int(np.argmax(result.scores)) == 6
    assert int(np.argmax(result.raw_scores)) == 6
    peak = np.unravel_index(np.argmax(result.maps[6]), result.maps[6].shape)
    assert 40 - 14 <= peak[0] < 60 + 14 and 60 - 14 <= peak[1] < 80 + 14
    np.testing.assert_allclose(result.raw_scores, result.maps.reshape(7, -1).max(1), rtol=1e-6)
    assert set(result.timings) >= {"extraction", "aggregation", "scoring", "rescoring"}


def test_paths_sizes_and_original_size_maps(image_folder):
    paths = sorted(image_folder.rglob("*.png"))
    Image.fromarray(textured(5, size=90)[:, :60]).save(paths[0])  # one image of another size
    result = MuSc(TINY).score(paths, progress=False)
    assert result.paths == [str(p) for p in paths]
    assert result.original_sizes[0] == (60, 90)
    assert result.map_at_original_size(0).shape == (90, 60)
    assert result.map_at_original_size(1).shape == (112, 112)


def test_without_rscin_score_is_map_max():
    result = MuSc(TINY.replace(rscin_windows=())).score(images(), progress=False)
    np.testing.assert_allclose(result.scores, result.raw_scores)


def test_rscin_applied_to_raw_scores():
    from musc.rescoring import rscin

    result = MuSc(TINY).score(images(), progress=False)
    np.testing.assert_allclose(result.scores, rscin(result.raw_scores, result.embeddings, (1, 2, 3)))


def test_map_is_mean_over_pairs():
    model = MuSc(TINY.replace(r_values=(1, 3)))
    result = model.score(images(5), progress=False, keep_pairs=True)
    assert sorted(result.pair_maps) == [(layer, r) for layer in (0, 1, 2, 3) for r in (1, 3)]
    mean = np.mean(list(result.pair_maps.values()), axis=0)
    grid = torch.from_numpy(mean)[:, None]
    up = torch.nn.functional.interpolate(grid, size=(112, 112), mode="bilinear", align_corners=True)[:, 0].numpy()
    np.testing.assert_allclose(result.maps, up, atol=1e-5)


def test_subsets_score_separately_but_rscin_sees_all():
    feats = Features([torch.randn(8, 6, 3, 3)], torch.randn(8, 5))
    cfg = TINY.replace(subsets=2, seed=1, layers=(0,), r_values=(1,))
    model = MuSc(cfg)
    result = model.score_features(feats, progress=False)
    parts = split_subsets(8, 2, 1)
    assert sorted(np.concatenate(parts).tolist()) == list(range(8))
    for idx in parts:
        alone = MuSc(cfg.replace(subsets=1)).score_features(feats.subset(list(idx)), progress=False)
        np.testing.assert_allclose(result.raw_scores[idx], alone.raw_scores, rtol=1e-5)


def test_split_subsets_is_seeded_and_balanced():
    a = split_subsets(11, 3, 7)
    assert [len(p) for p in a] == [4, 4, 3]
    assert all(np.array_equal(x, y) for x, y in zip(a, split_subsets(11, 3, 7)))
    with pytest.raises(InputError, match="subsets of at least 2"):
        split_subsets(5, 3, 0)


def test_bad_inputs():
    with pytest.raises(InputError, match="at least 2 images"):
        MuSc(TINY).score(images()[:1])
    with pytest.raises(ConfigError, match="odd"):
        MuSc(TINY.replace(r_values=(2,))).score(images())
    with pytest.raises(InputError, match="shape"):
        MuSc(TINY).score([np.zeros((4, 4, 7)), np.zeros((4, 4))])


def test_score_dtype_auto_is_float16_on_gpus_only():
    from musc.pipeline import score_matmul_dtype

    assert score_matmul_dtype("auto", torch.device("cpu")) is None
    assert score_matmul_dtype("auto", torch.device("cuda")) == torch.float16
    assert score_matmul_dtype("float32", torch.device("cuda")) is None
    assert score_matmul_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16
    with pytest.raises(ConfigError, match="score_dtype"):
        MuScConfig(score_dtype="half").validate()


def test_half_score_dtype_keeps_maps_close_and_ranking_equal():
    model = MuSc(TINY)
    features, _ = model.extract(images(), progress=False)
    exact = model.score_features(features, progress=False)
    half = MuSc(TINY.replace(score_dtype="float16"), backbone=model.backbone).score_features(features, progress=False)
    assert 0 < np.abs(half.maps - exact.maps).max() < 1e-2
    assert np.array_equal(np.argsort(half.scores), np.argsort(exact.scores))


def test_extracted_features_fill_preallocated_batches():
    """Features are written batch by batch into one tensor per block (batch_size 3 over 7 images: 3 + 3 + 1)."""
    model = MuSc(TINY)
    imgs = images()
    features, sizes = model.extract(imgs, progress=False)
    one_by_one = [model.extract([im], progress=False)[0] for im in imgs]
    assert features.num_images == 7 and len(sizes) == 7
    for k, t in enumerate(features.tokens):
        assert torch.allclose(t, torch.cat([f.tokens[k] for f in one_by_one]), atol=1e-5)
    assert torch.allclose(features.embeddings, torch.cat([f.embeddings for f in one_by_one]), atol=1e-5)


def test_unreadable_image_in_a_prefetched_batch_is_named(tmp_path):
    """The next batch is decoded in a thread; its errors still surface as ImageReadError naming the file."""
    paths = []
    for i, im in enumerate(images()):
        paths.append(tmp_path / f"img{i}.png")
        im.save(paths[-1])
    paths[5].write_bytes(b"not an image")
    with pytest.raises(ImageReadError, match="img5.png"):
        MuSc(TINY).extract(paths, progress=False)


# Stage presets: muscv2 (SNAMD + RsCon) through the same pipeline

from musc.aggregation import snamd_iter  # noqa: E402
from musc.config import METHODS  # noqa: E402
from musc.rescoring import rscin, salient_patch_vectors  # noqa: E402
from musc.scoring import mutual_scores  # noqa: E402


def _images(n=8):
    return [Image.fromarray(planted(textured(7)) if i == 0 else textured(i)) for i in range(n)]


def test_muscv2_is_snamd_scored_once_per_block_then_rscon():
    config = MuScConfig.for_method("muscv2", **{k: getattr(TINY, k) for k in ("backbone", "image_size", "pretrained",
                                                                              "device", "batch_size")})
    assert (config.aggregation, config.rescoring, config.rscin_windows) == ("snamd", "rscon", (1, 7))
    model = MuSc(config)
    features, _ = model.extract(_images(), progress=False)
    result = model.score_features(features, progress=False, keep_pairs=True)
    assert set(result.pair_maps) == {(layer, "snamd") for layer in model.backbone.layers}  # one view per block
    # by hand: SNAMD per tapped block, MSM, mean over blocks; RsCon over the second-to-last block's salient patches
    grids = [mutual_scores(next(snamd_iter(t, config.r_values)), config.interval) for t in features.tokens]
    grid = torch.stack(grids).mean(0)
    maps = model.upsample(grid.view(len(grid), *features.tokens[0].shape[-2:]))
    assert np.allclose(result.maps, maps.numpy(), atol=1e-6)
    salient = salient_patch_vectors(next(snamd_iter(features.tokens[-2], config.r_values)).numpy(), grid.numpy())
    expected = rscin(maps.flatten(1).amax(1).numpy(), salient, (1, 7))
    assert np.allclose(result.scores, expected, atol=1e-6)
    assert result.ranking()[0] == 0


@pytest.mark.parametrize("changes", [dict(subsets=2), dict(memory_budget_mb=1), dict(projection_dim=8),
                                     dict(score_dtype="float16")])
def test_every_preset_works_with_the_options(changes):
    for method in METHODS:
        base = {k: v for k, v in TINY.to_dict().items() if k not in METHODS[method]}  # the preset's own stages
        result = MuSc(MuScConfig.for_method(method, **{**base, **changes})).score(_images(), progress=False)
        assert result.maps.shape == (8, 112, 112) and np.isfinite(result.scores).all()


@pytest.mark.parametrize("mode", ["musc", "musc+"])
def test_muscv2_with_references(mode):
    config = MuScConfig.for_method("muscv2", **{**TINY.to_dict(), "rscin_windows": (1, 7), "mode": mode})
    result = MuSc(config).score(_images(4), references=_images(8)[4:], progress=False)
    assert len(result) == 4 and result.ranking()[0] == 0


def test_lnamd_and_snamd_together_average_both_variants_views():
    feats = Features([torch.randn(6, 8, 4, 4), torch.randn(6, 8, 4, 4)], torch.randn(6, 5))
    base = dict(backbone="test_tiny_dino", image_size=56, pretrained=False, device="cpu", layers=(0, 1))
    grids = {a: MuSc(MuScConfig(**base, aggregation=a)).patch_scores(feats, progress=False)[0]
             for a in ("lnamd", "snamd", "lnamd+snamd")}
    assert grids["lnamd"].shape == (len(MuScConfig().r_values), 6, 4, 4)  # LNAMD: one set per r; SNAMD: one set
    assert grids["snamd"].shape == (1, 6, 4, 4)
    assert torch.allclose(grids["lnamd+snamd"], torch.cat([grids["lnamd"], grids["snamd"]]), atol=1e-6)
    both = MuSc(MuScConfig(**base, aggregation="lnamd+snamd"))
    assert both.views() == (1, 3, 5, "snamd")


def test_scale_max_scores_each_image_by_its_strongest_scaled_r_and_z_max_fuses_the_maps():
    base = {k: v for k, v in TINY.to_dict().items() if k not in METHODS["musc"]}
    assert (METHODS["musc-scales"]["map_rule"], METHODS["musc-scales"]["image_score"]) == ("mean", "scale-max")
    config = MuScConfig.for_method("musc-scales", **base, map_rule="z-max")  # the map rule option too
    model = MuSc(config)
    features, _ = model.extract(_images(), progress=False)
    result = model.score_features(features, progress=False, keep_pairs=True)
    # by hand: each r's patch scores are the mean over blocks
    per_r = np.stack([np.mean([result.pair_maps[(b, r)] for b in model.backbone.layers], axis=0)
                      for r in config.r_values])  # (V, N, h, w)
    # the map: each r standardised by the batch's median and MAD of its patch scores, the largest per patch
    flat = per_r.reshape(len(config.r_values), -1)
    med = np.array([np.sort(v)[(len(v) - 1) // 2] for v in flat])  # the lower median, as torch's
    mad = np.array([np.sort(np.abs(v - m))[(len(v) - 1) // 2] for v, m in zip(flat, med)])
    fused = ((per_r - med[:, None, None, None]) / mad[:, None, None, None]).max(axis=0)
    np.testing.assert_allclose(result.maps, model.upsample(torch.from_numpy(fused)).numpy(), atol=1e-5)
    paper = MuSc(config.replace(map_rule="mean"), backbone=model.backbone).score_features(features, progress=False)
    assert not np.allclose(result.maps, paper.maps)
    # the image score: each r's per-image maxima scaled to [0, 1]; the largest per image
    per_r = per_r.reshape(len(config.r_values), 8, -1)
    np.testing.assert_allclose(result.view_maxima, per_r.max(axis=2), atol=1e-6)  # (V, N), kept on the result
    scaled = [(m - m.min()) / (m.max() - m.min()) for m in per_r.max(axis=2)]
    np.testing.assert_allclose(result.raw_scores, np.max(scaled, axis=0), atol=1e-6)
    np.testing.assert_allclose(result.scores, rscin(np.max(scaled, axis=0), result.embeddings, (1, 2, 3)), atol=1e-6)
    assert result.ranking()[0] == 0


def test_z_blend_scores_each_image_from_its_views_robust_z_scores_on_whole_images_and_tiles():
    for tiles in (None, 1.0):
        config = TINY.replace(image_score="z-blend", tile_scale=tiles)
        model = MuSc(config)
        result = model.score(_images(), progress=False)
        assert (result.evidence is not None) == (tiles is not None)  # tiled batches keep the finest view's evidence
        z = np.stack([(m - np.median(m)) / (1.4826 * np.median(np.abs(m - np.median(m)))) for m in result.view_maxima])
        finest = list(config.r_values).index(min(config.r_values))
        np.testing.assert_allclose(result.raw_scores, 0.5 * z[finest] + 0.5 * z.mean(axis=0), atol=1e-6)
        scale_max = MuSc(config.replace(image_score="scale-max"), backbone=model.backbone).score(_images(),
                                                                                                progress=False)
        np.testing.assert_allclose(scale_max.maps, result.maps, atol=1e-6)  # the maps do not change
        assert not np.allclose(scale_max.raw_scores, result.raw_scores)


def test_map_baseline_takes_each_images_own_level_off_before_the_map_rule():
    config = TINY.replace(map_baseline=0.75, image_score="scale-max")
    model = MuSc(config)
    features, _ = model.extract(_images(), progress=False)
    result = model.score_features(features, progress=False, keep_pairs=True)
    per_r = np.stack([np.mean([result.pair_maps[(b, r)] for b in model.backbone.layers], axis=0)
                      for r in config.r_values])  # (V, N, h, w): the pairs are kept before the baseline
    flat = per_r.reshape(*per_r.shape[:2], -1)
    k = int(np.ceil(0.75 * flat.shape[-1]))
    level = np.sort(flat, axis=-1)[..., k - 1]  # each view's and image's own 0.75 quantile
    based = per_r - level[..., None, None]
    np.testing.assert_allclose(result.maps, model.upsample(torch.from_numpy(based.mean(axis=0))).numpy(), atol=1e-5)
    np.testing.assert_allclose(result.view_maxima, based.reshape(*based.shape[:2], -1).max(axis=2), atol=1e-5)
    plain = MuSc(config.replace(map_baseline=None), backbone=model.backbone).score_features(features, progress=False)
    assert not np.allclose(result.raw_scores, plain.raw_scores)
    assert any("0.75 quantile" in n for n in result.notes) and not any("map_baseline" in n for n in plain.notes)
    with pytest.raises(ConfigError, match="map_baseline"):
        TINY.replace(map_baseline=1.0).validate()
    assert all(MuScConfig.for_method(m).map_baseline is None for m in METHODS)  # an option: no preset sets it


def test_scale_max_on_a_single_image_against_references_is_its_map_maximum():
    config = MuScConfig.for_method("musc-scales", **{**TINY.to_dict(), "image_score": "scale-max", "mode": "musc+"})
    result = MuSc(config).score(_images(1), references=_images(6)[1:], progress=False)
    np.testing.assert_allclose(result.raw_scores, result.maps.reshape(1, -1).max(axis=1), rtol=1e-6)
    assert "skipped" in result.notes[0]


def test_api_inputs_that_cannot_be_scored():
    model = MuSc(TINY)
    gray = [textured(i)[..., None] for i in range(3)]  # (H, W, 1) arrays are grayscale images
    assert model.score(gray, progress=False).maps.shape == (3, *gray[0].shape[:2])
    with pytest.raises(InputError, match="cannot use an object of type int as an image"):
        model.score([textured(0), 42], progress=False)
    with pytest.raises(InputError, match="no images to score"):
        model.score([], references=[textured(1)], progress=False)
    with pytest.raises(ConfigError, match="subsets must be >= 1"):
        split_subsets(10, 0, seed=0)


def test_features_that_cannot_be_scored():
    model = MuSc(TINY)
    features, _ = model.extract([textured(i) for i in range(3)], progress=False)
    one = Features([t[:1] for t in features.tokens], features.embeddings[:1])
    with pytest.raises(InputError, match="at least 2 images .* got 1"):
        model.score_features(one, progress=False)
    smaller, _ = MuSc(TINY.replace(image_size=56)).extract([textured(5)], progress=False)
    with pytest.raises(InputError, match="reference features do not match the test features"):
        model.score_features(features, progress=False, references=smaller)


def test_photos_with_an_orientation_tag_are_scored_upright(image_folder):
    """A phone photo stored sideways with an EXIF orientation: scored, sized and mapped as it is viewed, whether given
    as a path or as an opened PIL image."""
    paths = sorted(image_folder.rglob("*.png"))
    exif = Image.Exif()
    exif[0x0112] = 8  # turn 90 degrees counter-clockwise to view
    Image.fromarray(textured(5, size=90)[:60, :]).save(paths[0].with_suffix(".jpg"), exif=exif)  # stored 90 x 60
    paths[0].unlink()
    paths[0] = paths[0].with_suffix(".jpg")
    model = MuSc(TINY)
    result = model.score(paths, progress=False)
    assert result.original_sizes[0] == (60, 90)
    assert result.map_at_original_size(0).shape == (90, 60)
    with Image.open(paths[0]) as opened:
        as_image = model.score([opened, *paths[1:]], progress=False)
    np.testing.assert_allclose(as_image.scores, result.scores, rtol=1e-6)
