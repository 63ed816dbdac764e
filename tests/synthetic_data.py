"""Writes tiny synthetic datasets in every supported on-disk layout (as anomalib's tests do).

Normal images are a striped texture; anomalous ones carry a bright square, and their mask marks it.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

from conftest import planted, textured

SIZE = 56
SQUARE = dict(top=20, left=24, side=12)


def _normal(seed: int) -> Image.Image:
    return Image.fromarray(textured(seed, SIZE))


def _anomalous(seed: int) -> tuple[Image.Image, Image.Image]:
    img = Image.fromarray(planted(textured(seed, SIZE), **SQUARE))
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[SQUARE["top"]:SQUARE["top"] + SQUARE["side"], SQUARE["left"]:SQUARE["left"] + SQUARE["side"]] = 255
    return img, Image.fromarray(mask)


def _save(img: Image.Image, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def make_dataset(layout: str, root: Path, n_normal: int = 5, n_anomalous: int = 2) -> Path:
    """Write a dataset in `layout` under root; returns root. Categories: 'cat_a' (and 'cat_b' where layouts allow)."""
    root.mkdir(parents=True, exist_ok=True)
    seed = iter(range(10_000))
    if layout in ("mvtec_ad", "mpdd"):
        for cat in ("cat_a", "cat_b"):
            for i in range(3):
                _save(_normal(next(seed)), root / cat / "train" / "good" / f"{i:03d}.png")
            for i in range(n_normal):
                _save(_normal(next(seed)), root / cat / "test" / "good" / f"{i:03d}.png")
            for i in range(n_anomalous):
                img, mask = _anomalous(next(seed))
                _save(img, root / cat / "test" / "scratch" / f"{i:03d}.png")
                _save(mask, root / cat / "ground_truth" / "scratch" / f"{i:03d}_mask.png")
    elif layout == "mvtec_ad2":
        for cat in ("cat_a", "cat_b"):
            for i in range(3):
                _save(_normal(next(seed)), root / cat / "train" / "good" / f"{i:03d}.png")
            _save(_normal(next(seed)), root / cat / "validation" / "good" / "000.png")
            _save(_normal(next(seed)), root / cat / "test_private" / "000.png")  # no labels: never read
            for i in range(n_normal):
                _save(_normal(next(seed)), root / cat / "test_public" / "good" / f"{i:03d}.png")
            for i in range(n_anomalous):
                img, mask = _anomalous(next(seed))
                _save(img, root / cat / "test_public" / "bad" / f"{i:03d}.png")
                _save(mask, root / cat / "test_public" / "ground_truth" / "bad" / f"{i:03d}_mask.png")
    elif layout == "visa":
        rows = []
        for cat in ("cat_a", "cat_b"):
            for i in range(n_normal + 2):
                rel = f"{cat}/Data/Images/Normal/{i:04d}.JPG"
                _save(_normal(next(seed)), root / rel)
                rows.append([cat, "train" if i < 2 else "test", "normal", rel, ""])
            for i in range(n_anomalous):
                img, mask = _anomalous(next(seed))
                rel, mrel = f"{cat}/Data/Images/Anomaly/{i:03d}.JPG", f"{cat}/Data/Masks/Anomaly/{i:03d}.png"
                _save(img, root / rel)
                _save(Image.fromarray((np.asarray(mask) > 0).astype(np.uint8)), root / mrel)  # VisA masks are 0/1
                rows.append([cat, "test", "anomaly", rel, mrel])
        (root / "split_csv").mkdir()
        with open(root / "split_csv" / "1cls.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["object", "split", "label", "image", "mask"])
            w.writerows(rows)
    elif layout == "btad":
        for cat in ("01", "02"):
            for i in range(2):
                _save(_normal(next(seed)), root / cat / "train" / "ok" / f"{i:04d}.png")
            for i in range(n_normal):
                _save(_normal(next(seed)), root / cat / "test" / "ok" / f"{i:04d}.png")
            for i in range(n_anomalous):
                img, mask = _anomalous(next(seed))
                _save(img, root / cat / "test" / "ko" / f"{i:04d}.png")
                _save(mask, root / cat / "ground_truth" / "ko" / f"{i:04d}{'.bmp' if i % 2 else '.png'}")
    elif layout == "mvtec_3d":
        for cat in ("cat_a",):
            for i in range(2):
                _save(_normal(next(seed)), root / cat / "train" / "good" / "rgb" / f"{i:03d}.png")
            for i in range(n_normal):
                _save(_normal(next(seed)), root / cat / "test" / "good" / "rgb" / f"{i:03d}.png")
                _save(Image.fromarray(np.zeros((SIZE, SIZE), np.uint8)), root / cat / "test" / "good" / "gt" / f"{i:03d}.png")
            for i in range(n_anomalous):
                img, mask = _anomalous(next(seed))
                _save(img, root / cat / "test" / "hole" / "rgb" / f"{i:03d}.png")
                _save(mask, root / cat / "test" / "hole" / "gt" / f"{i:03d}.png")
    elif layout == "mvtec_loco":
        for cat in ("cat_a",):
            for i in range(2):
                _save(_normal(next(seed)), root / cat / "train" / "good" / f"{i:03d}.png")
            for i in range(n_normal):
                _save(_normal(next(seed)), root / cat / "test" / "good" / f"{i:03d}.png")
            for dtype in ("logical_anomalies", "structural_anomalies"):
                for i in range(n_anomalous):
                    img, mask = _anomalous(next(seed))
                    _save(img, root / cat / "test" / dtype / f"{i:03d}.png")
                    m = np.asarray(mask).copy()
                    half = SQUARE["left"] + SQUARE["side"] // 2
                    left, right = m.copy(), m.copy()
                    left[:, half:] = 0
                    right[:, :half] = 0
                    _save(Image.fromarray(left), root / cat / "ground_truth" / dtype / f"{i:03d}" / "000.png")
                    _save(Image.fromarray(right), root / cat / "ground_truth" / dtype / f"{i:03d}" / "001.png")
    elif layout == "mtd":
        for i in range(n_normal):
            _save(_normal(next(seed)), root / "MT_Free" / "Imgs" / f"exp_{i}.jpg")
            _save(Image.fromarray(np.zeros((SIZE, SIZE), np.uint8)), root / "MT_Free" / "Imgs" / f"exp_{i}.png")
        for dtype in ("Crack", "Blowhole"):
            for i in range(n_anomalous):
                img, mask = _anomalous(next(seed))
                _save(img, root / f"MT_{dtype}" / "Imgs" / f"exp_{i}.jpg")
                m = np.asarray(mask).copy()
                m[m == 0] = 100  # below the > 127 threshold: not defect
                _save(Image.fromarray(m), root / f"MT_{dtype}" / "Imgs" / f"exp_{i}.png")
    elif layout == "ksdd":  # two commutators; labels as .png in one and .bmp in the other, as both copies have
        for k, ext in ((1, ".png"), (2, ".bmp")):
            folder = root / f"kos{k:02d}"
            for i in range(n_normal if k == 1 else 1):
                _save(_normal(next(seed)), folder / f"Part{i}.jpg")
                _save(Image.fromarray(np.zeros((SIZE, SIZE), np.uint8)), folder / f"Part{i}_label{ext}")
            start = n_normal if k == 1 else 1
            for i in range(start, start + n_anomalous // 2):
                img, mask = _anomalous(next(seed))
                _save(img, folder / f"Part{i}.jpg")
                _save(mask, folder / f"Part{i}_label{ext}")
    elif layout == "folder":
        for i in range(n_normal):
            _save(_normal(next(seed)), root / "normal" / f"{i}.png")
        for i in range(n_anomalous):
            img, mask = _anomalous(next(seed))
            _save(img, root / "anomalous" / "dent" / f"{i}.png")
            _save(mask, root / "masks" / "dent" / f"{i}{'_mask' if i % 2 else ''}.png")
    else:
        raise ValueError(layout)
    return root


LAYOUTS = ("mvtec_ad", "mpdd", "mvtec_ad2", "visa", "btad", "mvtec_3d", "mvtec_loco", "mtd", "ksdd", "folder")
