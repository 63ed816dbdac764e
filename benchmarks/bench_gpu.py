"""The paper's default configuration end to end on a GPU: ms per image and peak GPU memory, float16 vs float32
similarity products.

clip_vit_l14_336 (ViT-L/14, 1024 channels) with random weights (timm, pretrained=False: the speed and memory are
the trained model's) at input 518 (37 x 37 = 1369 patches), blocks 5/11/17/23, r = 1, 3, 5, RsCIN, N = 200
synthetic textured images (no data set needed). Each score dtype runs the whole pipeline (extraction, LNAMD,
MSM, upsampling, RsCIN) after one warm-up run on a few images; the map difference is against the first dtype
(float32 by default).

Usage: python benchmarks/bench_gpu.py [--n 200] [--size 518] [--backbone clip_vit_l14_336] [--device cuda]
       [--no-write]   (--device cpu with a small --n and --size only checks that the script runs)
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from common import publish


def synthetic_images(n: int, size: int, seed: int = 0) -> list:
    """Smooth random textures with a bright square in every tenth image (work is the same for any content)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    images = []
    for i in range(n):
        base = rng.normal(128, 20, (size // 8 + 1, size // 8 + 1)).clip(0, 255).astype(np.uint8)
        img = np.array(Image.fromarray(base).resize((size, size), Image.BILINEAR))
        if i % 10 == 9:
            y, x = rng.integers(0, size - size // 8, 2)
            img[y:y + size // 8, x:x + size // 8] = 250
        images.append(Image.fromarray(img).convert("RGB"))
    return images


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--size", type=int, default=518)
    ap.add_argument("--backbone", default="clip_vit_l14_336")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtypes", default="float32,float16")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    import torch

    from musc import MuSc, MuScConfig

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: this benchmark needs a GPU (use --device cpu only to check the script)")

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    images = synthetic_images(args.n, args.size)
    base = MuScConfig(backbone=args.backbone, image_size=args.size, pretrained=False, device=args.device)
    model = MuSc(base)
    _ = model.backbone
    model.score(images[:4], progress=False)  # warm-up: kernels, allocator
    rows, ref = [], None
    for dtype in args.dtypes.split(","):
        m = MuSc(base.replace(score_dtype=dtype), backbone=model.backbone)
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        sync()
        t0 = time.perf_counter()
        result = m.score(images, progress=False)
        sync()
        wall = time.perf_counter() - t0
        peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else float("nan")
        diff = "—" if ref is None else f"{float(np.abs(result.maps - ref).max()):.1e}"
        ref = result.maps if ref is None else ref
        t = result.timings
        rows.append(f"| {dtype} | {t['extraction']:.1f} | {t['aggregation'] + t['scoring']:.1f} | {wall:.1f} | "
                    f"{1000 * wall / args.n:.0f} | {peak:.0f} | {diff} |")
        print(rows[-1], flush=True)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    lines = [f"## The paper's default configuration on {name}", "",
             f"`python benchmarks/bench_gpu.py --n {args.n} --size {args.size}` — {args.backbone} (random weights), "
             f"input {args.size}, the default 12 (block, r) pairs and RsCIN, N = {args.n} synthetic images, end to end "
             "(extraction to final scores) after a warm-up run. Map difference: max |map - the first row's (float32) map|.", "",
             "| score dtype | extraction s | LNAMD + MSM s | total s | ms per image | peak GPU MiB | max map diff |",
             "|---|---:|---:|---:|---:|---:|---:|", *rows]
    publish(f"gpu-{args.backbone}-{args.size}-n{args.n}", lines, not args.no_write and device.type == "cuda")


if __name__ == "__main__":
    main()
