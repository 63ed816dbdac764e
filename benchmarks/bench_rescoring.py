"""What re-scoring (RsCIN) adds on each data set, and why: image AUROC before and after it, and how often a
defective image's nearest images (by the embedding RsCIN smooths over) are defective too.

RsCIN replaces each image's score by a similarity-weighted mean over its k most similar images (k = 1, 2, 3). That
helps when a defective image's look-alikes are defective too, and only adds the normal neighbours' scores when
they are not. This prints, per data set and with the preset's own scores and embeddings (the class token; with
tiles, the mean over the image's tiles): AUROC-cls of the image scores before re-scoring and after it, and among
each defective image's 3 nearest other images the share that is defective, next to the share of defective images
in the batch (what chance gives). Labels are used only for these numbers.

Data sets: bench_accuracy.py's (../shared/datasets), dinov2_vits14 with the imported weights at --size.

With the default's `tile_rescoring` 'none' its tiled sets (ksdd, mtd-tall, mtd-wide) are not re-scored; --method
musc-scales-tiles+tilerscin (a bench_accuracy.py variant) re-scores them with RsCIN as whole images are.

--draws K: instead, K random batches per data set (--share of its normal images and the same share of its
defective ones; labels only pick the draw and score the result), so one batch's luck is told from the rule: the mean
AUROC-cls before and after re-scoring over the draws, and how many draws it moves by more than a point either way.

Usage: python benchmarks/bench_rescoring.py [--size 224] [--method musc-scales-tiles+tilerscin] [--datasets ...]
       [--draws K [--share 0.5] [--seed 0]] [--no-write]
"""

from __future__ import annotations

import argparse

import numpy as np

from bench_accuracy import DATASETS, ELONGATED, HELD_OUT, samples, variant_settings
from common import publish

from musc import MuSc, MuScConfig
from musc.config import DEFAULT_METHOD
from musc.metrics import auroc, auroc_difference
from musc.rescoring import cosine_similarity


WHOLE_TEXT = ("AUROC-cls of the image scores before re-scoring (`raw_score`) and after it (`score`), the difference "
              "with its 90 % paired bootstrap interval, and among each defective image's 3 most similar other images "
              "(RsCIN's embedding) the share that is defective, next to the batch's share of defective images (chance).")
WHOLE_COLUMNS = ["data set", "images", "before", "after", "difference:", "defective neighbours", "chance"]
DRAWS_TEXT = ("Each draw scores {share:.0%} of a data set's normal images and the same share of its defective ones, "
              "drawn at random; AUROC-cls of the image scores before re-scoring and after it, mean ± standard deviation "
              "over the draws, the mean difference, and the draws where re-scoring moves AUROC-cls by more than a "
              "point down / up.")
DRAWS_COLUMNS = ["data set", "draws", "images per draw", "before", "after", "mean difference", "worse / better by > 1:"]
"""The two tables' descriptions and columns (a column named 'x:' is left-aligned, `section_head`)."""


def defective_neighbours(embeddings: np.ndarray, labels: np.ndarray, k: int = 3) -> float:
    """Among each defective image's k most similar other images (cosine of the embeddings), the share that is
    defective, averaged over the defective images."""
    similarity = cosine_similarity(embeddings)
    np.fill_diagonal(similarity, -np.inf)
    nearest = np.argsort(-similarity, axis=1, kind="stable")[:, :k]
    return float(labels[nearest[labels]].mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--method", default=DEFAULT_METHOD)
    ap.add_argument("--datasets", default=",".join((*DATASETS, *HELD_OUT, *ELONGATED)))
    ap.add_argument("--draws", type=int, default=0)
    ap.add_argument("--share", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    method, settings = variant_settings(args.method)  # a preset, optionally with bench_accuracy's variant options
    model = MuSc(MuScConfig.for_method(method, backbone="dinov2_vits14", image_size=args.size, device="cpu",
                                       **settings))
    if args.draws:
        draws(model, args)
        return
    lines = section_head(f"Re-scoring: what RsCIN adds, and why ({args.method})", args, "", WHOLE_TEXT, WHOLE_COLUMNS)
    for name in args.datasets.split(","):
        chosen, labels = labelled(name)
        result = model.score([s.path for s in chosen], progress=False)
        d = auroc_difference(labels, result.scores, result.raw_scores)
        before, after = auroc(labels, result.raw_scores), auroc(labels, result.scores)
        lines.append(f"| {name} | {len(labels)} | {100 * before:.1f} | {100 * after:.1f} | {100 * d.delta:+.1f} "
                     f"[{100 * d.low:+.1f}, {100 * d.high:+.1f}] | "
                     f"{100 * defective_neighbours(result.embeddings, labels):.0f} % | {100 * labels.mean():.0f} % |")
        print(lines[-1], flush=True)
    publish(f"rescoring-{args.method}", lines, not args.no_write)


def labelled(name: str) -> tuple[list, np.ndarray]:
    """A data set's samples and their labels (True = defective)."""
    chosen = samples(name)
    return chosen, np.array([s.label for s in chosen], dtype=bool)


def section_head(title: str, args: argparse.Namespace, options: str, text: str, columns: list[str]) -> list[str]:
    """A section's title, command line, description and table header; a column named 'x:' is left-aligned."""
    align = ["---" if i == 0 or c.endswith(":") else "---:" for i, c in enumerate(columns)]
    return [f"## {title}", "",
            f"`python benchmarks/bench_rescoring.py --size {args.size} --method {args.method}{options}` — "
            f"dinov2_vits14 at {args.size}. {text}", "",
            "| " + " | ".join(c.removesuffix(":") for c in columns) + " |", "|" + "|".join(align) + "|"]


def draws(model: MuSc, args: argparse.Namespace) -> None:
    """AUROC-cls before and after re-scoring on --draws random batches of each data set (a stratified --share)."""
    rng = np.random.default_rng(args.seed)
    options = f" --draws {args.draws} --share {args.share:g} --seed {args.seed}"
    lines = section_head(f"Re-scoring on random batches ({args.method})", args, options,
                         DRAWS_TEXT.format(share=args.share), DRAWS_COLUMNS)
    for name in args.datasets.split(","):
        chosen, labels = labelled(name)
        groups = [np.flatnonzero(~labels), np.flatnonzero(labels)]
        before, after = [], []
        for _ in range(args.draws):
            index = np.sort(np.concatenate([rng.choice(g, max(1, round(args.share * len(g))), replace=False)
                                            for g in groups]))
            result = model.score([chosen[i].path for i in index], progress=False)
            before.append(100 * auroc(labels[index], result.raw_scores))
            after.append(100 * auroc(labels[index], result.scores))
        b, a = np.array(before), np.array(after)
        d = a - b
        lines.append(f"| {name} | {args.draws} | {len(index)} | {b.mean():.1f} ± {b.std():.1f} | "
                     f"{a.mean():.1f} ± {a.std():.1f} | {d.mean():+.1f} | {(d < -1).sum()} / {(d > 1).sum()} |")
        print(lines[-1], flush=True)
    publish(f"rescoring-draws-{args.method}", lines, not args.no_write)


if __name__ == "__main__":
    main()
