"""The report: decisions and files from `musc score --report`, and the page in a real headless browser."""

import csv
import json
import re
import shutil
import subprocess

import pytest


from conftest import TINY_CLI as TINY, run_cli as run

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
needs_browser = pytest.mark.skipif(CHROMIUM is None, reason="no chromium installed (apt-get install chromium)")


def browse(url: str, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr",
                           "--v=0", "--window-size=1400,3000", "--virtual-time-budget=8000", *extra, url],
                          capture_output=True, text=True, timeout=180)


def console_errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines()
            if "CONSOLE" in line and re.search(r"error|uncaught|failed", line, re.I)]


@pytest.fixture
def scored(image_folder, tmp_path):
    out = tmp_path / "out"
    res = run("score", image_folder, "--out", out, "--report", "--decision", "gmm", *TINY)
    assert res.exit_code == 0, res.output
    return out


def test_score_writes_decisions_masks_and_report(scored):
    rows = list(csv.DictReader(open(scored / "scores.csv")))
    assert {r["decision"] for r in rows} <= {"normal", "defective"}
    decision = json.loads((scored / "decision.json").read_text())
    assert decision["image"]["method"] == "gmm" and decision["image"]["total"] == 7
    assert decision["image"]["defective"] == sum(r["decision"] == "defective" for r in rows)
    pixel = decision["pixel"]
    assert pixel["method"] == "half-peak" and pixel["fraction"] == 0.5  # the default mask rule
    assert len(pixel["thresholds"]) == decision["image"]["defective"]  # one per flagged image
    assert len(list((scored / "masks").glob("*.png"))) == 7
    page = (scored / "report.html").read_text()
    assert not re.search(r'(src|href)="https?:', page)
    assert page.count('class="card ') == 7 and 'loading="lazy"' in page and "threshold" in page
    assert len(list((scored / "thumbs").glob("*.jpg"))) == 7
    assert "q_value" not in rows[0] and "q-value" not in page  # gmm thresholds the scores: no tail probabilities


def test_undecided_batch_is_reported_as_such(image_folder, tmp_path):
    out = tmp_path / "balanced"
    res = run("score", image_folder, "--out", out, "--report", *TINY)  # balanced, the default, needs 10 images
    assert res.exit_code == 0, res.output
    assert {r["decision"] for r in csv.DictReader(open(out / "scores.csv"))} == {"undecided"}
    image = json.loads((out / "decision.json").read_text())["image"]
    assert image["method"] == "balanced" and image["undecided"] and image["threshold"] is None
    assert "<b>undecided</b>" in (out / "report.html").read_text()
    assert "q_value" not in next(csv.DictReader(open(out / "scores.csv")))  # no q-values from a batch not decided


@pytest.mark.parametrize("method", ["balanced", "fdr"])
def test_map_methods_decide_a_larger_batch_and_report_the_rate(tmp_path, method, caplog):
    import logging

    from PIL import Image

    from conftest import planted, textured

    folder = tmp_path / "batch"
    folder.mkdir()
    for i in range(14):
        Image.fromarray(textured(220 + i)).save(folder / f"n{i:02d}.png")
    Image.fromarray(planted(textured(300))).save(folder / "odd.png")
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING, logger="musc"):
        res = run("score", folder, "--out", out, "--report", "--decision", method, *TINY[:-1])
    assert res.exit_code == 0, res.output
    warnings = json.loads((out / "decision.json").read_text())["image"]["warnings"]
    assert warnings  # this batch (random weights, the same every run) gets one: it is checked below
    for warning in warnings:  # said once: in the summary, not also in the log
        assert res.output.count(warning) == 1
        assert not any(warning in r.getMessage() for r in caplog.records)
    assert "Estimated defect rate:" in res.output
    defective_line = next(line for line in res.output.splitlines() if line.startswith("Defective:"))
    assert "defect rate" not in defective_line  # on its own line, not repeated in the decision's detail
    image = json.loads((out / "decision.json").read_text())["image"]
    assert image["method"] == method and not image["undecided"]
    assert 0 <= image["defect_rate"]["low"] <= image["defect_rate"]["estimate"] <= image["defect_rate"]["high"] <= 1
    rows = list(csv.DictReader(open(out / "scores.csv")))
    assert {r["decision"] for r in rows} <= {"normal", "defective"}
    flagged = {r["name"] for r in rows if r["decision"] == "defective"}
    from PIL import Image as PILImage
    import numpy as np

    with_mask = {r["name"] for r in rows if np.asarray(PILImage.open(out / r["mask"])).any()}
    assert flagged == with_mask
    assert flagged  # the planted image at least
    if method == "balanced":  # how many from the maps; which ones: the top of the ranking, in the score's units
        assert image["threshold_on"] == "score" and f"threshold {image['threshold']:.4f} on the scores:" in res.output
        assert flagged == {r["name"] for r in rows if int(r["rank"]) <= len(flagged)}
        assert flagged == {r["name"] for r in rows if float(r["score"]) >= round(image["threshold"], 6)}
    else:  # in the map_max column's units (raw_score is the default preset's scale-max score)
        assert image["threshold_on"] == "map_max"
        assert f"threshold {image['threshold']:.4f} on the map maxima:" in res.output
        assert flagged == {r["name"] for r in rows if float(r["map_max"]) >= round(image["threshold"], 6)}
    page = (out / "report.html").read_text()
    assert "estimated defect rate" in page
    q = {r["name"]: float(r["q_value"]) for r in rows}  # each image's q-value, next to its tail probability
    assert all(0 <= float(r["tail_probability"]) <= q[r["name"]] <= 1 for r in rows)
    assert len(flagged) >= sum(v <= 0.05 for v in q.values())  # --fdr's discoveries: balanced flags at least as many
    if method == "fdr":
        assert flagged == {name for name, v in q.items() if v <= 0.05}
    assert page.count("q-value: the smallest false-discovery rate") == len(rows)
    caplog.clear()  # with --quiet there is no summary: the log says the warnings
    with caplog.at_level(logging.WARNING, logger="musc"):
        res = run("score", folder, "--out", out, "--decision", method, "--quiet", *TINY[:-1])
    assert res.exit_code == 0, res.output
    assert [r.getMessage() for r in caplog.records if r.getMessage() in warnings] == warnings


def test_decision_options(image_folder, tmp_path):
    out = tmp_path / "o"
    res = run("score", image_folder, "--out", out, *TINY[:-1], "--expected-defect-rate", "0.3", "--no-images")
    assert res.exit_code == 0, res.output
    assert "Defective: 2 of 7 (rate" in res.output
    res = run("score", image_folder, "--out", out, *TINY, "--threshold", "2.0", "--pixel-decision", "mebin")
    assert res.exit_code == 0
    decision = json.loads((out / "decision.json").read_text())
    assert decision["image"]["method"] == "fixed" and decision["pixel"]["method"] == "mebin"
    res = run("score", image_folder, "--out", out, *TINY, "--decision", "rate")
    assert res.exit_code != 0 and "--expected-defect-rate" in res.output


def test_report_command_on_existing_result(scored):
    (scored / "report.html").unlink()
    res = run("report", scored)
    assert res.exit_code == 0 and (scored / "report.html").is_file()
    res = run("report", scored.parent / "nothing")
    assert res.exit_code != 0 and "not a musc result folder" in res.output


@needs_browser
def test_harness_catches_console_errors(tmp_path):
    bad = tmp_path / "bad.html"
    bad.write_text("<html><body><script>throw new Error('boom')</script></body></html>")
    proc = browse(bad.as_uri(), "--dump-dom")
    assert console_errors(proc.stderr), proc.stderr[-2000:]


@needs_browser
def test_report_renders_in_headless_browser(scored):
    url = (scored / "report.html").as_uri()
    proc = browse(url, "--dump-dom")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert console_errors(proc.stderr) == []
    rendered = re.search(r'data-thumbs-rendered="(\d+)/(\d+)"', proc.stdout)
    assert rendered and rendered.group(1) == rendered.group(2) == "7", proc.stdout[:500]
    shot = scored / "report.png"
    proc = browse(url, f"--screenshot={shot}")
    assert shot.is_file() and shot.stat().st_size > 5000


def test_tiled_batch_decision_is_on_the_evidence_column(tmp_path):
    """A tiled batch's map-based decision tests the evidence column (its finest view's map maxima): fdr's threshold
    is in that column's units, the summary names it, and the report draws it."""
    import numpy as np
    from PIL import Image

    from conftest import planted, textured

    folder = tmp_path / "tall"
    folder.mkdir()
    for i in range(14):
        Image.fromarray(np.vstack([textured(400 + i), textured(500 + i), textured(600 + i)])).save(folder / f"n{i:02d}.png")
    Image.fromarray(np.vstack([textured(700), planted(textured(701)), textured(702)])).save(folder / "odd.png")
    out = tmp_path / "out"
    res = run("score", folder, "--out", out, "--report", "--decision", "fdr", "--tile-map-rule", "mean", *TINY[:-1])
    assert res.exit_code == 0, res.output  # maps over every view: their maxima differ from the finest view's evidence
    assert "tiles of 56 px per image" in res.output
    image = json.loads((out / "decision.json").read_text())["image"]
    rows = list(csv.DictReader(open(out / "scores.csv")))
    assert image["threshold_on"] == "evidence" and any(r["evidence"] != r["map_max"] for r in rows)
    if not image["undecided"]:
        assert f"threshold {image['threshold']:.4f} on the evidence column:" in res.output
        flagged = {r["name"] for r in rows if r["decision"] == "defective"}
        if flagged:  # with none flagged the threshold sits just above the highest evidence
            assert flagged == {r["name"] for r in rows if float(r["evidence"]) >= round(image["threshold"], 6)}
        else:
            assert image["defective"] == 0 and image["threshold"] > max(float(r["evidence"]) for r in rows) - 1e-6
    assert "flagged defective by <b>fdr</b>" in (out / "report.html").read_text()
