"""A bank's decision for images one at a time: how many normal images it flags, how many defects it finds.

For each MTD defect type of the random draws (`bench_draws.py`'s pools: the accuracy panel's two draws pooled, 160
normal and 40 defective images, 37 for crack), --banks times: K normal images drawn at random form a bank
(`musc.bank.Bank`, with the references' leave-one-out evidence that `build_bank` computes), every other image of
the pool is scored against it with MuSc+ (the default preset, `--mode musc+`, as `musc score --bank` does) and
decided on its own against the bank's null (`musc.decision.decide_against_references`, at --level). Reported: the
share of the normal images flagged (the level says how many it should be), the share of the defective ones found,
image F1 at the decision as a share of F1-max (the oracle threshold on the same scores), AUROC-cls, and the time the
bank's null takes to build.

Usage: python benchmarks/bench_bank_decision.py [--size 224] [--refs 10,20,50] [--banks 5] [--level 0.05]
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
from musc.bank import Bank, leave_one_out, run_settings
from musc.config import DEFAULT_METHOD
from musc.decision import decide_against_references
from musc.metrics import auroc, f1_max


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--refs", default="10,20,50")
    ap.add_argument("--banks", type=int, default=5)
    ap.add_argument("--level", type=float, default=0.05)
    ap.add_argument("--categories", default=",".join(CATEGORIES))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    model = MuSc(MuScConfig.for_method(DEFAULT_METHOD, backbone="dinov2_vits14", image_size=args.size, device="cpu",
                                       mode="musc+"))
    counts = [int(k) for k in args.refs.split(",")]
    rows = []
    for category in args.categories.split(","):
        t0 = time.perf_counter()
        chosen, paths, labels, pooled = pooled_category(model, category)
        rng = np.random.default_rng(args.seed)
        for k in counts:
            normal_flagged, found, shares, aurocs, null_times = [], [], [], [], []
            for _ in range(args.banks):
                refs = np.sort(rng.choice(np.flatnonzero(~labels), k, replace=False))
                test = np.setdiff1d(np.arange(labels.size), refs)
                features = pooled.subset(torch.as_tensor(refs))
                t_null = time.perf_counter()
                held = leave_one_out(model, features, progress=False)
                null_times.append(time.perf_counter() - t_null)
                bank = Bank(features, run_settings(model), [str(paths[i]) for i in refs], *held)
                result = model.score_features(pooled.subset(torch.as_tensor(test)), progress=False,
                                              references=bank.features)
                decided = decide_against_references(result.maps, bank.reference_null, args.level,
                                                    evidence=result.evidence)
                flagged, lab = decided.image.defective, labels[test]
                normal_flagged.append(100 * flagged[~lab].mean())
                found.append(100 * flagged[lab].mean())
                shares.append(100 * f1(flagged, lab) / f1_max(lab, result.scores))
                aurocs.append(100 * auroc(lab, result.scores))
            rows.append(f"| mtd-{category} | {k} | {np.mean(normal_flagged):.1f} | {np.mean(found):.1f} | "
                        f"{np.mean(shares):.1f} | {np.mean(aurocs):.1f} | {np.mean(null_times):.2f} |")
            print(rows[-1], f"({time.perf_counter() - t0:.0f} s)", flush=True)
        print(f"mtd-{category}: {time.perf_counter() - t0:.0f} s", flush=True)
    publish("bank-decision", [
        f"## A bank's decision for images one at a time (MuSc+, level {args.level:g})", "",
        f"`python benchmarks/bench_bank_decision.py --size {args.size} --refs {args.refs} --banks {args.banks} "
        f"--level {args.level:g}` — dinov2_vits14 at {args.size}, the default preset with `--mode musc+`. Per defect "
        f"type, the random draws' pool (160 normal and 40 defective MTD images; 37 for crack); {args.banks} banks of K "
        "normal images drawn at random (seed "
        f"{args.seed}), every other image of the pool scored against the bank and decided on its own against the "
        "bank's null (its references' leave-one-out evidence; `decide_against_references`). Normal flagged: the share "
        f"of the normal images flagged (the level is {args.level:g}); defects found: the share of the defective ones "
        "flagged; image share: F1 at the decision as a share of F1-max on the same scores; null s: the time to score "
        "each reference against the others (`leave_one_out`, what `build_bank` adds to the extraction); means over "
        "the banks.", "",
        "| category | K | normal flagged % | defects found % | image share % | AUROC-cls | null s |",
        "|---|---:|---:|---:|---:|---:|---:|", *rows], not args.no_write)


if __name__ == "__main__":
    main()
