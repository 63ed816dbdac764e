"""How the few-shot references' null holds its level over many draws of references.

Few-shot MuSc without subsets scores every image against all the others, the references and the test images alike
(`musc.bank.few_shot_null`; the tests check that it equals the zero-shot scoring of their union). So one zero-shot
scoring of a pool serves every split of it into K references and the rest: the references' evidence is the null
of `--decision reference`, the rest is decided against it. This reads --draws random splits per pool and K, where
`bench_reference_decision.py` scores a few splits in full (with `balanced` beside it).

Pools: the MTD defect types of the random draws (`bench_draws.py`: 160 normal and 40 defective images, 37 for
crack; the normal images are the same in every pool) and KolektorSDD (200 images, 25 defective; tiled as the
default preset tiles it, in one batch: few-shot runs use no tile subsets). The normal images alone are scored once
more per data set: an all-normal batch, where every flag is a false alarm. Nulls: `t`, the shipped one
(`musc.decision.reference_null`: the predictive Student t of the references' evidence), and `log-t`, the same on
the evidence's logarithm (a right-skewed null; not shipped, compared here).

Usage: python benchmarks/bench_reference_draws.py [--size 224] [--refs 10,20] [--draws 40] [--level 0.05]
       [--sets blowhole,break,crack,uneven,ksdd] [--seed 0] [--no-write]
"""

from __future__ import annotations

import argparse
import time
from typing import Callable

import numpy as np

from bench_accuracy import samples
from bench_draws import pooled_category
from common import publish

from musc import MuSc, MuScConfig
from musc.bank import reference_features
from musc.config import DEFAULT_METHOD
from musc.decision import reference_null


def log_t_threshold(evidence: np.ndarray, level: float) -> float:
    """The `t` null's threshold on log evidence, mapped back."""
    return float(np.exp(reference_null(np.log(evidence)).quantile_of_tail(level)))


NULLS: dict[str, Callable[[np.ndarray, float], float]] = {
    "t": lambda evidence, level: reference_null(evidence).quantile_of_tail(level),
    "log-t": log_t_threshold,
}


def pool_evidence(model: MuSc, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A pool's labels, every image's evidence scored against all the others, and the normal images' evidence
    scored among themselves."""
    if name == "ksdd":
        chosen = sorted(samples("ksdd"), key=lambda s: str(s.path))
        paths = [s.path for s in chosen]
        labels = np.array([bool(s.label) for s in chosen])
        features = reference_features(model, paths, paths, progress=False)  # cut on the pool's own plan
    else:
        _, _, labels, features = pooled_category(model, name)
    normal = np.flatnonzero(~labels).tolist()
    every = model.score_features(features, progress=False).decision_evidence()
    alone = model.score_features(features.subset(normal), progress=False).decision_evidence()
    return labels, np.asarray(every, dtype=np.float64), np.asarray(alone, dtype=np.float64)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--refs", default="10,20")
    ap.add_argument("--draws", type=int, default=40)
    ap.add_argument("--level", type=float, default=0.05)
    ap.add_argument("--sets", default="blowhole,break,crack,uneven,ksdd")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    config = MuScConfig.for_method(DEFAULT_METHOD, backbone="dinov2_vits14", image_size=args.size, device="cpu")
    model = MuSc(config.replace(tile_subsets=False))  # few-shot runs score tiles in one batch
    counts = [int(k) for k in args.refs.split(",")]
    rows: list[str] = []
    normal_rows: list[str] = []
    for name in args.sets.split(","):
        t0 = time.perf_counter()
        labels, every, alone = pool_evidence(model, name)
        normal = np.flatnonzero(~labels)
        batch = name if name == "ksdd" else f"mtd-{name}"
        first_mtd = name != "ksdd" and not any("(mtd)" in row for row in normal_rows)
        for k in counts:
            rng = np.random.default_rng(args.seed)
            stats: dict[str, list[tuple[float, float, float]]] = {n: [] for n in NULLS}
            for _ in range(args.draws):
                refs = np.sort(rng.choice(normal, k, replace=False))
                rest = np.setdiff1d(np.arange(labels.size), refs)
                lab = labels[rest]
                own = np.searchsorted(normal, refs)  # the references among the normal images scored alone
                others = np.setdiff1d(np.arange(normal.size), own)
                for null, threshold in NULLS.items():
                    flagged = every[rest] >= threshold(every[refs], args.level)
                    alone_flagged = alone[others] >= threshold(alone[own], args.level)
                    stats[null].append((100 * flagged[~lab].mean(), 100 * flagged[lab].mean(),
                                        100 * alone_flagged.mean()))
            for null, values in stats.items():
                v = np.array(values)
                rows.append(f"| {batch} | {k} | {null} | {v[:, 0].mean():.1f} | {np.percentile(v[:, 0], 90):.1f} | "
                            f"{v[:, 1].mean():.1f} |")
                print(rows[-1], flush=True)
                if name == "ksdd" or first_mtd:  # the MTD pools share their normal images
                    what = f"{normal.size - k} normal ({'ksdd' if name == 'ksdd' else 'mtd'})"
                    normal_rows.append(f"| {what} | {k} | {null} | {v[:, 2].mean():.1f} | "
                                       f"{np.percentile(v[:, 2], 90):.1f} |")
                    print(normal_rows[-1], flush=True)
        print(f"{batch}: {time.perf_counter() - t0:.0f} s", flush=True)
    publish("reference-draws", [
        f"## Few-shot references' null over {args.draws} draws of references (level {args.level:g})", "",
        f"`python benchmarks/bench_reference_draws.py --size {args.size} --refs {args.refs} --draws {args.draws} "
        f"--level {args.level:g} --sets {args.sets}` — dinov2_vits14 at {args.size}, the default preset, few-shot "
        "without subsets (tiled KolektorSDD in one batch), which scores every image against all the others: one "
        "zero-shot scoring of each pool serves every split into K references and the rest. Per pool (MTD: 160 normal "
        "and 40 defective images, 37 for crack; ksdd: 175 normal and 25 defective), "
        f"{args.draws} random draws (seed {args.seed}) of K normal images as the references; the rest decided "
        "against their null. `t`: the shipped null (`--decision reference`); `log-t`: the same on the log evidence "
        "(not shipped). Normal flagged: the share of the rest's normal images flagged, mean and 90th percentile "
        "over the draws (the level says how many it should be); defects found: the share of the defective ones.", "",
        "| pool | K | null | normal flagged % | 90th pct % | defects found % |",
        "|---|---:|---|---:|---:|---:|", *rows, "",
        "The normal images alone, an all-normal batch (every flag a false alarm):", "",
        "| batch | K | null | flagged % (mean) | 90th pct % |",
        "|---|---:|---|---:|---:|", *normal_rows], not args.no_write)


if __name__ == "__main__":
    main()
