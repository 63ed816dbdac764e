"""Native-resolution tiles: positions, seamless blending, and the pipeline on tiles."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from musc import MuSc, MuScConfig
from musc.errors import ConfigError, InputError
from musc.tiling import TiledScorer, blend, canvas_size, score_aligned, score_all, tile_starts
from musc.types import Features

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
    assert canvas_size([(500, 1250), (500, 1262)], "auto", 224) == (224, 563)  # short side to the tile side
    assert canvas_size([(1262, 500)], "auto", 224) == (565, 224)
    assert canvas_size([(261, 318)], "auto", 224) == (224, 224)  # near-square: one tile, the whole image
    assert canvas_size([(194, 321)], "auto", 224) == (224, 224)  # 1.65 times as long: still whole
    assert canvas_size([(250, 499)], "auto", 224) == (224, 224)  # just under twice as long: whole
    assert canvas_size([(250, 500)], "auto", 224) == (224, 448)  # twice as long: tiled


def test_auto_tiles_take_whole_images_when_near_square_or_with_a_bank():
    images = [Image.fromarray(textured(i, 56)) for i in range(5)]
    whole = MuSc(MuScConfig(**TINY))
    auto = MuSc(MuScConfig(**TINY, tile_scale="auto"), backbone=whole.backbone)
    a, b = whole.score(images, progress=False), auto.score(images, progress=False)
    assert np.allclose(a.maps, b.maps, atol=1e-6) and np.allclose(a.scores, b.scores, atol=1e-6)
    assert b.config.tile_scale == "auto" and auto.score(images, progress=False, keep_pairs=True).pair_maps  # whole path
    tall = [Image.fromarray(np.vstack([textured(i, 56), textured(i + 50, 56)])) for i in range(4)]
    result = auto.score(tall, progress=False)
    assert result.maps.shape == (4, 112, 56) and "3 tiles" in result.notes[0]
    with_refs = auto.score(tall[:2], references=tall[2:], progress=False)  # reference images are tiled too
    assert with_refs.maps.shape == (2, 112, 56) and "3 tiles" in with_refs.notes[0]
    bank = MuSc(MuScConfig(**TINY), backbone=whole.backbone).extract(tall[2:], progress=False)[0]
    with_bank = auto.score(tall[:2], references=bank, progress=False)
    assert with_bank.maps.shape == (2, 56, 56) and any("whole images" in n for n in with_bank.notes)
    with pytest.raises(ConfigError, match="'auto'"):
        MuScConfig(**TINY, tile_scale="big").validate()


@pytest.mark.parametrize("matching,map_rule", [("aligned", "mean"), ("all", "mean"), ("aligned", "z-max")])
def test_one_tile_equals_the_whole_image(matching, map_rule):
    images = [Image.fromarray(textured(i, 56)) for i in range(5)]
    whole = MuSc(MuScConfig(**TINY, map_rule=map_rule))
    tiled = MuSc(MuScConfig(**TINY, map_rule=map_rule, tile_scale=1.0, tile_matching=matching),
                 backbone=whole.backbone)
    a, b = whole.score(images, progress=False), tiled.score(images, progress=False)
    assert np.allclose(a.maps, b.maps, atol=1e-6) and np.allclose(a.scores, b.scores, atol=1e-6)


@pytest.mark.parametrize("method,matching", [("musc", "aligned"), ("muscv2", "aligned"), ("musc", "all")])
def test_tiles_find_a_small_defect_in_a_tall_image(method, matching):
    rng = np.random.default_rng(0)
    images = []
    for i in range(6):
        arr = np.vstack([textured(10 * i + k, 112) for k in range(2)])[:, :84]  # 224 x 84: not square
        if i == 3:
            arr = arr.copy()
            arr[150:156, 40:46] = 255  # 6 px: a fraction of one patch once the image is squeezed to 56 x 56
        images.append(Image.fromarray(arr))
    config = MuScConfig.for_method(method, **TINY, tile_scale=1.0, rscin_windows=(1,), tile_matching=matching)
    result = MuSc(config).score(images, progress=False)
    assert result.maps.shape == (6, 224, 84)
    assert int(np.argmax(result.raw_scores)) == 3
    y, x = np.unravel_index(np.argmax(result.maps[3]), result.maps[3].shape)
    assert abs(y - 153) <= 14 and abs(x - 43) <= 14
    assert result.map_at_original_size(3).shape == (224, 84)
    assert len(TiledScorer(MuSc(config)).plan([(84, 224)])[1]) == 10  # 2 columns x 5 rows


def shuffled_tiles(n_images=4, seed=0, side=4):
    """Every image holds the same three tiles, each image in another order: (features per position, order)."""
    gen = torch.Generator().manual_seed(seed)
    contents = [torch.randn(8, side, side, generator=gen) for _ in range(3)]
    orders = [torch.randperm(3, generator=gen).tolist() for _ in range(n_images)]
    orders[0], orders[1] = [0, 1, 2], [2, 0, 1]  # at least two images disagree at every position
    positions = [Features([torch.stack([contents[order[p]] for order in orders])] * 2, torch.zeros(n_images, 1))
                 for p in range(3)]
    return positions, orders


@pytest.mark.parametrize("aggregation", ["lnamd", "snamd"])
def test_all_matching_finds_a_tile_wherever_it_sits(aggregation):
    positions, _ = shuffled_tiles()
    model = MuSc(MuScConfig(**TINY, aggregation=aggregation, layers=(0, 1)))
    anywhere, finest = score_all(model, positions, progress=False)
    views = len(model.views())  # (positions, views, images, h, w)
    assert anywhere.shape == (3, views, 4, 4, 4) and finest is None  # tile_image_blocks 'all': no extra view
    assert anywhere.abs().max() < 1e-3  # each tile has an exact copy elsewhere
    same_place = score_aligned(model, positions, progress=False)[0]
    assert same_place.shape == (3, views, 4, 4, 4) and same_place.mean() > 0.1  # aligned: other tiles sit there


@pytest.mark.parametrize("mode", ["musc", "musc+"])
def test_all_matching_with_references_finds_a_tile_wherever_it_sits(mode):
    positions, _ = shuffled_tiles(n_images=6, seed=2)
    test = [Features([t[:4] for t in f.tokens], f.embeddings[:4]) for f in positions]
    refs = [Features([t[4:] for t in f.tokens], f.embeddings[4:]) for f in positions]
    model = MuSc(MuScConfig(**TINY, layers=(0, 1), mode=mode))
    anywhere = score_all(model, test, progress=False, references=refs)[0]
    assert anywhere.shape == (3, 3, 4, 4, 4) and anywhere.abs().max() < 1e-3  # every tile sits in each reference
    same_place = score_aligned(model, test, progress=False, references=refs)[0]
    assert same_place.amax() > 0.1  # aligned: some tile's content is at no other image's same position
    gen = torch.Generator().manual_seed(7)  # references unlike the tests
    far_refs = [Features([torch.randn(t.shape, generator=gen) for t in f.tokens], f.embeddings) for f in refs]
    scores = score_all(model, test, progress=False, references=far_refs)[0]
    if mode == "musc":
        assert scores.abs().max() < 1e-3  # few-shot: the test images still score each other
    else:
        assert scores.min() > 0.1  # MuSc+: only the references score


@pytest.mark.parametrize("mode", ["musc", "musc+"])
def test_all_matching_with_reference_images_and_one_tile_equals_the_whole_image(mode):
    images = [Image.fromarray(textured(i, 56)) for i in range(3)]
    refs = [Image.fromarray(textured(10 + i, 56)) for i in range(3)]
    whole = MuSc(MuScConfig(**TINY, mode=mode))
    tiled = MuSc(MuScConfig(**TINY, mode=mode, tile_scale=1.0, tile_matching="all"), backbone=whole.backbone)
    a = whole.score(images, references=refs, progress=False)
    b = tiled.score(images, references=refs, progress=False)
    assert np.allclose(a.maps, b.maps, atol=1e-6) and np.allclose(a.scores, b.scores, atol=1e-6)


def test_all_matching_keeps_its_result_under_a_memory_budget_and_splits_subsets():
    positions, _ = shuffled_tiles(n_images=6, seed=1, side=16)  # a pair's products: 768 x 768 floats > 1 MiB
    positions = [Features([t + 0.3 * torch.randn_like(t) for t in f.tokens], f.embeddings) for f in positions]
    plain = score_all(MuSc(MuScConfig(**TINY, layers=(0, 1))), positions, progress=False)[0]
    tight = score_all(MuSc(MuScConfig(**TINY, layers=(0, 1), memory_budget_mb=1)), positions, progress=False)[0]
    assert torch.allclose(plain, tight, atol=1e-5)
    halves = score_all(MuSc(MuScConfig(**TINY, layers=(0, 1), subsets=2)), positions, progress=False)[0]
    assert halves.shape == plain.shape and not torch.allclose(halves, plain)


def test_tiles_refuse_what_they_do_not_support_yet():
    with pytest.raises(ConfigError, match="tile_scale"):
        MuScConfig(**TINY, tile_scale=0).validate()
    with pytest.raises(ConfigError, match="tile_matching"):
        MuScConfig(**TINY, tile_scale=1.0, tile_matching="some").validate()
    with pytest.raises(ConfigError, match="local engine only"):  # before Ray is imported or started
        MuSc(MuScConfig(**TINY, tile_scale=1.0, engine="ray", tile_matching="all")).score(["a.png", "b.png"],
                                                                                        progress=False)
    images = [Image.fromarray(textured(i, 56)) for i in range(3)]
    tiled = MuSc(MuScConfig(**TINY, tile_scale=1.0))
    with pytest.raises(ConfigError, match="bank"):
        tiled.score(images, references=tiled.extract(images, progress=False)[0], progress=False)


@pytest.mark.parametrize("mode", ["musc", "musc+"])
def test_tiles_with_reference_images(mode):
    images = [Image.fromarray(textured(i, 56)) for i in range(3)]
    refs = [Image.fromarray(textured(10 + i, 56)) for i in range(3)]
    whole = MuSc(MuScConfig(**TINY, mode=mode))
    tiled = MuSc(MuScConfig(**TINY, mode=mode, tile_scale=1.0), backbone=whole.backbone)
    a = whole.score(images, references=refs, progress=False)
    b = tiled.score(images, references=refs, progress=False)
    assert np.allclose(a.maps, b.maps, atol=1e-6) and np.allclose(a.scores, b.scores, atol=1e-6)  # one tile
    tall = [np.vstack([textured(20 + 2 * i, 112), textured(21 + 2 * i, 112)])[:, :84] for i in range(4)]
    test = tall[0].copy()
    test[150:156, 40:46] = 255  # one new image with a 6 px defect, against three known-normal ones
    one = MuSc(MuScConfig(**TINY, mode=mode, tile_scale=1.0, rscin_windows=(1,)), backbone=whole.backbone)
    result = one.score([Image.fromarray(test)], references=[Image.fromarray(t) for t in tall[1:]], progress=False)
    assert result.maps.shape == (1, 224, 84) and result.scores.shape == (1,)
    y, x = np.unravel_index(np.argmax(result.maps[0]), result.maps[0].shape)
    assert abs(y - 153) <= 14 and abs(x - 43) <= 14


def test_cli_tile_matching(image_folder, tmp_path):
    import json

    from test_cli import TINY as CLI_TINY, run

    out = tmp_path / "all"
    res = run("score", image_folder, "--out", out, *CLI_TINY, "--tiles", "1.0", "--tile-matching", "all",
              "--no-images")
    assert res.exit_code == 0, res.output
    assert json.loads((out / "config.json").read_text())["config"]["tile_matching"] == "all"
    res = run("score", image_folder, "--out", tmp_path / "bad", *CLI_TINY, "--tiles", "1.0", "--tile-matching", "any")
    assert res.exit_code == 2 and "--tile-matching" in res.output and not (tmp_path / "bad").exists()
    res = run("score", image_folder, "--out", tmp_path / "bad", *CLI_TINY, "--tiles", "many")
    assert res.exit_code == 2 and "'auto'" in res.output and not (tmp_path / "bad").exists()
    res = run("score", image_folder, "--out", tmp_path / "auto", *CLI_TINY, "--tiles", "auto", "--no-images")
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "auto" / "config.json").read_text())["config"]["tile_scale"] == "auto"


def test_the_tiles_preset_and_overriding_its_tile_settings(image_folder, tmp_path):
    import json

    from test_cli import TINY as CLI_TINY, run

    def config_of(*options):
        out = tmp_path / ("run" + "-".join(options).replace(".", "_"))
        res = run("score", image_folder, "--out", out, *CLI_TINY, "--method", "muscv2-tiles", "--no-images", *options)
        assert res.exit_code == 0, res.output
        return json.loads((out / "config.json").read_text())["config"]

    preset = config_of()
    assert (preset["tile_scale"], preset["tile_overlap"], preset["aggregation"]) == ("auto", 0.1, "snamd")
    assert config_of("--tiles", "off")["tile_scale"] is None
    assert (lambda c: (c["tile_scale"], c["tile_overlap"]))(config_of("--tile-overlap", "0.3")) == ("auto", 0.3)
    assert preset["tile_rescoring"] is None and config_of("--tile-rescoring", "none")["tile_rescoring"] == "none"
    res = run("score", image_folder, "--out", tmp_path / "bad", *CLI_TINY, "--tile-rescoring", "rsc")
    assert res.exit_code != 0 and "--tile-rescoring" in res.output
    assert preset["tile_map_rule"] is None and config_of("--tile-map-rule", "finest")["tile_map_rule"] == "finest"
    res = run("score", image_folder, "--out", tmp_path / "bad", *CLI_TINY, "--tile-map-rule", "max")
    assert res.exit_code != 0 and "--tile-map-rule" in res.output and not (tmp_path / "bad").exists()
    assert preset["tile_image_score"] is None
    assert config_of("--tile-image-score", "finest-max")["tile_image_score"] == "finest-max"
    res = run("score", image_folder, "--out", tmp_path / "bad", *CLI_TINY, "--tile-image-score", "mean")
    assert res.exit_code != 0 and "--tile-image-score" in res.output and not (tmp_path / "bad").exists()
    assert preset["tile_image_blocks"] == "all"
    assert config_of("--tile-image-blocks", "shallow")["tile_image_blocks"] == "shallow"
    res = run("score", image_folder, "--out", tmp_path / "bad", *CLI_TINY, "--tile-image-blocks", "deep")
    assert res.exit_code != 0 and "--tile-image-blocks" in res.output and not (tmp_path / "bad").exists()
    assert preset["tile_map_blocks"] == "all"
    assert config_of("--tile-map-blocks", "shallow")["tile_map_blocks"] == "shallow"
    thin = config_of("--method", "musc-thin")
    assert (thin["tile_map_rule"], thin["tile_map_blocks"], thin["tile_image_blocks"]) == ("finest", "shallow", "shallow")
    assert config_of("--method", "musc-thin", "--tile-map-blocks", "all")["tile_map_blocks"] == "all"
    res = run("score", image_folder, "--out", tmp_path / "bad", *CLI_TINY, "--tile-map-blocks", "deep")
    assert res.exit_code != 0 and "--tile-map-blocks" in res.output and not (tmp_path / "bad").exists()


def test_cli_tile_plan_is_a_note_not_a_warning(image_folder, tmp_path, caplog):
    from test_cli import TINY as CLI_TINY, run

    loud = [option for option in CLI_TINY if option != "-q"]
    res = run("score", image_folder, "--out", tmp_path / "a", *loud, "--tiles", "1.0", "--no-images")
    assert res.exit_code == 0, res.output
    assert res.output.count("Note: 9 tiles of 56 px per image") == 1  # once, in the summary
    assert not any("tiles of" in r.getMessage() for r in caplog.records if r.levelno >= 30)


def test_whole_image_runs_on_elongated_images_point_to_tiles(tmp_path):
    import json

    from musc.tiling import elongated_note

    from test_cli import TINY as CLI_TINY, run

    assert elongated_note([(500, 1260), (500, 1250)]).startswith("the images are elongated (median 500 x 1255 px)")
    assert elongated_note([(320, 240), (300, 250)]) is None and elongated_note([]) is None
    folder = tmp_path / "tall"
    folder.mkdir()
    for k in range(4):
        Image.fromarray(np.vstack([textured(30 + 2 * k, 56), textured(31 + 2 * k, 56)])).save(folder / f"t{k}.png")
    loud = [option for option in CLI_TINY if option != "-q"]
    for options, expected in ((("--method", "musc-scales"), 1), (("--method", "musc-scales", "--tiles", "auto"), 0),
                              ((), 0)):  # the default preset tiles them
        out = tmp_path / f"out{'-'.join(options)}"
        res = run("score", folder, "--out", out, *loud, "--no-images", *options)
        assert res.exit_code == 0, res.output
        assert res.output.count("Note: the images are elongated (median 56 x 112 px)") == expected
        notes = json.loads((out / "config.json").read_text())["notes"]
        assert sum("musc-scales-tiles, cuts them" in n for n in notes) == expected


def test_cli_tiles_with_references_and_a_bank(image_folder, tmp_path):
    from test_cli import TINY as CLI_TINY, run

    out = tmp_path / "refs"
    res = run("score", image_folder, "--out", out, *CLI_TINY, "--tiles", "1.0", "--reference", image_folder,
              "--mode", "musc+", "--no-images")
    assert res.exit_code == 0, res.output
    assert "tiles of 56 px per image" in (out / "config.json").read_text()  # the tiled path ran
    bank = tmp_path / "good.bank"
    assert run("bank", "build", image_folder, "--out", bank, *CLI_TINY).exit_code == 0
    res = run("score", image_folder, "--out", tmp_path / "b", *CLI_TINY, "--tiles", "1.0", "--bank", bank)
    assert res.exit_code == 1 and "tiles: bank None" in res.output and not (tmp_path / "b").exists()
    tiled_bank = tmp_path / "tiled.bank"
    res = run("bank", "build", image_folder, "--out", tiled_bank, *CLI_TINY, "--tiles", "1.0")
    assert res.exit_code == 0, res.output
    out = tmp_path / "with-tiled-bank"
    res = run("score", image_folder, "--out", out, *CLI_TINY, "--tiles", "1.0", "--bank", tiled_bank, "--no-images")
    assert res.exit_code == 0, res.output
    assert "tiles of 56 px per image" in (out / "config.json").read_text()
    for options in ([], ["--tiles", "1.0", "--tile-overlap", "0.5"]):  # whole images, or other tiles: refused
        res = run("score", image_folder, "--out", tmp_path / "c", *CLI_TINY, *options, "--bank", tiled_bank)
        assert res.exit_code == 1 and "tiles: bank {" in res.output and not (tmp_path / "c").exists()


def tall_images(seed: int, count: int) -> list[Image.Image]:
    return [Image.fromarray(np.vstack([textured(seed + 2 * i, 112), textured(seed + 1 + 2 * i, 112)])[:, :84])
            for i in range(count)]


@pytest.mark.parametrize("mode", ["musc", "musc+"])
def test_a_tiled_bank_gives_the_result_of_its_reference_images(tmp_path, mode):
    from musc.bank import Bank, build_bank
    from musc.types import TiledFeatures

    model = MuSc(MuScConfig(**TINY, mode=mode, tile_scale=1.0, tile_overlap=0.25))
    refs, images = tall_images(40, 3), tall_images(60, 3)
    bank = build_bank(model, refs, progress=False)
    assert isinstance(bank.features, TiledFeatures) and len(bank.features.starts) == 10  # 84 x 224: 2 x 5 tiles of 56
    loaded = Bank.load(bank.save(tmp_path / "tiled.bank"))
    assert loaded.tiled and loaded.features.canvas == (84, 224) and loaded.features.starts == bank.features.starts
    plus = MuSc(MuScConfig(**TINY, mode="musc+", tile_scale=1.0, tile_overlap=0.25))
    alone = plus.score([refs[0]], references=refs[1:], progress=False)  # leave-one-out: the bank's first reference
    assert alone.evidence is not None and loaded.reference_evidence.shape == (3,)
    assert loaded.reference_evidence[0] == pytest.approx(float(alone.evidence[0]), rel=1e-5)
    direct = model.score(images, references=refs, progress=False)
    via_bank = model.score(images, references=loaded.features, progress=False)
    np.testing.assert_allclose(via_bank.maps, direct.maps, atol=1e-6)
    np.testing.assert_allclose(via_bank.scores, direct.scores, atol=1e-6)
    test = np.asarray(images[0]).copy()
    test[150:156, 40:46] = 255  # a single new image with a 6 px defect, against the bank alone
    one = model.score([Image.fromarray(test)], references=loaded.features, progress=False)
    y, x = np.unravel_index(np.argmax(one.maps[0]), one.maps[0].shape)
    assert one.maps.shape == (1, 224, 84) and abs(y - 153) <= 14 and abs(x - 43) <= 14


@pytest.mark.parametrize("options", [dict(tile_matching="aligned"), dict(tile_matching="all"),
                                     dict(tile_image_blocks="shallow", rescoring="rscon", map_baseline=0.5, tile_map_rule="z-max"),
                                     dict(tile_map_blocks="shallow", tile_map_rule="finest", tile_image_blocks="shallow")])
def test_a_tiled_banks_leave_one_out_is_each_reference_scored_against_the_others(options):
    from musc.bank import leave_one_out

    config = MuScConfig(**TINY, mode="musc+", tile_scale=1.0, tile_overlap=0.25, **options)
    model = MuSc(config)
    refs = tall_images(80, 4)
    tiled = TiledScorer(model).features(refs, progress=False)
    evidence, peaks = leave_one_out(MuSc(config.replace(mode="musc"), backbone=model.backbone), tiled, progress=False)
    for i in range(4):
        alone = model.score([refs[i]], references=tiled.subset([j for j in range(4) if j != i]), progress=False)
        assert evidence[i] == pytest.approx(float(alone.evidence[0]), rel=1e-5)
        assert peaks[i] == pytest.approx(float(alone.maps[0].max()), rel=1e-5)
    with pytest.raises(InputError, match="at least 2 images"):
        TiledScorer(model).score_each_against_others(tiled.subset([0]))


def test_few_shot_null_on_tiles_reads_the_references_as_the_union_scores_them():
    from musc.bank import few_shot_null

    model = MuSc(MuScConfig(**TINY, tile_scale=1.0, tile_overlap=0.25))  # few-shot; no tile subsets
    refs, tests = tall_images(40, 3), tall_images(60, 3)
    union = model.score(tests + refs, progress=False)  # zero-shot: every image against all the others
    few_shot = model.score(tests, references=refs, progress=False)
    np.testing.assert_allclose(few_shot.maps, union.maps[:3], rtol=0, atol=1e-6)
    np.testing.assert_allclose(few_shot.evidence, union.evidence[:3], rtol=0, atol=1e-6)
    null = few_shot_null(model, refs, tests, progress=False)
    assert null.count == 3 and null.mean == pytest.approx(float(union.evidence[3:].mean()), abs=1e-6)


@pytest.mark.parametrize("options", [{}, {"tile_scale": 1.0, "tile_overlap": 0.25}, {"tile_scale": "auto"},
                                     {"tile_scale": "auto", "rescoring": "rscon", "map_baseline": 0.9},
                                     {"tile_scale": 1.0, "subsets": 2}])
def test_few_shot_scores_extracts_once_and_equals_the_two_passes(options):
    from musc.bank import few_shot_null, few_shot_scores

    model = MuSc(MuScConfig(**TINY, **options))
    refs, tests = tall_images(40, 3), tall_images(60, 4)
    result, null = few_shot_scores(model, refs, tests, progress=False)
    expected = model.score(tests, references=refs, progress=False)
    np.testing.assert_allclose(result.maps, expected.maps, rtol=0, atol=1e-6)
    np.testing.assert_allclose(result.scores, expected.scores, rtol=0, atol=1e-6)
    np.testing.assert_allclose(result.decision_evidence(), expected.decision_evidence(), rtol=0, atol=1e-6)
    assert result.notes == expected.notes and result.config == model.config
    assert result.original_sizes == expected.original_sizes and "extraction" in result.timings
    twice = few_shot_null(model, refs, tests, progress=False)
    assert null.count == 3 and null.mean == pytest.approx(twice.mean, abs=1e-6)
    assert null.sd == pytest.approx(twice.sd, abs=1e-6) and null.floor == pytest.approx(twice.floor, abs=1e-6)
    with pytest.raises(InputError, match="at least 3 reference images"):
        few_shot_scores(model, refs[:2], tests, progress=False)


def test_few_shot_null_on_tiles_with_subsets_pools_references_as_test_images():
    from musc.bank import few_shot_scores
    from musc.pipeline import split_subsets

    config = MuScConfig(**TINY, tile_scale=1.0, tile_overlap=0.25)
    refs, tests = tall_images(40, 3), tall_images(60, 5)
    result, null = few_shot_scores(MuSc(config.replace(subsets=2, seed=1)), refs, tests, progress=False)
    expected = np.empty(3)
    for s, part in enumerate(split_subsets(5, 2, 1)):
        union = MuSc(config).score([tests[i] for i in part] + refs, progress=False)  # zero-shot: subset + references
        np.testing.assert_allclose(result.evidence[part], union.evidence[:len(part)], rtol=0, atol=1e-6)
        expected[s::2] = union.evidence[len(part):][s::2]  # reference i joins subset i mod 2
    assert null.count == 3 and null.mean == pytest.approx(expected.mean(), abs=1e-6)
    assert null.sd == pytest.approx(expected.std(ddof=1), abs=1e-6)


def test_score_features_on_tiles_needs_tiles_cut_on_one_plan():
    from musc.errors import ConfigError

    model = MuSc(MuScConfig(**TINY, tile_scale=1.0, tile_overlap=0.25))
    scorer = TiledScorer(model)
    tests = scorer.features(tall_images(60, 3), progress=False)
    refs = scorer.features(tall_images(40, 3), progress=False, plan=(tests.canvas, tests.starts))
    direct = model.score_features(tests, progress=False, references=refs)
    assert direct.maps.shape[0] == 3 and direct.evidence is not None
    other = scorer.features(tall_images(40, 3), progress=False, plan=(tests.canvas, tests.starts[:1]))
    with pytest.raises(ConfigError, match="another plan"):
        model.score_features(tests, progress=False, references=other)
    with pytest.raises(ConfigError, match="both cut on one plan"):
        model.score_features(tests.positions[0], progress=False, references=refs)
    with pytest.raises(ConfigError, match="per-pair maps"):
        model.score_features(tests, progress=False, keep_pairs=True)
    with pytest.raises(InputError, match="at least 2 images"):
        model.score_features(tests.subset([0]), progress=False)


def test_tiled_bank_settings_are_checked():
    from musc.bank import build_bank, run_settings

    refs = tall_images(40, 2)
    tiled_model = MuSc(MuScConfig(**TINY, tile_scale=1.0))
    tiled = build_bank(tiled_model, refs, progress=False)
    assert tiled.settings["tiles"] == {"scale": 1.0, "overlap": 0.25}
    whole_model = MuSc(MuScConfig(**TINY), backbone=tiled_model.backbone)
    with pytest.raises(InputError, match="tiles: bank"):
        tiled.check_matches(run_settings(whole_model))
    with pytest.raises(ConfigError, match="tiled"):  # the library refuses tiled features without tiles, too
        whole_model.score(refs, references=tiled.features, progress=False)
    auto_model = MuSc(MuScConfig(**TINY, tile_scale="auto"), backbone=tiled_model.backbone)
    whole = build_bank(whole_model, refs, progress=False)
    assert whole.settings["tiles"] is None
    whole.check_matches(run_settings(auto_model))  # a whole-image bank serves --tiles auto (whole images)
    with pytest.raises(InputError, match="tiles: bank None"):
        whole.check_matches(run_settings(tiled_model))
    auto = build_bank(auto_model, refs, progress=False)
    assert auto.tiled and auto.settings["tiles"]["scale"] == "auto"
    result = auto_model.score(refs[:1], references=auto.features, progress=False)
    assert result.maps.shape == (1, 149, 56) and "4 tiles of 56 px" in result.notes[0]  # short side to 56
    rscon = MuSc(MuScConfig.for_method("muscv2-tiles", **TINY), backbone=tiled_model.backbone)
    one = rscon.score(refs[:1], references=build_bank(rscon, refs, progress=False).features, progress=False)
    assert any(n.startswith("RsCon skipped") for n in one.notes)  # the re-scoring stage in use is named


def test_tile_subsets_keep_the_mutual_scoring_work_of_whole_images(monkeypatch):
    import musc.tiling as tiling

    assert [tiling.tile_subset_count(p, n) for p, n in ((3, 200), (3, 60), (3, 59), (1, 500))] == [3, 2, 1, 1]
    monkeypatch.setattr(tiling, "MIN_TILE_SUBSET", 2)  # subsets of 2 images, so that tiny batches split
    images = tall_images(70, 6)  # 3 tile positions at 56 px
    model = MuSc(MuScConfig.for_method("musc-scales-tiles", **TINY))
    split = model.score(images, progress=False)
    by_hand = MuSc(MuScConfig.for_method("musc-scales-tiles", **TINY, subsets=3, tile_subsets=False),
                   backbone=model.backbone).score(images, progress=False)
    np.testing.assert_allclose(split.maps, by_hand.maps, atol=1e-6)
    np.testing.assert_allclose(split.scores, by_hand.scores, atol=1e-6)
    assert any("3 random subsets of about 2 images drawn with seed 0" in n and "another --seed" in n
               for n in split.notes)
    reseeded = MuSc(MuScConfig.for_method("musc-scales-tiles", **TINY, seed=5), backbone=model.backbone)
    assert any("drawn with seed 5" in n for n in reseeded.score(images, progress=False).notes)
    assert (split.config.tile_subsets, split.config.subsets) == (True, 1)  # the configuration asked for
    whole = MuSc(MuScConfig.for_method("musc-scales-tiles", **TINY, tile_subsets=False), backbone=model.backbone)
    assert not np.allclose(split.maps, whole.score(images, progress=False).maps, atol=1e-6)
    given = MuSc(MuScConfig.for_method("musc-scales-tiles", **TINY, subsets=2), backbone=model.backbone)
    assert not any("random subsets" in n for n in given.score(images, progress=False).notes)  # --subsets holds
    with_refs = model.score(images[:3], references=images[3:], progress=False)
    assert not any("random subsets" in n for n in with_refs.notes)
    square = [Image.fromarray(textured(i, 56)) for i in range(6)]
    scales = MuSc(MuScConfig.for_method("musc-scales", **TINY), backbone=model.backbone).score(square, progress=False)
    on_square = model.score(square, progress=False)  # near-square: whole images, as musc-scales
    np.testing.assert_allclose(on_square.maps, scales.maps, atol=1e-6)
    np.testing.assert_allclose(on_square.scores, scales.scores, atol=1e-6)


def test_scale_max_on_tiles_takes_each_rs_blended_map():
    images = tall_images(80, 5)
    both = MuSc(MuScConfig(**TINY, r_values=(1, 3), tile_scale=1.0, image_score="scale-max"))
    result = both.score(images, progress=False)
    one_r = [MuSc(MuScConfig(**TINY, r_values=(r,), tile_scale=1.0), backbone=both.backbone) for r in (1, 3)]
    per_r = [model.score(images, progress=False) for model in one_r]  # one view each: its map is that r's blended map
    np.testing.assert_allclose(result.maps, (per_r[0].maps + per_r[1].maps) / 2, atol=1e-6)
    maxima = [run.maps.reshape(5, -1).max(axis=1) for run in per_r]
    expected = np.max([(m - m.min()) / (m.max() - m.min()) for m in maxima], axis=0)
    np.testing.assert_allclose(result.raw_scores, expected, atol=1e-5)
    np.testing.assert_allclose(result.view_maxima, np.stack(maxima), atol=1e-5)  # each r's blended map maxima


def test_tile_rescoring_sets_stage_3_of_tiled_runs_only():
    images = tall_images(90, 5)
    rscin = MuSc(MuScConfig(**TINY, tile_scale=1.0))
    on_tiles = MuSc(MuScConfig(**TINY, tile_scale=1.0, tile_rescoring="rscon"), backbone=rscin.backbone)
    rscon = MuSc(MuScConfig(**TINY, tile_scale=1.0, rescoring="rscon"), backbone=rscin.backbone)
    a, b, c = (model.score(images, progress=False) for model in (on_tiles, rscon, rscin))
    np.testing.assert_allclose(a.embeddings, b.embeddings, atol=1e-6)  # RsCon's salient vectors
    np.testing.assert_allclose(a.scores, b.scores, atol=1e-6)
    np.testing.assert_allclose(a.maps, c.maps, atol=1e-6)  # the maps and raw scores do not depend on stage 3
    np.testing.assert_allclose(a.raw_scores, c.raw_scores, atol=1e-6)
    assert a.embeddings.shape != c.embeddings.shape or not np.allclose(a.embeddings, c.embeddings)
    square = [Image.fromarray(textured(i, 56)) for i in range(5)]
    whole = MuSc(MuScConfig(**TINY, tile_scale="auto", tile_rescoring="rscon"), backbone=rscin.backbone)
    plain = MuSc(MuScConfig(**TINY), backbone=rscin.backbone)
    d, e = whole.score(square, progress=False), plain.score(square, progress=False)  # whole images: RsCIN
    np.testing.assert_allclose(d.embeddings, e.embeddings, atol=1e-6)
    np.testing.assert_allclose(d.scores, e.scores, atol=1e-6)
    off = MuSc(MuScConfig(**TINY, tile_scale=1.0, tile_rescoring="none"), backbone=rscin.backbone)
    f = off.score(images, progress=False)  # no re-scoring on tiles: the scores before it, as with no windows
    np.testing.assert_allclose(f.scores, c.raw_scores, atol=1e-6)
    one = off.score(images[:1], references=images[1:], progress=False)  # one image: its score, not a scaled 0
    assert one.scores[0] == one.raw_scores[0] > 0
    np.testing.assert_allclose(f.maps, c.maps, atol=1e-6)
    assert "not re-scored" in f.notes[0] and not any("not re-scored" in n for n in (*a.notes, *c.notes))
    config = MuScConfig(**TINY, tile_rescoring="rscon")
    assert (config.rescoring_for(tiled=False), config.rescoring_for(tiled=True)) == ("rscin", "rscon")
    assert MuScConfig(**TINY, rescoring="rscon").rescoring_for(tiled=True) == "rscon"
    default, paper = MuScConfig.for_method("musc-scales-tiles"), MuScConfig.for_method("musc")
    assert (default.rescoring_for(tiled=False), default.rescoring_for(tiled=True)) == ("rscin", "none")
    assert (paper.rescoring_for(tiled=False), paper.rescoring_for(tiled=True)) == ("rscin", "rscin")
    with pytest.raises(ConfigError, match="tile_rescoring"):
        MuScConfig(**TINY, tile_rescoring="rsc").validate()


def test_tile_map_rule_draws_the_maps_of_tiled_runs_only():
    images = tall_images(90, 5)
    mean = MuSc(MuScConfig(**TINY, tile_scale=1.0, image_score="scale-max"))
    finest = MuSc(MuScConfig(**TINY, tile_scale=1.0, image_score="scale-max", tile_map_rule="finest"),
                  backbone=mean.backbone)
    r1 = MuSc(MuScConfig(**TINY, tile_scale=1.0, r_values=(1,)), backbone=mean.backbone)
    a, b, c = (model.score(images, progress=False) for model in (finest, mean, r1))
    np.testing.assert_allclose(a.maps, c.maps, atol=1e-6)  # the r = 1 view's blended map
    assert not np.allclose(a.maps, b.maps, atol=1e-4)
    np.testing.assert_allclose(a.raw_scores, b.raw_scores, atol=1e-6)  # scale-max reads every view either way
    assert "tile_map_rule" in a.notes[0] and not any("tile_map_rule" in n for n in b.notes)
    square = [Image.fromarray(textured(i, 56)) for i in range(5)]
    whole = MuSc(MuScConfig(**TINY, tile_scale="auto", tile_map_rule="finest"), backbone=mean.backbone)
    plain = MuSc(MuScConfig(**TINY), backbone=mean.backbone)
    d, e = whole.score(square, progress=False), plain.score(square, progress=False)  # whole images: the map rule
    np.testing.assert_allclose(d.maps, e.maps, atol=1e-6)
    config = MuScConfig(**TINY, map_rule="z-max", tile_map_rule="finest")
    assert (config.map_rule_for(tiled=False), config.map_rule_for(tiled=True)) == ("z-max", "finest")
    assert MuScConfig(**TINY, map_rule="z-max").map_rule_for(tiled=True) == "z-max"
    for method, rule in (("musc-scales-tiles", "finest"), ("musc", "mean")):  # the default's tiled maps are r = 1
        preset = MuScConfig.for_method(method)
        assert (preset.map_rule_for(tiled=False), preset.map_rule_for(tiled=True)) == ("mean", rule)
    with pytest.raises(ConfigError, match="tile_map_rule"):
        MuScConfig(**TINY, tile_map_rule="max").validate()


def lifted_batch(model: MuSc, views: int, image: int, amount: float, seed: int) -> SimpleNamespace:
    """Random per-view tile scores (P, V, N, h, w) of 4 images of 150 x 56 px, and the same with one image lifted by
    `amount` in every tile and view, both finished by `model`'s TiledScorer: `.a`, `.b`. `.finish(scorer, grids)`
    finishes other grids with the same embeddings and plan (`.canvas`)."""
    scorer = TiledScorer(model)
    canvas, starts = scorer.plan([(56, 150)] * 4)
    gen = torch.Generator().manual_seed(seed)
    side = model.backbone.grid
    grids = torch.rand((len(starts), views, 4, side, side), generator=gen)
    lifted = grids.clone()
    lifted[:, :, image] += amount
    emb = torch.rand((len(starts), 4, 8), generator=gen)

    def finish(with_scorer: TiledScorer, g: torch.Tensor):
        return with_scorer.finish(g, emb, None, (canvas, starts), {}, 0.0)

    return SimpleNamespace(grids=grids, lifted=lifted, canvas=canvas, finish=finish, a=finish(scorer, grids),
                           b=finish(scorer, lifted))


def test_map_baseline_on_tiles_ignores_an_images_level_over_all_its_tiles():
    """A normal image brighter as a whole (every tile and view of it scored higher by one amount) gets the same map
    and scores with `map_baseline` as before; without it, its map rises by that amount."""
    model = MuSc(MuScConfig(**TINY, tile_scale=1.0, image_score="scale-max", map_baseline=0.5))
    batch = lifted_batch(model, views=3, image=2, amount=0.8, seed=4)
    a, b, canvas = batch.a, batch.b, batch.canvas
    np.testing.assert_allclose(a.maps, b.maps, atol=1e-5)
    np.testing.assert_allclose(a.raw_scores, b.raw_scores, atol=1e-6)
    np.testing.assert_allclose(a.evidence, b.evidence, atol=1e-5)
    plain = TiledScorer(MuSc(model.config.replace(map_baseline=None), backbone=model.backbone))
    c, d = (batch.finish(plain, g) for g in (batch.grids, batch.lifted))
    np.testing.assert_allclose(d.maps[2] - c.maps[2], 0.8, atol=1e-5)
    assert a.maps.shape == (4, canvas[1], canvas[0])
    run = model.score(tall_images(90, 5), progress=False)  # end to end: the run keeps the option
    assert run.maps.shape[0] == 5 and run.config.map_baseline == 0.5
    assert any("0.5 quantile" in n for n in run.notes)


def test_tiled_runs_give_the_decisions_the_finest_views_map_maxima():
    """On tiles the decisions test the maxima of the finest view's blended map (`Result.evidence`), whatever the map
    rule and image score; whole images leave it unset (their map maxima)."""
    images = tall_images(90, 5)
    mean = MuSc(MuScConfig(**TINY, tile_scale=1.0, r_values=(3, 1, 5)))  # the finest view is not the first
    r1 = MuSc(MuScConfig(**TINY, tile_scale=1.0, r_values=(1,)), backbone=mean.backbone)
    scaled = MuSc(MuScConfig(**TINY, tile_scale=1.0, r_values=(3, 1, 5), image_score="scale-max"),
                  backbone=mean.backbone)
    a, b, c = (model.score(images, progress=False) for model in (mean, r1, scaled))
    np.testing.assert_allclose(a.evidence, b.maps.reshape(5, -1).max(axis=1), atol=1e-6)
    np.testing.assert_allclose(c.evidence, a.evidence, atol=1e-6)  # from scale-max's per-view maxima alike
    np.testing.assert_allclose(c.view_maxima[1], c.evidence)  # r = 1 is the second of (3, 1, 5)
    assert c.view_maxima.shape == (3, 5) and a.view_maxima is None  # `max` reads no view's maxima on tiles
    assert not np.allclose(a.evidence, a.maps.reshape(5, -1).max(axis=1), atol=1e-4)
    np.testing.assert_allclose(a.decision_evidence(), a.evidence)
    square = [Image.fromarray(textured(i, 56)) for i in range(5)]
    whole = MuSc(MuScConfig(**TINY, tile_scale="auto"), backbone=mean.backbone).score(square, progress=False)
    assert whole.evidence is None and whole.view_maxima.shape == (3, 5)
    np.testing.assert_allclose(whole.decision_evidence(), whole.maps.reshape(5, -1).max(axis=1))


def test_tile_image_score_scores_tiled_runs_only():
    """`tile_image_score` replaces the image score of tiled runs; finest-max (an option) is the finest view's blended
    map maximum (the decisions' evidence), whatever the order of r and the map rule."""
    images = tall_images(90, 5)
    finest = MuSc(MuScConfig(**TINY, tile_scale=1.0, r_values=(3, 1, 5), image_score="scale-max",
                             tile_image_score="finest-max", rscin_windows=()))
    scaled = MuSc(MuScConfig(**TINY, tile_scale=1.0, r_values=(3, 1, 5), image_score="scale-max", rscin_windows=()),
                  backbone=finest.backbone)
    r1 = MuSc(MuScConfig(**TINY, tile_scale=1.0, r_values=(1,)), backbone=finest.backbone)
    a, b, c = (model.score(images, progress=False) for model in (finest, scaled, r1))
    np.testing.assert_allclose(a.raw_scores, c.maps.reshape(5, -1).max(axis=1), atol=1e-6)
    np.testing.assert_allclose(a.raw_scores, a.evidence, atol=1e-12)
    np.testing.assert_allclose(a.scores, a.raw_scores)  # no re-scoring windows
    assert not np.allclose(a.raw_scores, b.raw_scores, atol=1e-3)
    np.testing.assert_allclose(a.maps, b.maps, atol=1e-6)  # the maps keep the map rule
    assert "tile_image_score" in a.notes[0] and not any("tile_image_score" in n for n in b.notes)
    square = [Image.fromarray(textured(i, 56)) for i in range(5)]
    whole = MuSc(MuScConfig(**TINY, tile_scale="auto", image_score="scale-max", tile_image_score="finest-max"),
                 backbone=finest.backbone)
    plain = MuSc(MuScConfig(**TINY, image_score="scale-max"), backbone=finest.backbone)
    d, e = whole.score(square, progress=False), plain.score(square, progress=False)  # whole images: image_score
    np.testing.assert_allclose(d.raw_scores, e.raw_scores, atol=1e-6)
    default, paper = MuScConfig.for_method("musc-scales-tiles"), MuScConfig.for_method("musc")
    assert (default.image_score_for(tiled=False), default.image_score_for(tiled=True)) == ("scale-max", "finest-top3-level")
    assert (paper.image_score_for(tiled=False), paper.image_score_for(tiled=True)) == ("max", "max")
    with pytest.raises(ConfigError, match="tile_image_score"):
        MuScConfig(**TINY, tile_image_score="mean").validate()


def test_finest_top3_is_the_mean_of_the_finest_views_strongest_three_patches_on_tiles_and_whole_images():
    """On tiles: the r = 1 blended map's largest 3 x (tile side / grid side)^2 pixels averaged (`finest-top3-level`:
    less half that map's 0.9 quantile); on whole images: the r = 1 grid's three largest patch scores. The maps, the
    maxima kept on the result and the evidence do not change."""
    images = tall_images(90, 5)
    top = MuSc(MuScConfig(**TINY, tile_scale=1.0, r_values=(3, 1), tile_image_score="finest-top3", rscin_windows=()))
    peak = MuSc(MuScConfig(**TINY, tile_scale=1.0, r_values=(3, 1), tile_image_score="finest-max", rscin_windows=()),
                backbone=top.backbone)
    r1 = MuSc(MuScConfig(**TINY, tile_scale=1.0, r_values=(1,)), backbone=top.backbone)
    a, b, c = (model.score(images, progress=False) for model in (top, peak, r1))
    side, grid = top.backbone.image_size, top.backbone.grid
    k = round(3 * (side / grid) ** 2)
    strongest = -np.sort(-c.maps.reshape(5, -1), axis=1)[:, :k]
    np.testing.assert_allclose(a.raw_scores, strongest.mean(axis=1), atol=1e-5)
    assert np.all(a.raw_scores < b.raw_scores)  # below the maximum: a mean over a region
    level = MuSc(MuScConfig(**TINY, tile_scale=1.0, r_values=(3, 1), tile_image_score="finest-top3-level",
                            rscin_windows=()), backbone=top.backbone).score(images, progress=False)
    r1_level = np.sort(c.maps.reshape(5, -1), axis=1)[:, int(np.ceil(0.9 * c.maps[0].size)) - 1]
    np.testing.assert_allclose(level.raw_scores, a.raw_scores - 0.5 * r1_level, atol=1e-5)  # half the level off
    np.testing.assert_allclose(level.maps, a.maps, atol=1e-6)
    np.testing.assert_allclose(a.maps, b.maps, atol=1e-6)
    np.testing.assert_allclose(a.view_maxima, b.view_maxima, atol=1e-6)  # still each view's maxima
    np.testing.assert_allclose(a.evidence, b.evidence, atol=1e-6)
    square = [Image.fromarray(textured(i, 56)) for i in range(5)]
    whole = MuSc(MuScConfig(**TINY, r_values=(5, 1), image_score="finest-top3", rscin_windows=()),
                 backbone=top.backbone)
    features, _ = whole.extract(square, progress=False)
    d = whole.score_features(features, progress=False, keep_pairs=True)
    r1_grid = np.mean([d.pair_maps[(block, 1)] for block in whole.backbone.layers], axis=0).reshape(5, -1)
    np.testing.assert_allclose(d.raw_scores, -np.sort(-r1_grid, axis=1)[:, :3].mean(axis=1), atol=1e-6)


def test_finest_max_on_whole_images_is_the_r1_map_maximum():
    images = [Image.fromarray(textured(i, 56)) for i in range(5)]
    both = MuSc(MuScConfig(**TINY, r_values=(5, 1), image_score="finest-max", rscin_windows=()))
    r1 = MuSc(MuScConfig(**TINY, r_values=(1,), image_score="finest-max", rscin_windows=()), backbone=both.backbone)
    a, b = both.score(images, progress=False), r1.score(images, progress=False)
    np.testing.assert_allclose(a.raw_scores, b.raw_scores, atol=1e-6)  # the r = 1 view's maxima (on its grid)
    np.testing.assert_allclose(b.raw_scores, b.maps.reshape(5, -1).max(axis=1), atol=1e-2)  # its map's, upsampled
    assert not np.allclose(a.raw_scores, a.maps.reshape(5, -1).max(axis=1), atol=1e-3)  # not the mean map's


def test_relative_evidence_is_the_evidence_less_the_images_own_level():
    """`Result.relative_evidence` on tiles: the finest view's blended map maximum less the image's own 0.9 quantile of
    that view's patch scores over all its tiles, the evidence a `map_baseline` 0.9 run tests; it does not move when
    an image is lifted as a whole, where the evidence does. Whole images have none."""
    model = MuSc(MuScConfig(**TINY, tile_scale=1.0, r_values=(3, 1), rscin_windows=()))
    batch = lifted_batch(model, views=2, image=1, amount=0.5, seed=6)
    a, b = batch.a, batch.b
    finest = batch.grids[:, 1].permute(1, 0, 2, 3).reshape(4, -1)  # r = 1 is the second view here
    level = finest.kthvalue(int(np.ceil(0.9 * finest.shape[1])), dim=1).values.numpy()
    np.testing.assert_allclose(a.relative_evidence, a.evidence - level, atol=1e-6)
    np.testing.assert_allclose(b.relative_evidence, a.relative_evidence, atol=1e-5)
    np.testing.assert_allclose(b.evidence[1] - a.evidence[1], 0.5, atol=1e-5)
    based = TiledScorer(MuSc(model.config.replace(map_baseline=0.9), backbone=model.backbone))
    np.testing.assert_allclose(batch.finish(based, batch.grids).evidence, a.relative_evidence, atol=1e-5)
    square = [Image.fromarray(textured(i, 56)) for i in range(4)]
    assert MuSc(MuScConfig(**TINY), backbone=model.backbone).score(square, progress=False).relative_evidence is None


def three_blocks(base: dict) -> tuple[MuSc, "Backbone"]:
    """A tiny run of `base` tapping blocks 0, 1 and 2, its block 2 made to see the images its own way (random blocks
    barely change the tokens), and a backbone of the same weights tapping blocks 0 and 1 alone."""
    from musc.backbones import Backbone

    full = MuSc(MuScConfig(**base, layers=(0, 1, 2)))
    bb = full.backbone
    with torch.no_grad():
        for param in bb.model.blocks[2].parameters():
            param.mul_(8.0)
    return full, Backbone(bb.preset, bb.model, bb.image_size, (0, 1), bb.device)


@pytest.mark.parametrize("matching", ["aligned", "all"])
def test_shallow_tile_image_blocks_score_tiled_images_by_the_finest_view_of_all_blocks_but_the_deepest(matching):
    """`tile_image_blocks` 'shallow': a tiled image's score is what a run tapping all but the deepest block gives,
    while its maps, evidence and view maxima stay those of every tapped block."""
    from musc.backbones import Backbone

    images = tall_images(70, 6)
    base = dict(**TINY, tile_scale=1.0, tile_matching=matching, image_score="scale-max",
                tile_image_score="finest-top3-level", rscin_windows=())
    full, fewer = three_blocks(base)
    bb = full.backbone
    shallow = MuSc(MuScConfig(**base, layers=(0, 1, 2), tile_image_blocks="shallow"), backbone=bb)
    a, b = full.score(images, progress=False), shallow.score(images, progress=False)
    c = MuSc(MuScConfig(**base, layers=(0, 1)), backbone=fewer).score(images, progress=False)
    np.testing.assert_allclose(b.raw_scores, c.raw_scores, atol=1e-6)  # the score of blocks 0 and 1
    assert not np.allclose(b.raw_scores, a.raw_scores, atol=1e-4)
    np.testing.assert_allclose(b.maps, a.maps, atol=1e-6)  # the maps, evidence and maxima of all three blocks
    np.testing.assert_allclose(b.evidence, a.evidence, atol=1e-6)
    np.testing.assert_allclose(b.relative_evidence, a.relative_evidence, atol=1e-6)
    np.testing.assert_allclose(b.view_maxima, a.view_maxima, atol=1e-6)
    assert "blocks 0, 1 (tile_image_blocks)" in b.notes[0] and "tile_image_blocks" not in a.notes[0]
    square = [Image.fromarray(textured(i, 56)) for i in range(5)]  # whole images: every block, as before
    whole = [MuSc(full.config.replace(tile_scale="auto", tile_image_blocks=blocks), backbone=bb).score(
        square, progress=False) for blocks in ("all", "shallow")]
    np.testing.assert_allclose(whole[1].raw_scores, whole[0].raw_scores, atol=1e-12)
    one_block = Backbone(bb.preset, bb.model, bb.image_size, (1,), bb.device)
    one, alone = (MuSc(MuScConfig(**base, layers=(1,), tile_image_blocks=blocks), backbone=one_block).score(
        images, progress=False) for blocks in ("shallow", "all"))
    np.testing.assert_allclose(one.raw_scores, alone.raw_scores, atol=1e-6)  # one tapped block: that block
    with pytest.raises(ConfigError, match="tile_image_blocks"):
        MuScConfig(**TINY, tile_image_blocks="deep").validate()


@pytest.mark.parametrize("matching", ["aligned", "all"])
@pytest.mark.parametrize("map_rule", ["finest", "mean"])
def test_shallow_tile_map_blocks_make_tiled_maps_from_all_blocks_but_the_deepest(matching, map_rule):
    """`tile_map_blocks` 'shallow': a tiled batch's maps are what a run tapping all but the deepest block draws, while
    its image scores, evidence and view maxima stay those of every tapped block; whole images keep every block."""
    images = tall_images(70, 6)
    base = dict(**TINY, tile_scale=1.0, tile_matching=matching, image_score="scale-max", tile_map_rule=map_rule,
                tile_image_score="finest-top3-level", rscin_windows=())
    full, fewer = three_blocks(base)
    bb = full.backbone
    shallow = MuSc(MuScConfig(**base, layers=(0, 1, 2), tile_map_blocks="shallow"), backbone=bb)
    a, b = full.score(images, progress=False), shallow.score(images, progress=False)
    c = MuSc(MuScConfig(**base, layers=(0, 1)), backbone=fewer).score(images, progress=False)
    np.testing.assert_allclose(b.maps, c.maps, atol=1e-6)  # the maps of blocks 0 and 1
    assert not np.allclose(b.maps, a.maps, atol=1e-4)
    np.testing.assert_allclose(b.raw_scores, a.raw_scores, atol=1e-6)  # scores, evidence, maxima of all three
    np.testing.assert_allclose(b.evidence, a.evidence, atol=1e-6)
    np.testing.assert_allclose(b.relative_evidence, a.relative_evidence, atol=1e-6)
    np.testing.assert_allclose(b.view_maxima, a.view_maxima, atol=1e-6)
    assert "maps from blocks 0, 1 (tile_map_blocks)" in b.notes[0] and "tile_map_blocks" not in a.notes[0]
    assert "tile_pixel_decision" not in b.notes[0]  # half-peak masks, the field's default, go unmentioned
    grown = MuSc(shallow.config.replace(tile_pixel_decision="grown"), backbone=bb).score(images, progress=False)
    assert "masks drawn by 'grown' (tile_pixel_decision)" in grown.notes[0] and grown.pixel_decision() == "grown"
    np.testing.assert_allclose(grown.maps, b.maps, atol=1e-6)  # the rule decides masks; the maps stay
    both = MuSc(full.config.replace(tile_map_blocks="shallow", tile_image_blocks="shallow"), backbone=bb).score(
        images, progress=False)  # the two together: maps and image scores of blocks 0 and 1
    np.testing.assert_allclose(both.maps, c.maps, atol=1e-6)
    np.testing.assert_allclose(both.raw_scores, c.raw_scores, atol=1e-6)
    np.testing.assert_allclose(both.evidence, a.evidence, atol=1e-6)
    based = (MuSc(full.config.replace(map_baseline=0.5, tile_map_blocks="shallow"), backbone=bb),  # levels off first
             MuSc(MuScConfig(**base, layers=(0, 1), map_baseline=0.5), backbone=fewer))
    np.testing.assert_allclose(*(model.score(images, progress=False).maps for model in based), atol=1e-6)
    square = [Image.fromarray(textured(i, 56)) for i in range(5)]  # whole images: every block, as before
    whole = [MuSc(full.config.replace(tile_scale="auto", tile_map_blocks=blocks), backbone=bb).score(
        square, progress=False) for blocks in ("all", "shallow")]
    np.testing.assert_allclose(whole[1].maps, whole[0].maps, atol=1e-12)
    with pytest.raises(ConfigError, match="tile_map_blocks"):
        MuScConfig(**TINY, tile_map_blocks="deep").validate()


def test_musc_thin_preset_is_the_default_with_image_scores_of_the_shallower_blocks_and_half_peak_masks():
    """`musc-thin`: the default preset (whose tiled maps are the r = 1 scores of all blocks but the deepest), with a
    tiled batch's images scored from those blocks and its masks drawn by `half-peak`; a batch of whole images is
    scored and decided exactly as by the default."""
    from musc.config import DEFAULT_METHOD, METHODS

    thin, default = METHODS["musc-thin"], METHODS[DEFAULT_METHOD]
    assert {k: v for k, v in thin.items() if default.get(k) != v} == {
        "tile_image_blocks": "shallow", "tile_pixel_decision": "half-peak"}
    assert (default["tile_map_rule"], default["tile_map_blocks"], default["tile_pixel_decision"]) == (
        "finest", "shallow", "grown")
    bb = MuSc(MuScConfig(**TINY)).backbone
    square = [Image.fromarray(textured(i, 56)) for i in range(5)]
    whole = [MuSc(MuScConfig.for_method(m, **TINY), backbone=bb).score(square, progress=False)
             for m in ("musc-thin", DEFAULT_METHOD)]
    np.testing.assert_allclose(whole[0].maps, whole[1].maps, atol=1e-12)
    np.testing.assert_allclose(whole[0].scores, whole[1].scores, atol=1e-12)
    assert whole[0].pixel_decision() == whole[1].pixel_decision() == "half-peak"
    images = tall_images(70, 6)
    tiled = [MuSc(MuScConfig.for_method(m, **TINY, tile_scale=1.0), backbone=bb).score(images, progress=False)
             for m in ("musc-thin", DEFAULT_METHOD)]
    np.testing.assert_allclose(tiled[0].evidence, tiled[1].evidence, atol=1e-6)  # decisions test the same evidence
    np.testing.assert_allclose(tiled[0].maps, tiled[1].maps, atol=1e-6)  # the same maps
    assert (tiled[0].pixel_decision(), tiled[1].pixel_decision()) == ("half-peak", "grown")
    assert "tile_map_blocks" in tiled[0].notes[0] and "tile_image_blocks" in tiled[0].notes[0]
    assert "tile_map_blocks" in tiled[1].notes[0] and "tile_image_blocks" not in tiled[1].notes[0]
