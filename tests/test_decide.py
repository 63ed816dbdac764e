"""`musc decide`: a result folder decided again with other options, without scoring it again."""

import json

import numpy as np
import pytest
from PIL import Image

from musc.export import MAP_SIZE, read_saved_result

from conftest import TINY_CLI as TINY, run_cli as run, rows_of, planted, textured


def masks_of(out, rows):
    return {r["name"]: np.asarray(Image.open(out / r["mask"])) > 0 for r in rows}


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    """15 images of two sizes (one with a planted defect), scored with the default decision and a report."""
    folder = tmp_path_factory.mktemp("batch")
    for i in range(14):
        image = textured(200 + i)
        Image.fromarray(image if i != 3 else image[:, :104]).save(folder / f"n{i:02d}.png")
    Image.fromarray(planted(textured(300))).save(folder / "odd.png")
    return folder


@pytest.fixture
def scored(batch, tmp_path):
    out = tmp_path / "out"
    res = run("score", batch, "--out", out, "--report", *TINY)
    assert res.exit_code == 0, res.output
    return out


def test_deciding_again_with_the_same_options_gives_the_same_decision(scored):
    before, decision = rows_of(scored), json.loads((scored / "decision.json").read_text())
    masks = masks_of(scored, before)
    config = json.loads((scored / "config.json").read_text())
    assert (config[MAP_SIZE], config["pixel_decision"], decision["pixel"]["method"]) == ([56, 56], "half-peak",
                                                                                        "half-peak")
    res = run("decide", scored, "-q")
    assert res.exit_code == 0, res.output
    after = rows_of(scored)
    assert [list(r) for r in after] == [list(r) for r in before]  # the same columns in the same order
    assert after == before  # every value too: decisions, tail probabilities and q-values
    again = json.loads((scored / "decision.json").read_text())
    assert not decision["image"]["undecided"] and decision["image"]["defective"] >= 1
    threshold, threshold_again = decision["image"].pop("threshold"), again["image"].pop("threshold")
    assert again["image"] == decision["image"]  # the rate and its interval included
    assert threshold_again == pytest.approx(threshold, abs=1e-6)  # read back from scores.csv's 6 decimals
    # masks are drawn on the saved maps read back into the model's frame: the same within a pixel or so
    for name, mask in masks_of(scored, after).items():
        assert mask.shape == masks[name].shape
        assert mask.any() == masks[name].any()
        assert np.mean(mask != masks[name]) < 0.02


def test_deciding_again_with_other_options_replaces_the_decision_and_keeps_the_scores(scored):
    before = rows_of(scored)
    heatmaps = {r["name"]: (scored / r["heatmap"]).read_bytes() for r in before}
    res = run("decide", scored, "--decision", "rate", "--expected-defect-rate", "0.2",
              "--pixel-decision", "mebin")
    assert res.exit_code == 0, res.output
    assert "Defective: 3 of 15 (rate" in res.output
    after = rows_of(scored)
    keep = [c for c in before[0] if c not in ("decision", "tail_probability", "q_value")]
    assert [{c: r[c] for c in keep} for r in after] == [{c: r[c] for c in keep} for r in before]
    assert "q_value" not in after[0]  # rate thresholds the scores: no tail probabilities
    assert [r["decision"] for r in after] == ["defective"] * 3 + ["normal"] * 12  # the top of the ranking
    assert {n for n, m in masks_of(scored, after).items() if m.any()} == {r["name"] for r in after[:3]}
    decision = json.loads((scored / "decision.json").read_text())
    assert decision["image"]["method"] == "rate" and decision["pixel"]["method"] == "mebin"
    assert "3 of 15" in (scored / "report.html").read_text() or "defective" in (scored / "report.html").read_text()
    assert {r["name"]: (scored / r["heatmap"]).read_bytes() for r in after} == heatmaps  # images untouched
    res = run("decide", scored, "--decision", "fdr", "--fdr", "0.2", "-q")  # and back to a map-based decision
    assert res.exit_code == 0, res.output
    rows = rows_of(scored)
    assert list(rows[0])[:len(before[0])] == list(before[0])  # the columns as `musc score` writes them
    assert {r["name"] for r in rows if r["decision"] == "defective"} == {r["name"] for r in rows
                                                                        if float(r["q_value"]) <= 0.2}


def test_what_cannot_be_decided_again_is_named_and_nothing_is_changed(batch, scored, tmp_path):
    snapshot = {p: p.read_bytes() for p in scored.rglob("*") if p.is_file()}
    res = run("decide", scored, "--decision", "fixed")
    assert res.exit_code != 0 and "--decision fixed needs --threshold" in res.output
    res = run("decide", scored, "--fdr", "1.5")
    assert res.exit_code != 0 and "fdr" in res.output
    res = run("decide", tmp_path / "nowhere")
    assert res.exit_code != 0 and "no scores.csv" in res.output
    assert {p: p.read_bytes() for p in scored.rglob("*") if p.is_file()} == snapshot
    no_maps = tmp_path / "no-maps"
    assert run("score", batch, "--out", no_maps, "--no-maps", *TINY).exit_code == 0
    res = run("decide", no_maps)
    assert res.exit_code != 0 and "--no-maps" in res.output and "Traceback" not in res.output
    old = tmp_path / "old"
    assert run("score", batch, "--out", old, *TINY).exit_code == 0
    config = json.loads((old / "config.json").read_text())
    del config[MAP_SIZE]  # a folder written before musc decide existed
    (old / "config.json").write_text(json.dumps(config))
    res = run("decide", old)
    assert res.exit_code != 0 and "score the images again" in res.output


def test_two_images_need_a_threshold(tmp_path):
    folder = tmp_path / "two"
    folder.mkdir()
    for i in range(2):
        Image.fromarray(textured(i)).save(folder / f"{i}.png")
    out = tmp_path / "out"
    assert run("score", folder, "--out", out, *TINY).exit_code == 0
    res = run("decide", out)
    assert res.exit_code != 0 and "fewer than 3 images" in res.output
    res = run("decide", out, "--threshold", "0.5", "-q")
    assert res.exit_code == 0, res.output
    rows = rows_of(out)
    assert [r["decision"] for r in rows] == ["defective" if float(r["score"]) >= 0.5 else "normal" for r in rows]
    assert all((out / r["mask"]).is_file() for r in rows)  # the mask column is added where the run had none


def test_read_saved_result_gives_maps_in_the_models_frame(scored):
    saved = read_saved_result(scored)
    assert saved.maps.shape == (15, 56, 56)
    assert sorted(set(saved.sizes)) == [(104, 112), (112, 112)]  # each image's own size, for its mask
    assert saved.evidence is None  # whole images: the decisions test the map maxima
    assert saved.relative_evidence is None and all(r["relative_evidence"] == "" for r in rows_of(scored))
    rows = {r["name"]: r for r in rows_of(scored)}
    names = [r["name"] for r in saved.rows]
    assert names == sorted(names)  # the order they were scored in (one folder: by name), not the ranking
    np.testing.assert_allclose(saved.scores, [float(rows[n]["score"]) for n in names])
    np.testing.assert_allclose(saved.map_max, [float(rows[n]["map_max"]) for n in names])
    np.testing.assert_allclose(saved.maps.reshape(15, -1).max(axis=1), saved.map_max, atol=0.1 * np.ptp(saved.maps))


def test_masks_of_flagged_images_are_never_empty_when_the_maxima_come_from_elsewhere():
    from musc.decision import decide

    rng = np.random.default_rng(0)
    maps = rng.normal(0, 0.1, size=(20, 8, 8)).astype(np.float32)
    maps[3, 2, 2] = 3.0
    known = maps.reshape(20, -1).max(axis=1) + 0.01  # maxima read back more exactly than these maps hold them
    for pixel_method in ("half-peak", "mebin", "image"):
        d = decide(known, maps, "rate", rate=0.1, pixel_method=pixel_method, map_max=known)
        flagged = d.image.defective
        assert flagged.sum() == 2
        assert np.array_equal(d.masks.reshape(20, -1).any(axis=1), flagged)


def test_a_tiled_batch_is_decided_again_from_its_evidence_and_relative_evidence(tmp_path):
    """Tiled runs write both evidences to scores.csv; `musc decide` reads them back and gives the same decision."""
    folder = tmp_path / "tall"
    folder.mkdir()
    for i in range(12):
        image = np.vstack([textured(400 + 2 * i, 112), textured(401 + 2 * i, 112)])[:, :84]
        Image.fromarray(planted(image) if i == 5 else image).save(folder / f"t{i:02d}.png")
    out = tmp_path / "out"
    res = run("score", folder, "--out", out, *TINY)
    assert res.exit_code == 0, res.output
    before = rows_of(out)
    assert all(r["relative_evidence"] and float(r["relative_evidence"]) <= float(r["evidence"]) for r in before)
    saved = read_saved_result(out)
    assert saved.evidence is not None and saved.relative_evidence is not None
    np.testing.assert_allclose(saved.relative_evidence, [float(r["relative_evidence"]) for r in saved.rows])
    res = run("decide", out, "-q")
    assert res.exit_code == 0, res.output
    assert rows_of(out) == before


def test_a_tiled_batch_is_masked_by_its_presets_rule_again_unless_another_is_named(tmp_path):
    """The default preset's tiled batches are masked by `grown`, over the patch size config.json records; `musc
    decide` keeps that rule unless --pixel-decision names another, and a folder without the patch size cannot grow."""
    from musc.export import MAP_PATCH, PIXEL_DECISION

    folder = tmp_path / "tall"
    folder.mkdir()
    for i in range(12):
        image = np.vstack([textured(500 + 2 * i, 112), textured(501 + 2 * i, 112)])[:, :84]
        Image.fromarray(planted(image) if i in (2, 7) else image).save(folder / f"t{i:02d}.png")
    out = tmp_path / "out"
    assert run("score", folder, "--out", out, *TINY).exit_code == 0
    config = json.loads((out / "config.json").read_text())
    assert (config[PIXEL_DECISION], config[MAP_PATCH]) == ("grown", 14)
    assert json.loads((out / "decision.json").read_text())["pixel"]["method"] == "grown"
    saved = read_saved_result(out)
    assert (saved.pixel_decision, saved.map_patch) == ("grown", 14)
    before, masks = rows_of(out), masks_of(out, rows_of(out))
    assert run("decide", out, "-q").exit_code == 0
    assert rows_of(out) == before  # maps read back into the model's frame: masks the same within a pixel or so
    assert all(m.any() == masks[k].any() and np.mean(m != masks[k]) < 0.02 for k, m in masks_of(out, before).items())
    assert run("decide", out, "--pixel-decision", "half-peak", "-q").exit_code == 0
    assert json.loads((out / "decision.json").read_text())["pixel"]["method"] == "half-peak"
    assert json.loads((out / "config.json").read_text())[PIXEL_DECISION] == "grown"  # the run's rule stays its own
    del config[MAP_PATCH], config[PIXEL_DECISION]  # a folder written before either existed
    (out / "config.json").write_text(json.dumps(config))
    assert read_saved_result(out).pixel_decision == "half-peak"
    snapshot = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    res = run("decide", out, "--pixel-decision", "grown")
    assert res.exit_code != 0 and "map_patch" in res.output and "Traceback" not in res.output
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == snapshot
    (out / "config.json").write_text(json.dumps({**config, PIXEL_DECISION: "otsu"}))  # edited by hand: no such rule
    snapshot = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    res = run("decide", out)
    assert res.exit_code != 0 and "pixel_decision 'otsu'" in res.output and "Traceback" not in res.output
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == snapshot


def test_masks_kept_to_their_strongest_region_are_named_in_the_summary_and_report(tmp_path, monkeypatch):
    """A flagged image whose `grown` region would cover more than its limit keeps its seed; decision.json lists those
    images as pixel.not_grown, and the summaries of `musc score` and `musc decide` and the report name them (from
    the decision, so a later decision without them does not repeat it)."""
    from functools import partial

    import musc.decision
    from musc.decision import mask_notes

    folder = tmp_path / "tall"
    folder.mkdir()
    for i in range(12):
        image = np.vstack([textured(600 + 2 * i, 112), textured(601 + 2 * i, 112)])[:, :84]
        Image.fromarray(planted(image) if i in (3, 8) else image).save(folder / f"t{i:02d}.png")
    monkeypatch.setattr(musc.decision, "grown_masks", partial(musc.decision.grown_masks, max_share=0.0))
    out = tmp_path / "out"
    verbose = [o for o in TINY if o != "-q"]
    res = run("score", folder, "--out", out, "--expected-defect-rate", "0.25", "--report", *verbose)
    assert res.exit_code == 0, res.output
    flagged = [r["name"] for r in rows_of(out) if r["decision"] == "defective"]
    pixel = json.loads((out / "decision.json").read_text())["pixel"]
    order = json.loads((out / "config.json").read_text())["input_order"]
    assert len(flagged) == 3 and sorted(order[i] for i in pixel["not_grown"]) == sorted(flagged)
    named = ", ".join(order[i] for i in pixel["not_grown"])
    note = f"the masks of 3 flagged images mark only the strongest region ({named})"
    assert f"Note: {note}" in res.output and "more than 0% of the image" in res.output
    assert note in (out / "report.html").read_text()
    assert not any("strongest region" in n for n in json.loads((out / "config.json").read_text())["notes"])
    res = run("decide", out, "--expected-defect-rate", "0.25")
    assert res.exit_code == 0 and f"Note: {note}" in res.output, res.output
    monkeypatch.undo()
    res = run("decide", out, "--expected-defect-rate", "0.25")
    assert res.exit_code == 0 and "mark only the strongest region" not in res.output, res.output
    assert json.loads((out / "decision.json").read_text())["pixel"]["not_grown"] == []
    assert "strongest region" not in (out / "report.html").read_text()
    names = [f"n{i}" for i in range(8)]
    assert mask_notes({"not_grown": list(range(7)), "max_share": 0.5}, names)[0].startswith(
        "the masks of 7 flagged images mark only the strongest region (n0, n1, n2, n3, n4 and 2 more): over more than "
        "50% of the image")
    assert mask_notes({"not_grown": [6], "max_share": 0.5}, names)[0].startswith(
        "the masks of 1 flagged image mark only the strongest region (n6)")
    assert "(image 10 in the batch's order)" in mask_notes({"not_grown": [9], "max_share": 0.5}, names)[0]
    assert mask_notes({"method": "half-peak"}, names) == mask_notes(None, names) == []
