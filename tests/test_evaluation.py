import csv
import json

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from musc import MuSc, MuScConfig
from musc.datasets import get_reader
from musc.evaluation import evaluate_category, mean_metrics, CategoryReport

from conftest import TINY_CLI as TINY, run_cli as run, MTD_ROOT
from synthetic_data import make_dataset


def test_evaluate_writes_tables_and_matches_sklearn(tmp_path):
    root = make_dataset("mvtec_ad", tmp_path / "data")
    out = tmp_path / "out"
    # musc: map maxima never tie; scale-max can tie at 1.0 in a tiny batch, and the CSV's 6 decimals then merge
    # re-scored values that differ in the last bits
    res = run("evaluate", "--dataset", "mvtec_ad", "--root", root, "--out", out, "--method", "musc", *TINY)
    assert res.exit_code == 0, res.output
    md = (out / "metrics.md").read_text()
    assert "| category | AUROC-cls | F1-max-cls | AP-cls | AUROC-segm | F1-max-segm | AP-segm | PRO-segm |" in md
    assert "| cat_a |" in md and "| cat_b |" in md and "**mean**" in md
    summary = json.loads((out / "metrics.json").read_text())
    assert [c["category"] for c in summary["categories"]] == ["cat_a", "cat_b"]
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert [r["category"] for r in rows] == ["cat_a", "cat_b", "mean"]
    for cat in summary["categories"]:
        scores = list(csv.DictReader(open(out / cat["category"] / "scores.csv")))
        y = [int(r["label"]) for r in scores]
        s = [float(r["score"]) for r in scores]
        assert cat["metrics"]["auroc_cls"] == pytest.approx(roc_auc_score(y, s), abs=1e-5)
        assert cat["metrics"]["ap_cls"] == pytest.approx(average_precision_score(y, s), abs=1e-5)
        assert {r["defect_type"] for r in scores} == {"good", "scratch"}
        assert all(v is not None for v in cat["metrics"].values())
    mean_auroc = np.mean([c["metrics"]["auroc_segm"] for c in summary["categories"]])
    assert summary["mean"]["auroc_segm"] == pytest.approx(mean_auroc)
    assert summary["config"]["backbone"] == "test_tiny_dino"


def test_evaluate_is_resumable(tmp_path):
    root = make_dataset("btad", tmp_path / "data")
    out = tmp_path / "out"
    assert run("evaluate", "--dataset", "btad", "--root", root, "--out", out, "--category", "01", *TINY).exit_code == 0
    first = (out / "01" / "metrics.json").stat().st_mtime_ns
    res = run("evaluate", "--dataset", "btad", "--root", root, "--out", out, *TINY[:-1])
    assert res.exit_code == 0 and "01: 7 images, 2 anomalous (existing result)" in res.output
    assert (out / "01" / "metrics.json").stat().st_mtime_ns == first
    assert (out / "02" / "metrics.json").is_file()
    assert [c["category"] for c in json.loads((out / "metrics.json").read_text())["categories"]] == ["01", "02"]
    assert run("evaluate", "--dataset", "btad", "--root", root, "--out", out, "--category", "01", "--overwrite",
               *TINY).exit_code == 0
    assert (out / "01" / "metrics.json").stat().st_mtime_ns != first


@pytest.mark.parametrize("layout", ["visa", "mvtec_3d", "mvtec_loco", "mtd", "ksdd", "folder", "mpdd", "mvtec_ad2"])
def test_evaluate_every_layout(layout, tmp_path):
    root = make_dataset(layout, tmp_path / "data")
    out = tmp_path / "out"
    res = run("evaluate", "--dataset", layout, "--root", root, "--out", out, "--save-maps", "--save-images", *TINY)
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "metrics.json").read_text())
    first = summary["categories"][0]
    assert all(first["metrics"][k] is not None for k in first["metrics"])
    assert list((out / first["category"] / "maps").glob("*.npy"))


def test_metrics_at_original_size(tmp_path):
    root = make_dataset("folder", tmp_path / "data")
    out = tmp_path / "out"
    res = run("evaluate", "--dataset", "folder", "--root", root, "--out", out, "--metrics-size", "original", *TINY)
    assert res.exit_code == 0, res.output
    assert json.loads((out / "metrics.json").read_text())["metrics_size"] == "original"


def test_undefined_metrics_are_reported_not_zero(tmp_path):
    import shutil

    root = make_dataset("mvtec_ad", tmp_path / "data")
    shutil.rmtree(root / "cat_a" / "test" / "scratch")
    out = tmp_path / "out"
    res = run("evaluate", "--dataset", "mvtec_ad", "--root", root, "--out", out, *TINY[:-1])
    assert res.exit_code == 0, res.output
    assert "no anomalous test image" in res.output
    cat_a = json.loads((out / "cat_a" / "metrics.json").read_text())["metrics"]
    assert cat_a["auroc_cls"] is None and cat_a["pro_segm"] is None and cat_a["f1_max_cls"] is None
    assert "| cat_a | n/a | n/a | n/a | n/a | n/a | n/a | n/a |" in (out / "metrics.md").read_text()
    rows = {r["category"]: r for r in csv.DictReader(open(out / "metrics.csv"))}
    assert rows["cat_a"]["auroc_cls"] == "" and rows["mean"]["auroc_cls"] == rows["cat_b"]["auroc_cls"]


def test_bad_evaluate_input(tmp_path):
    root = make_dataset("mvtec_ad", tmp_path / "data")
    out = tmp_path / "out"
    res = run("evaluate", "--dataset", "mvtec_ad", "--root", root, "--out", out, "--category", "nope", *TINY)
    assert res.exit_code != 0 and "unknown categories nope" in res.output
    res = run("evaluate", "--dataset", "mvtec_ad", "--root", tmp_path / "missing", "--out", out, *TINY)
    assert res.exit_code != 0 and "root not found" in res.output
    (tmp_path / "empty").mkdir()
    res = run("evaluate", "--dataset", "mvtec_ad2", "--root", tmp_path / "empty", "--out", out, *TINY)
    assert res.exit_code != 0 and "mvtec_ad2: no category found" in res.output and not out.exists()
    (root / "cat_a" / "ground_truth" / "scratch" / "000_mask.png").unlink()
    res = run("evaluate", "--dataset", "mvtec_ad", "--root", root, "--out", out, *TINY)
    assert res.exit_code != 0 and "have no mask" in res.output and "Traceback" not in res.output
    assert not (out / "metrics.json").exists()


def test_labels_never_reach_the_model(tmp_path, monkeypatch):
    """Scoring sees only paths; shuffling labels changes metrics but not scores."""
    root = make_dataset("mvtec_ad", tmp_path / "data")
    category = get_reader("mvtec_ad").load(root, "cat_a")
    seen = []
    real = MuSc.score

    def spy(self, images, **kw):
        seen.append(list(images))
        return real(self, images, **kw)

    monkeypatch.setattr(MuSc, "score", spy)
    model = MuSc(MuScConfig(backbone="test_tiny_dino", image_size=56, pretrained=False, device="cpu"))
    result, report = evaluate_category(model, category, progress=False)
    assert seen == [[s.path for s in category.samples]]
    assert report.timings["metrics"] >= 0 and report.num_anomalous == 2


def test_mean_skips_undefined():
    a = CategoryReport("a", {"auroc_cls": 0.5, "f1_max_cls": None}, 3, 1)
    b = CategoryReport("b", {"auroc_cls": 1.0, "f1_max_cls": None}, 3, 1)
    m = mean_metrics([a, b])
    assert m["auroc_cls"] == 0.75 and m["f1_max_cls"] is None


@pytest.mark.skipif(not MTD_ROOT.is_dir(), reason="../shared/datasets/mtd is not present")
def test_real_mtd_subset_end_to_end(tmp_path):
    """A few real MTD images (random-init tiny backbone, so only the plumbing is judged), original-size masks."""
    import shutil

    data = tmp_path / "mtd"
    for folder, count in (("MT_Free", 6), ("MT_Crack", 2), ("MT_Blowhole", 2)):
        (data / folder / "Imgs").mkdir(parents=True)
        for jpg in sorted((MTD_ROOT / folder / "Imgs").glob("*.jpg"))[:count]:
            shutil.copy(jpg, data / folder / "Imgs")
            shutil.copy(jpg.with_suffix(".png"), data / folder / "Imgs")
    out = tmp_path / "out"
    res = run("evaluate", "--dataset", "mtd", "--root", data, "--out", out, "--metrics-size", "original", *TINY)
    assert res.exit_code == 0, res.output
    m = json.loads((out / "magnetic_tile" / "metrics.json").read_text())["metrics"]
    assert all(0.0 <= v <= 1.0 for v in m.values())
