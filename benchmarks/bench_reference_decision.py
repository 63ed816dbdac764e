"""Few-shot MuSc decided against its references (`--reference DIR --decision reference`) or by the batch (`balanced`).

For each MTD defect type of the random draws (`bench_draws.py`'s pools: the accuracy panel's two draws pooled, 160
normal and 40 defective images, 37 for crack), --draws times: K normal images drawn at random are the references,
and the rest of the pool (160 - K normal and the defective ones) is scored with few-shot MuSc (the default preset,
mode 'musc', as `musc score --reference` does). The same scores are decided two ways at --level: against the
references' null (`musc.bank.few_shot_reference_null`: each reference scored as the test images are, against the
others and the test images; `decide_against_references`), and by the batch alone (`balanced`, the default of `musc
score`).
The normal images of the rest, without the defective ones, are then scored and decided the same way: an all-normal
batch, where every flag is a false alarm (the pools share their normal images, so this is done once per draw).

Reported: the share of the normal images flagged, the share of the defective ones found, and image F1 at the
decision as a share of F1-max on the same scores (the oracle).

Usage: python benchmarks/bench_reference_decision.py [--size 224] [--refs 20] [--draws 3] [--level 0.05]
       [--categories blowhole,...] [--seed 0] [--no-write]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from bench_decision import f1
from bench_draws import CATEGORIES, pooled_category
from common import publish

from musc import MuSc, MuScConfig
from musc.config import DEFAULT_METHOD
from musc.bank import few_shot_reference_null
from musc.decision import decide, decide_against_references
from musc.metrics import f1_max
from musc.types import Features


def decisions(model: MuSc, test: Features, refs: Features, level: float) -> dict[str, np.ndarray]:
    """`test` scored few-shot against `refs`, decided against the references' null and by `balanced`: the flags of
    each, and the scores (`musc.bank.few_shot_scores` on features already extracted)."""
    result = model.score_features(test, progress=False, references=refs)
    null = few_shot_reference_null(model, refs, test, progress=False)  # each reference against all the others
    against = decide_against_references(result.maps, null, level, evidence=result.evidence)
    balanced = decide(result.scores, result.maps, "balanced", fdr=level, evidence=result.evidence,
                      relative_evidence=result.relative_evidence)
    return {"reference": against.image.defective, "balanced": balanced.image.defective, "scores": result.scores}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--refs", default="20")
    ap.add_argument("--draws", type=int, default=3)
    ap.add_argument("--level", type=float, default=0.05)
    ap.add_argument("--categories", default=",".join(CATEGORIES))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    model = MuSc(MuScConfig.for_method(DEFAULT_METHOD, backbone="dinov2_vits14", image_size=args.size, device="cpu"))
    counts = [int(k) for k in args.refs.split(",")]
    rows: list[str] = []
    normal_rows: list[str] = []
    for ci, category in enumerate(args.categories.split(",")):
        t0 = time.perf_counter()
        _, _, labels, pooled = pooled_category(model, category)
        rng = np.random.default_rng(args.seed)
        for k in counts:
            stats: dict[str, list[tuple[float, float, float]]] = {"reference": [], "balanced": []}
            all_normal: dict[str, list[float]] = {"reference": [], "balanced": []}
            for _ in range(args.draws):
                refs = np.sort(rng.choice(np.flatnonzero(~labels), k, replace=False))
                test = np.setdiff1d(np.arange(labels.size), refs)
                ref_features = pooled.subset(torch.as_tensor(refs))
                got = decisions(model, pooled.subset(torch.as_tensor(test)), ref_features, args.level)
                lab = labels[test]
                oracle = f1_max(lab, got["scores"])
                for method in stats:
                    flagged = got[method]
                    stats[method].append((100 * flagged[~lab].mean(), 100 * flagged[lab].mean(),
                                          100 * f1(flagged, lab) / oracle))
                if ci == 0:  # the normal images are the same in every pool
                    normal = test[~lab]
                    alone = decisions(model, pooled.subset(torch.as_tensor(normal)), ref_features, args.level)
                    for method in all_normal:
                        all_normal[method].append(100 * alone[method].mean())
            for method, values in stats.items():
                mean = np.mean(values, axis=0)
                rows.append(f"| mtd-{category} | {k} | {method} | {mean[0]:.1f} | {mean[1]:.1f} | {mean[2]:.1f} |")
                print(rows[-1], f"({time.perf_counter() - t0:.0f} s)", flush=True)
            if ci == 0:
                for method, values in all_normal.items():
                    normal_rows.append(f"| {160 - k} normal | {k} | {method} | {np.mean(values):.1f} | "
                                       f"{max(values):.1f} |")
                    print(normal_rows[-1], flush=True)
        print(f"mtd-{category}: {time.perf_counter() - t0:.0f} s", flush=True)
    publish("reference-decision", [
        f"## Few-shot MuSc decided against its references or by the batch (level {args.level:g})", "",
        f"`python benchmarks/bench_reference_decision.py --size {args.size} --refs {args.refs} --draws {args.draws} "
        f"--level {args.level:g}` — dinov2_vits14 at {args.size}, the default preset, few-shot (`musc score "
        "--reference`). Per defect type, the random draws' pool (160 normal and 40 defective MTD images; 37 for "
        f"crack); {args.draws} random draws (seed {args.seed}) of K normal images as the references, the rest of the "
        "pool scored few-shot against them and decided on the same scores against the references' null "
        "(`--decision reference`: each reference scored as the test images are; `decide_against_references`) and by "
        f"the batch alone (`balanced`, the default). Normal flagged: the share of the normal images flagged (the "
        f"level is {args.level:g}); defects found: the share of the defective ones flagged; image share: F1 at the "
        "decision as a share of F1-max on the same scores; means over the draws.", "",
        "| batch | K | decision | normal flagged % | defects found % | image share % |",
        "|---|---:|---|---:|---:|---:|", *rows, "",
        "The normal images of the rest alone, an all-normal batch (every flag a false alarm; the same normal images in "
        "every pool):", "",
        "| batch | K | decision | flagged % (mean) | flagged % (worst draw) |",
        "|---|---:|---|---:|---:|", *normal_rows], not args.no_write)


if __name__ == "__main__":
    main()
