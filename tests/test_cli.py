import csv
import json

import numpy as np
import pytest
from PIL import Image
from safetensors.torch import save_file


from conftest import TINY_CLI as TINY, run_cli as run, tiny_state_dict


def test_score_writes_every_output(image_folder, tmp_path):
    out = tmp_path / "out"
    res = run("score", image_folder, "--out", out, *TINY[:-1])
    assert res.exit_code == 0, res.output
    assert "Scored 7 images" in res.output
    rows = list(csv.DictReader(open(out / "scores.csv")))
    assert [int(r["rank"]) for r in rows] == list(range(1, 8))
    scores = [float(r["score"]) for r in rows]
    assert scores == sorted(scores, reverse=True)
    assert all(r["evidence"] == r["map_max"] for r in rows)  # whole images: the decisions test the map maxima
    names = {r["name"] for r in rows}
    assert "defect__odd" in names and "good__img_0" in names
    for name in names:
        amap = np.load(out / "maps" / f"{name}.npy")
        assert amap.shape == (112, 112) and amap.dtype == np.float32
        assert Image.open(out / "heatmaps" / f"{name}.png").size == (112, 112)
        assert Image.open(out / "overlays" / f"{name}.png").size == (112, 112)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["config"]["backbone"] == "test_tiny_dino" and cfg["config"]["image_size"] == 56
    assert cfg["num_images"] == 7 and "scoring" in cfg["timings_s"]
    default = cfg["config"]  # the default preset
    assert (default["aggregation"], default["map_rule"], default["image_score"]) == ("lnamd", "mean", "scale-max")
    assert (default["tile_scale"], default["tile_overlap"], default["tile_subsets"]) == ("auto", 0.1, True)
    assert (default["tile_rescoring"], default["tile_image_score"]) == ("none", "finest-top3-level")
    assert not list(out.rglob("*.tmp"))


def test_score_options_reach_the_config(image_folder, tmp_path):
    out = tmp_path / "o"
    res = run("score", image_folder, "--out", out, *TINY, "--r", "1,3", "--layers", "1,3", "--interval", "0.5",
              "--no-rscin", "--subsets", "2", "--no-images", "--no-maps", "--no-recursive")
    # --no-recursive: the images are in sub-folders, so none is found
    assert res.exit_code != 0 and "no images" in res.output
    res = run("score", image_folder, "--out", out, *TINY, "--r", "1,3", "--layers", "1,3", "--interval", "0.5",
              "--interval-skip", "0.1", "--no-rscin", "--subsets", "2", "--no-images", "--no-maps")
    assert res.exit_code == 0, res.output
    cfg = json.loads((out / "config.json").read_text())["config"]
    assert cfg["r_values"] == [1, 3] and cfg["layers"] == [1, 3] and cfg["interval"] == 0.5
    assert cfg["interval_skip"] == 0.1
    assert cfg["rscin_windows"] == [] and cfg["subsets"] == 2
    assert not (out / "maps").exists() and not (out / "heatmaps").exists()
    res = run("score", image_folder, "--out", tmp_path / "paper", *TINY, "--image-score", "max", "--map-rule", "z-max",
              "--map-baseline", "0.9", "--no-images")
    assert res.exit_code == 0, res.output
    chosen = json.loads((tmp_path / "paper" / "config.json").read_text())["config"]
    assert (chosen["image_score"], chosen["map_rule"], chosen["map_baseline"]) == ("max", "z-max", 0.9)
    assert cfg["map_baseline"] is None  # off unless asked for
    res = run("score", image_folder, "--out", tmp_path / "bad", *TINY, "--map-baseline", "1")
    assert res.exit_code != 0 and "--map-baseline" in res.output and not (tmp_path / "bad").exists()
    res = run("score", image_folder, "--out", tmp_path / "bad", *TINY, "--image-score", "mean")
    assert res.exit_code != 0 and "--image-score" in res.output and not (tmp_path / "bad").exists()
    rows = list(csv.DictReader(open(out / "scores.csv")))
    assert all(r["score"] == r["raw_score"] for r in rows)


def _assert_failed_cleanly(res, out, *needles):
    assert res.exit_code != 0
    for needle in needles:
        assert needle in res.output, res.output
    assert "Traceback" not in res.output
    assert not (out / "scores.csv").exists()


def test_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    out = tmp_path / "out"
    _assert_failed_cleanly(run("score", tmp_path / "empty", "--out", out, *TINY), out, "no images")


def test_missing_folder(tmp_path):
    out = tmp_path / "out"
    _assert_failed_cleanly(run("score", tmp_path / "nope", "--out", out, *TINY), out, "folder not found")


def test_single_image(image_folder, tmp_path):
    out = tmp_path / "out"
    res = run("score", image_folder / "defect", "--out", out, *TINY)
    _assert_failed_cleanly(res, out, "at least 2 readable images")


def test_corrupt_file_stops_or_is_skipped(image_folder, tmp_path):
    (image_folder / "good" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    out = tmp_path / "out"
    _assert_failed_cleanly(run("score", image_folder, "--out", out, *TINY), out, "broken.png", "--skip-unreadable")
    res = run("score", image_folder, "--out", out, *TINY, "--skip-unreadable", "--no-images")
    assert res.exit_code == 0
    assert len(list(csv.DictReader(open(out / "scores.csv")))) == 7


def test_size_not_multiple_of_patch(image_folder, tmp_path):
    out = tmp_path / "out"
    args = [a if a != "56" else "50" for a in TINY]
    _assert_failed_cleanly(run("score", image_folder, "--out", out, *args), out, "not a multiple of the patch size 14")


def test_unknown_backbone(image_folder, tmp_path):
    out = tmp_path / "out"
    res = run("score", image_folder, "--out", out, "--backbone", "vit_nonexistent", "-q")
    _assert_failed_cleanly(res, out, "unknown backbone 'vit_nonexistent'", "dinov2_vits14")


def test_mismatched_weights(image_folder, tmp_path):
    w = tmp_path / "clip.safetensors"
    save_file(tiny_state_dict("test_tiny_clip"), str(w))
    out = tmp_path / "out"
    args = [a for a in TINY if a != "--random-weights"]
    _assert_failed_cleanly(run("score", image_folder, "--out", out, *args, "--weights", w), out, "do not match backbone")


@pytest.mark.parametrize("opt,val,msg", [
    ("--r", "1,2", "odd"), ("--r", "a,b", "comma-separated"), ("--interval", "1.5", "interval"),
    ("--interval-skip", "0.5", "interval_skip"),
    ("--subsets", "0", "subsets"), ("--device", "tpu", "device"), ("--batch-size", "0", "batch_size"),
    ("--rscin-windows", "0", "RsCIN windows"), ("--subsets", "4", "subsets of at least 2"),
])
def test_bad_options(image_folder, tmp_path, opt, val, msg):
    out = tmp_path / "out"
    _assert_failed_cleanly(run("score", image_folder, "--out", out, *TINY, opt, val), out, msg)


def test_previous_result_survives_a_failed_run(image_folder, tmp_path):
    out = tmp_path / "out"
    assert run("score", image_folder, "--out", out, *TINY, "--no-images").exit_code == 0
    before = (out / "scores.csv").read_text()
    (image_folder / "good" / "broken.png").write_bytes(b"junk")
    assert run("score", image_folder, "--out", out, *TINY).exit_code != 0
    assert (out / "scores.csv").read_text() == before


def test_help_documents_every_option():
    res = run("score", "--help")
    for opt in ["--out", "--backbone", "--image-size", "--layers", "--r", "--interval", "--interval-skip",
                "--rscin-windows", "--no-rscin",
                "--subsets", "--seed", "--device", "--half", "--batch-size", "--weights", "--random-weights",
                "--memory-budget", "--skip-unreadable", "--no-maps", "--no-images", "--quiet"]:
        assert opt in res.output, opt
    assert "test_tiny_dino" in run("backbones").output


def test_python_dash_m_runs_the_command(image_folder, tmp_path):
    import subprocess
    import sys

    version = subprocess.run([sys.executable, "-m", "musc", "--version"], capture_output=True, text=True, check=True)
    assert version.stdout.startswith("musc, version ")
    bad = subprocess.run([sys.executable, "-m", "musc", "score", str(tmp_path / "missing"), "--out",
                          str(tmp_path / "out")], capture_output=True, text=True)
    assert bad.returncode != 0 and "folder not found" in bad.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("extra,msg", [
    (["--r", ""], "the list is empty"),
    (["--decision", "fixed"], "--decision fixed needs --threshold"),
])
def test_bad_option_combinations(image_folder, tmp_path, extra, msg):
    out = tmp_path / "out"
    _assert_failed_cleanly(run("score", image_folder, "--out", out, *TINY, *extra), out, msg)
    assert not out.exists()


def test_reference_and_bank_together(image_folder, tmp_path):
    out = tmp_path / "out"
    res = run("score", image_folder, "--out", out, *TINY, "--reference", image_folder / "good",
              "--bank", tmp_path / "some.bank")
    _assert_failed_cleanly(res, out, "give --reference or --bank, not both")


def test_a_file_that_is_not_an_image(image_folder, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("x")
    out = tmp_path / "out"
    _assert_failed_cleanly(run("score", image_folder / "good" / "img_0.png", notes, "--out", out, *TINY), out,
                           "not an image file", "notes.txt")


def test_nothing_readable_left(image_folder, tmp_path):
    folder = tmp_path / "broken"
    folder.mkdir()
    for name in ("a.png", "b.png"):
        (folder / name).write_bytes(b"junk")
    out = tmp_path / "out"
    _assert_failed_cleanly(run("score", folder, "--out", out, *TINY, "--skip-unreadable"), out,
                           "needs at least 2 readable images", "found 0")
    _assert_failed_cleanly(run("score", folder, "--out", out, *TINY, "--skip-unreadable", "--reference",
                               image_folder / "good"), out, "no readable images to score")


def test_evaluate_rejects_zero_shots(image_folder, tmp_path):
    res = run("evaluate", "--dataset", "folder", "--root", image_folder, "--out", tmp_path / "ev", *TINY,
              "--shots", "0")
    assert res.exit_code != 0 and "--shots must be >= 1, got 0" in res.output
    assert not (tmp_path / "ev").exists()


def test_weights_list_names_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MUSC_CACHE_DIR", str(tmp_path / "cache"))
    res = run("weights", "list")
    assert res.exit_code == 0 and f"No imported weights in {tmp_path / 'cache' / 'weights'}" in res.output
    (tmp_path / "cache" / "weights").mkdir(parents=True)
    save_file(tiny_state_dict("test_tiny_dino"), str(tmp_path / "cache" / "weights" / "tiny.safetensors"))
    res = run("weights", "list")
    assert res.exit_code == 0 and "tiny" in res.output and "No imported weights" not in res.output


def test_ground_truth_masks_beside_the_images_are_named_and_exclude_leaves_them_out(image_folder, tmp_path, caplog):
    import logging

    for name in ("img_0_label.png", "img_1_label.png"):  # KolektorSDD keeps its labels beside the images
        Image.new("L", (112, 112)).save(image_folder / "good" / name)
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING, logger="musc"):
        res = run("score", image_folder, "--out", out, *TINY)
    assert res.exit_code == 0, res.output
    warning = next(r.getMessage() for r in caplog.records if "ground-truth" in r.getMessage())
    assert "2 of the 9 images" in warning and "img_0_label.png" in warning and "--exclude '*_label*'" in warning
    assert len(list(csv.DictReader(open(out / "scores.csv")))) == 9  # scored, as the warning says
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="musc"):
        res = run("score", image_folder, "--out", out, *TINY, "--exclude", "*_label*")
    assert res.exit_code == 0, res.output
    assert not [r for r in caplog.records if "ground-truth" in r.getMessage()]
    rows = list(csv.DictReader(open(out / "scores.csv")))
    assert len(rows) == 7 and not any("label" in r["name"] for r in rows)
    assert json.loads((out / "config.json").read_text())["exclude"] == ["*_label*"]
    res = run("score", image_folder, "--out", out, *TINY, "--exclude", "*.png")
    assert res.exit_code != 0 and "all 9 match --exclude *.png" in res.output
    res = run("bank", "build", image_folder, "--out", tmp_path / "b.bank", *TINY, "--exclude", "*_label*")
    assert res.exit_code == 0, res.output
    from musc.bank import Bank

    assert Bank.load(tmp_path / "b.bank").size == 7


def test_masks_named_like_their_photos_are_found_by_their_pixels(tmp_path, caplog):
    import logging

    from conftest import textured

    folder = tmp_path / "Imgs"
    folder.mkdir()
    for i in range(4):  # Magnetic Tile Defect's layout: exp_i.jpg, and its mask exp_i.png beside it
        Image.fromarray(textured(i)).save(folder / f"exp_{i}.jpg", quality=95)
        mask = np.zeros((112, 112), np.uint8)
        mask[40:60, 40:60] = 255 * (i % 2)
        Image.fromarray(mask).save(folder / f"exp_{i}.png")
    with caplog.at_level(logging.WARNING, logger="musc"):
        res = run("score", folder, "--out", tmp_path / "out", *TINY)
    assert res.exit_code == 0, res.output
    warning = next(r.getMessage() for r in caplog.records if "ground-truth" in r.getMessage())
    assert "4 of the 8 images" in warning and "exp_0.png" in warning and "--exclude '*.png'" in warning
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="musc"):
        res = run("score", folder, "--out", tmp_path / "out", *TINY, "--exclude", "*.png")
    assert res.exit_code == 0 and not [r for r in caplog.records if "ground-truth" in r.getMessage()]
    assert len(list(csv.DictReader(open(tmp_path / "out" / "scores.csv")))) == 4


def test_results_written_inside_the_image_folder_are_not_scored_on_the_next_run(image_folder):
    out = image_folder / "results"
    for _ in range(2):
        res = run("score", image_folder, "--out", out, *TINY)
        assert res.exit_code == 0, res.output
        rows = list(csv.DictReader(open(out / "scores.csv")))
        assert len(rows) == 7 and not any(r["path"].startswith(str(out)) for r in rows)


def test_progress_bars_only_on_a_terminal(image_folder, tmp_path, monkeypatch):
    import sys

    from musc.cli import show_progress

    res = run("score", image_folder, "--out", tmp_path / "out", *TINY[:-1])  # no -q; the runner's stderr is no terminal
    assert res.exit_code == 0 and "Scored 7 images" in res.output and "img/s" not in res.output
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert show_progress(False) and not show_progress(True)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    assert not show_progress(False)
