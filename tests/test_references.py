"""Few-shot MuSc, MuSc+ and the reference bank."""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from PIL import Image

from musc import MuSc, MuScConfig
from musc.bank import Bank, build_bank, run_settings
from musc.cli import main
from musc.errors import InputError
from musc.scoring import mutual_scores, reference_scores

from conftest import planted, textured

TINY = MuScConfig(backbone="test_tiny_dino", image_size=112, pretrained=False, device="cpu")
CLI_TINY = ["--backbone", "test_tiny_dino", "--image-size", "56", "--random-weights", "--device", "cpu", "-q"]


def unit(n, l, c, seed):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, l, c, generator=g), dim=-1)


def nearest(a, b):
    return torch.cdist(a.double(), b.double(), compute_mode="donot_use_mm_for_euclid_dist").min(dim=1).values


def slow_few_shot(z, refs, fraction):
    n, l, _ = z.shape
    out = torch.empty(n, l, dtype=torch.float64)
    for i in range(n):
        cols = [nearest(z[i], z[j]) for j in range(n) if j != i] + [nearest(z[i], r) for r in refs]
        s = torch.stack(cols, dim=1).sort(dim=1).values
        k = max(1, math.floor(fraction * s.shape[1]))
        out[i] = s[:, :k].mean(dim=1)
    return out.float()


def slow_musc_plus(z, refs):
    return torch.stack([torch.stack([nearest(z[i], r) for r in refs], dim=1).min(dim=1).values
                        for i in range(z.shape[0])]).float()


@pytest.mark.parametrize("n,k", [(1, 1), (1, 3), (2, 1), (4, 2), (5, 7)])
def test_few_shot_matches_slow(n, k):
    z, refs = unit(n, 9, 16, n), unit(k, 9, 16, 100 + k)
    assert (mutual_scores(z, 0.3, refs=refs) - slow_few_shot(z, refs, 0.3)).abs().max() <= 1e-5


@pytest.mark.parametrize("n,k", [(1, 1), (3, 4)])
def test_musc_plus_matches_slow(n, k):
    z, refs = unit(n, 9, 16, n), unit(k, 12, 16, 50 + k)  # references may have another patch count
    assert (reference_scores(z, refs) - slow_musc_plus(z, refs)).abs().max() <= 1e-5


def images(n=6):
    return [Image.fromarray(textured(i)) for i in range(n - 1)] + [Image.fromarray(planted(textured(99)))]


def test_normal_twin_in_references_lowers_normal_scores():
    test = images()
    refs = [Image.fromarray(textured(99))] + [Image.fromarray(textured(200 + i)) for i in range(3)]
    zero = MuSc(TINY.replace(rscin_windows=())).score(test, progress=False)
    few = MuSc(TINY.replace(rscin_windows=())).score(test, progress=False, references=refs)
    plus = MuSc(TINY.replace(rscin_windows=(), mode="musc+")).score(test, progress=False, references=refs)
    assert few.raw_scores[:5].mean() < zero.raw_scores[:5].mean()
    assert int(np.argmax(few.raw_scores)) == 5 and int(np.argmax(plus.raw_scores)) == 5


def test_single_image_with_references_skips_rscin():
    result = MuSc(TINY.replace(mode="musc+")).score(images()[-1:], progress=False, references=images()[:3])
    assert len(result) == 1 and result.scores[0] == result.raw_scores[0]
    assert any("RsCIN skipped" in n for n in result.notes)
    with pytest.raises(InputError, match="reference set is empty"):
        MuSc(TINY).score(images()[:2], progress=False, references=[])


def test_bank_round_trip_gives_the_same_maps(tmp_path):
    model = MuSc(TINY.replace(mode="musc+"))
    refs = [Image.fromarray(textured(300 + i)) for i in range(4)]
    bank = build_bank(model, refs, progress=False)
    path = bank.save(tmp_path / "good.bank")
    loaded = Bank.load(path)
    assert loaded.size == 4 and loaded.settings == run_settings(model)
    direct = model.score(images(), progress=False, references=refs)
    via_bank = model.score(images(), progress=False, references=loaded.features)
    np.testing.assert_array_equal(direct.maps, via_bank.maps)
    np.testing.assert_array_equal(direct.scores, via_bank.scores)


@pytest.mark.parametrize("options", [dict(), dict(rescoring="rscon", map_baseline=0.5, projection_dim=16),
                                     dict(aggregation="snamd", map_rule="z-max", memory_budget_mb=1)])
def test_each_image_against_the_others_equals_scoring_it_alone(options):
    model = MuSc(TINY.replace(mode="musc+", **options))
    features = model.extract([Image.fromarray(textured(300 + i)) for i in range(5)], progress=False)[0]
    held_out = model.score_each_against_others(features, progress=False)
    for i in range(5):
        alone = model.score_features(features.subset([i]), progress=False,
                                     references=features.subset([j for j in range(5) if j != i]))
        np.testing.assert_allclose(held_out[i].maps, alone.maps, rtol=0, atol=1e-6)
        np.testing.assert_allclose(held_out[i].scores, alone.scores, rtol=0, atol=1e-6)
    with pytest.raises(InputError, match="at least 2 images"):
        model.score_each_against_others(features.subset([0]))


def test_bank_keeps_each_references_score_against_the_others(tmp_path):
    model = MuSc(TINY.replace(mode="musc+"))
    refs = [Image.fromarray(textured(300 + i)) for i in range(4)]
    bank = build_bank(MuSc(TINY), refs, progress=False)  # leave-one-out runs MuSc+ whatever the model's mode
    for i in range(4):
        alone = model.score([refs[i]], progress=False, references=[r for j, r in enumerate(refs) if j != i])
        assert bank.reference_evidence[i] == pytest.approx(float(alone.maps[0].max()), rel=1e-6)
        assert bank.reference_map_max[i] == pytest.approx(float(alone.maps[0].max()), rel=1e-6)
    loaded = Bank.load(bank.save(tmp_path / "good.bank"))
    np.testing.assert_array_equal(loaded.reference_evidence, bank.reference_evidence)
    np.testing.assert_array_equal(loaded.reference_map_max, bank.reference_map_max)
    null = loaded.reference_null
    assert null.count == 4 and null.mean == pytest.approx(float(np.mean(bank.reference_evidence)))
    from musc.decision import decide_against_references

    new = model.score([Image.fromarray(planted(textured(99))), Image.fromarray(textured(99))], progress=False,
                      references=loaded.features)
    decided = decide_against_references(new.maps, null)
    assert decided.image.p_values[0] < decided.image.p_values[1]  # the planted defect stands further out
    assert (decided.masks.any(axis=(1, 2)) == decided.image.defective).all()
    few = build_bank(MuSc(TINY), refs[:2], progress=False)
    assert few.reference_evidence is None and few.reference_null is None
    assert Bank.load(few.save(tmp_path / "few.bank")).reference_null is None


def test_bank_mismatch_and_damage_refused(tmp_path):
    bank = build_bank(MuSc(TINY), [Image.fromarray(textured(1))], progress=False)
    path = bank.save(tmp_path / "b.bank")
    other = MuSc(TINY.replace(image_size=56, r_values=(1, 3)))
    with pytest.raises(InputError, match="other settings.*image_size: bank 112, run 56.*r_values"):
        Bank.load(path).check_matches(run_settings(other))
    data = bytearray(path.read_bytes())
    data[-8:] = b"\x00" * 8
    path.write_bytes(bytes(data))
    with pytest.raises(InputError, match="damaged"):
        Bank.load(path)
    (tmp_path / "x.bank").write_bytes(b"junk")
    with pytest.raises(InputError, match="cannot read bank"):
        Bank.load(tmp_path / "x.bank")
    with pytest.raises(InputError, match="bank not found"):
        Bank.load(tmp_path / "missing.bank")
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(InputError, match="is not a musc bank \\(format 'pt'\\)"):
        Bank.load(tmp_path / "model.safetensors")
    with pytest.raises(InputError, match="at least one reference image"):
        build_bank(MuSc(TINY), [], progress=False)


def reference_folder(tmp_path):
    """Three textured known-normal images in tmp_path/refs."""
    refs = tmp_path / "refs"
    refs.mkdir()
    for i in range(3):
        Image.fromarray(textured(400 + i)).save(refs / f"r{i}.png")
    return refs


def test_few_shot_null_scores_the_references_as_the_test_images_are():
    from musc.bank import few_shot_null

    model = MuSc(TINY)  # few-shot MuSc; no subsets
    refs = [Image.fromarray(textured(600 + i)) for i in range(4)]
    tests = [Image.fromarray(textured(700 + i)) for i in range(5)] + [Image.fromarray(planted(textured(99)))]
    union = MuSc(TINY).score(tests + refs, progress=False)  # zero-shot: every image against all the others
    few_shot = model.score(tests, progress=False, references=refs)
    np.testing.assert_allclose(few_shot.maps, union.maps[:6], rtol=0, atol=1e-6)  # each test image against the rest
    null = few_shot_null(model, refs, tests, progress=False)
    ref_peaks = union.maps[6:].reshape(4, -1).max(axis=1)  # each reference against the rest of the same union
    assert null.count == 4 and null.mean == pytest.approx(ref_peaks.mean(), abs=1e-6)
    assert null.sd == pytest.approx(ref_peaks.std(ddof=1), abs=1e-6)
    with pytest.raises(InputError, match="at least 3 reference images"):
        few_shot_null(model, refs[:2], tests, progress=False)


def test_few_shot_null_with_subsets_pools_each_reference_as_a_test_image():
    from musc.bank import few_shot_null, few_shot_scores
    from musc.pipeline import split_subsets

    model = MuSc(TINY.replace(subsets=2, seed=3))
    refs = [Image.fromarray(textured(600 + i)) for i in range(5)]
    tests = [Image.fromarray(textured(700 + i)) for i in range(7)] + [Image.fromarray(planted(textured(99)))]
    result, null = few_shot_scores(model, refs, tests, progress=False)
    np.testing.assert_allclose(result.maps, model.score(tests, references=refs, progress=False).maps, atol=1e-6)
    expected = np.empty(5)
    for s, part in enumerate(split_subsets(8, 2, 3)):  # the test images' subsets, as the main pass splits them
        pool = [tests[i] for i in part]
        union = MuSc(TINY).score(pool + refs, progress=False)  # one subset and every reference, zero-shot
        peaks = union.maps.reshape(len(union.maps), -1).max(axis=1)
        np.testing.assert_allclose(result.maps[part], union.maps[:len(part)], atol=1e-6)  # a test image's pool
        expected[s::2] = peaks[len(part):][s::2]  # reference i joins subset i mod 2: a pool of the same size
    assert null.count == 5 and null.mean == pytest.approx(expected.mean(), abs=1e-6)
    assert null.sd == pytest.approx(expected.std(ddof=1), abs=1e-6)
    again = few_shot_null(model, refs, tests, progress=False)
    assert (again.mean, again.sd) == pytest.approx((null.mean, null.sd), abs=1e-9)
    with pytest.raises(InputError, match="3 images cannot be split into 2 subsets"):  # as model.score says
        few_shot_scores(model, refs, tests[:3], progress=False)


def test_cli_few_shot_decision_against_the_references(image_folder, tmp_path):
    refs = reference_folder(tmp_path)
    runner = CliRunner()
    res = runner.invoke(main, ["score", str(image_folder), "--out", str(tmp_path / "few"), "--reference", str(refs),
                               "--decision", "reference", *CLI_TINY])
    assert res.exit_code == 0, res.output
    facts = json.loads((tmp_path / "few" / "config.json").read_text())
    assert facts["mode"] == "musc" and facts["reference_null"]["count"] == 3
    decided = json.loads((tmp_path / "few" / "decision.json").read_text())["image"]
    assert decided["method"] == "reference"
    rows = (tmp_path / "few" / "scores.csv").read_text().splitlines()
    assert "tail_probability" in rows[0] and len(rows) == 8
    res = runner.invoke(main, ["score", str(image_folder), "--out", str(tmp_path / "split"), "--reference", str(refs),
                               "--decision", "reference", "--subsets", "2", *CLI_TINY])  # 3 references, 2 subsets
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "split" / "config.json").read_text())["reference_null"]["count"] == 3
    res = runner.invoke(main, ["decide", str(tmp_path / "few"), "--fdr", "0.3", "-q"])  # again against the null
    assert res.exit_code == 0, res.output
    again = json.loads((tmp_path / "few" / "decision.json").read_text())["image"]
    assert again["method"] == "reference" and again["threshold"] < decided["threshold"]
    res = runner.invoke(main, ["score", str(image_folder), "--out", str(tmp_path / "plain"), "--reference", str(refs),
                               *CLI_TINY])  # few-shot keeps the batch's decision unless asked
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "plain" / "decision.json").read_text())["image"]["method"] == "balanced"
    res = runner.invoke(main, ["decide", str(tmp_path / "plain"), "--decision", "reference", "-q"])
    assert res.exit_code != 0 and "no reference_null" in res.output
    res = runner.invoke(main, ["score", str(image_folder), "--out", str(tmp_path / "x"), "--decision", "reference",
                               *CLI_TINY])
    assert res.exit_code != 0 and "give --reference DIR or --bank BANK" in res.output
    bank_file = tmp_path / "good.bank"
    assert runner.invoke(main, ["bank", "build", str(refs), "--out", str(bank_file), *CLI_TINY]).exit_code == 0
    res = runner.invoke(main, ["score", str(image_folder), "--out", str(tmp_path / "y"), "--bank", str(bank_file),
                               "--mode", "musc", "--decision", "reference", *CLI_TINY])
    assert res.exit_code != 0 and "needs --mode musc+" in res.output
    (refs / "r2.png").unlink()
    res = runner.invoke(main, ["score", str(image_folder), "--out", str(tmp_path / "z"), "--reference", str(refs),
                               "--decision", "reference", *CLI_TINY])
    assert res.exit_code != 0 and "at least 3 reference images, found 2" in res.output
    assert not any((tmp_path / name).exists() for name in ("x", "y", "z"))


def test_cli_reference_bank_and_single_image(image_folder, tmp_path):
    refs = reference_folder(tmp_path)
    runner = CliRunner()
    res = runner.invoke(main, ["score", str(image_folder), "--out", str(tmp_path / "few"), "--reference", str(refs),
                               "--mode", "musc+", *CLI_TINY])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "few" / "config.json").read_text())["mode"] == "musc+"
    assert json.loads((tmp_path / "few" / "decision.json").read_text())["image"]["method"] == "reference"
    bank_file = tmp_path / "good.bank"
    res = runner.invoke(main, ["bank", "build", str(refs), "--out", str(bank_file), *CLI_TINY])
    assert res.exit_code == 0 and bank_file.is_file()
    one = image_folder / "defect" / "odd.png"
    res = runner.invoke(main, ["score", str(one), "--out", str(tmp_path / "one"), "--bank", str(bank_file),
                               *CLI_TINY[:-1]])
    assert res.exit_code == 0, res.output
    assert "RsCIN skipped" in res.output and "(reference, threshold" in res.output  # decided against the bank alone
    assert (tmp_path / "one" / "maps" / "odd.npy").is_file()
    facts = json.loads((tmp_path / "one" / "config.json").read_text())
    null = Bank.load(bank_file).reference_null
    assert facts["reference_null"]["count"] == 3 and facts["reference_null"]["mean"] == pytest.approx(null.mean)
    first = json.loads((tmp_path / "one" / "decision.json").read_text())
    assert first["image"]["method"] == "reference" and first["image"]["threshold"] == pytest.approx(
        null.quantile_of_tail(0.05))
    res = runner.invoke(main, ["decide", str(tmp_path / "one"), "--fdr", "0.2", "-q"])
    assert res.exit_code == 0, res.output
    again = json.loads((tmp_path / "one" / "decision.json").read_text())["image"]
    assert again["method"] == "reference" and again["threshold"] == pytest.approx(null.quantile_of_tail(0.2))
    res = runner.invoke(main, ["score", str(one), "--out", str(tmp_path / "refs_plus"), "--reference", str(refs),
                               "--mode", "musc+", *CLI_TINY[:-1]])  # the null a bank of these references holds
    assert res.exit_code == 0, res.output
    same = json.loads((tmp_path / "refs_plus" / "decision.json").read_text())
    assert same["image"]["method"] == "reference" and same["image"]["threshold"] == pytest.approx(first["image"]["threshold"])
    np.testing.assert_allclose(np.load(tmp_path / "refs_plus" / "maps" / "odd.npy"),
                               np.load(tmp_path / "one" / "maps" / "odd.npy"), atol=1e-6)
    res = runner.invoke(main, ["decide", str(tmp_path / "one"), "--decision", "balanced", "-q"])
    assert res.exit_code != 0 and "fewer than 3 images" in res.output  # an explicit batch method stays one
    res = runner.invoke(main, ["score", str(one), "--out", str(tmp_path / "asked"), "--bank", str(bank_file),
                               "--decision", "balanced", *CLI_TINY[:-1]])
    assert res.exit_code == 0 and "no label-free decision" in res.output and "build the bank again" not in res.output
    (refs / "r2.png").unlink()
    small = tmp_path / "small.bank"
    assert runner.invoke(main, ["bank", "build", str(refs), "--out", str(small), *CLI_TINY]).exit_code == 0
    res = runner.invoke(main, ["score", str(one), "--out", str(tmp_path / "small"), "--bank", str(small),
                               *CLI_TINY[:-1]])
    assert res.exit_code == 0 and "build the bank again with 3 references or more" in res.output
    res = runner.invoke(main, ["score", str(one), "--out", str(tmp_path / "two_refs"), "--reference", str(refs),
                               "--mode", "musc+", *CLI_TINY[:-1]])
    assert res.exit_code == 0 and "no label-free decision" in res.output and "give 3 reference images" in res.output
    res = runner.invoke(main, ["score", str(one), "--out", str(tmp_path / "two"), "--bank", str(bank_file),
                               *[a if a != "56" else "112" for a in CLI_TINY]])
    assert res.exit_code != 0 and "other settings" in res.output
    res = runner.invoke(main, ["score", str(image_folder), "--out", str(tmp_path / "x"), "--mode", "musc+", *CLI_TINY])
    assert res.exit_code != 0 and "--mode needs --reference or --bank" in res.output
    res = runner.invoke(main, ["score", str(one), "--out", str(tmp_path / "y"), *CLI_TINY])
    assert res.exit_code != 0 and "at least 2 readable images" in res.output


def test_evaluate_few_shot_both_modes(tmp_path):
    from synthetic_data import make_dataset

    root = make_dataset("mvtec_ad", tmp_path / "data")
    out = tmp_path / "out"
    args = ["evaluate", "--dataset", "mvtec_ad", "--root", str(root), "--out", str(out), "--shots", "2",
            "--seeds", "0,1", *CLI_TINY[:-1]]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    md = (out / "metrics_2shot.md").read_text()
    assert "### musc, 2-shot (mean ± std over 2 seeds)" in md and "### musc+, 2-shot" in md
    assert "| cat_a | " in md and "±" in md and "**mean**" in md
    runs = json.loads((out / "metrics_2shot.json").read_text())["runs"]
    assert set(runs) == {"musc", "musc+"} and len(runs["musc"]["cat_a"]) == 2
    cfg0 = json.loads((out / "cat_a" / "2shot-musc-seed0" / "config.json").read_text())
    cfg1 = json.loads((out / "cat_a" / "2shot-musc-seed1" / "config.json").read_text())
    assert len(cfg0["references"]) == 2 and all("/train/good/" in p for p in cfg0["references"])
    assert cfg0["references"] != cfg1["references"]
    res = CliRunner().invoke(main, [*args[:7], "--shots", "5", *CLI_TINY])
    assert res.exit_code != 0 and "needs at least 5" in res.output
    tiled = tmp_path / "tiled"  # with tiles, the test and reference images are cut on one plan
    res = CliRunner().invoke(main, [*args[:6], str(tiled), "--shots", "1", "--seeds", "0", *CLI_TINY, "--tiles", "1.0"])
    assert res.exit_code == 0, res.output
    notes = json.loads((tiled / "cat_a" / "1shot-musc-seed0" / "config.json").read_text())["notes"]
    assert any("tiles of 56 px per image" in n for n in notes)


def test_reference_aggregation_is_reused_for_the_same_bank():
    model = MuSc(TINY.replace(mode="musc+"))
    bank = build_bank(model, [Image.fromarray(textured(500 + i)) for i in range(3)], progress=False)
    first = model.score(images()[:1], progress=False, references=bank.features)
    cached = model._reference_cache[id(bank.features)][1]
    second = model.score(images()[:1], progress=False, references=bank.features)
    assert model._reference_cache[id(bank.features)][1] is cached
    np.testing.assert_array_equal(first.maps, second.maps)
    other = build_bank(model, [Image.fromarray(textured(600))], progress=False)
    model.score(images()[:1], progress=False, references=other.features)
    assert model._reference_cache[id(other.features)][0]() is other.features
    del bank, cached
    model.score(images()[:1], progress=False, references=other.features)
    assert len(model._reference_cache) == 1  # the dropped bank's entry is gone
    tiled_model = MuSc(TINY.replace(mode="musc+", tile_scale=1.0), backbone=model.backbone)
    tall = [Image.fromarray(np.vstack([textured(700 + i), textured(710 + i)])) for i in range(2)]
    tiled = build_bank(tiled_model, tall, progress=False)
    tiled_model.score(tall[:1], progress=False, references=tiled.features)
    entries = {k: v[1] for k, v in tiled_model._reference_cache.items()}
    assert len(entries) == len(tiled.features.starts) > 1  # every tile position kept
    tiled_model.score(tall[1:], progress=False, references=tiled.features)
    assert all(tiled_model._reference_cache[k][1] is v for k, v in entries.items())
