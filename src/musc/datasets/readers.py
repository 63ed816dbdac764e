"""One small reader per on-disk layout. Each lists categories and builds a Category of test samples."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Callable

from ..errors import DatasetError
from .base import ANOMALOUS, NORMAL, Category, Sample, first_existing, images_in, load_mask, require_dir

MASK_EXTENSIONS = (".png", ".bmp", ".tif", ".tiff", ".jpg")


def _subdirs(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


class DatasetReader:
    """Base: `categories(root)` and `load(root, category)`; subclasses own one layout."""

    name = ""
    description = ""

    def categories(self, root: Path) -> list[str]:
        raise NotImplementedError

    def load(self, root: Path, category: str) -> Category:
        raise NotImplementedError

    def _check_category(self, root: Path, category: str) -> None:
        known = self.categories(root)
        if category not in known:
            raise DatasetError(f"{self.name}: no category {category!r} in {root}; found: {', '.join(known) or 'none'}")


class TypedTestLayout(DatasetReader):
    """Layouts with `<cat>/<test_dir>/<type>/...`: one folder per defect type, `normal_type` holding the normal images.

    Subclasses say where a type's images are, where an image's mask files are, and where training normals are.
    """

    normal_type = "good"
    test_dir = "test"

    def categories(self, root: Path) -> list[str]:
        require_dir(root, f"{self.name} root")
        return [c for c in _subdirs(root) if (root / c / self.test_dir).is_dir()]

    def types(self, base: Path) -> list[str]:
        """The defect-type folders of a category (the normal one included)."""
        return _subdirs(base / self.test_dir)

    def images(self, base: Path, dtype: str) -> list[Path]:
        return images_in(base / self.test_dir / dtype)

    def masks(self, base: Path, dtype: str, image: Path) -> tuple[Path, ...]:
        raise NotImplementedError

    def train(self, base: Path) -> list[Path]:
        return images_in(base / "train" / self.normal_type)

    def load(self, root: Path, category: str) -> Category:
        self._check_category(root, category)
        base = root / category
        samples = []
        for dtype in self.types(base):
            for img in self.images(base, dtype):
                if dtype == self.normal_type:
                    samples.append(Sample(img, NORMAL, dtype))
                else:
                    samples.append(Sample(img, ANOMALOUS, dtype, self.masks(base, dtype, img)))
        return Category(category, samples, self.train(base))


def _mask_file(folder: Path, name: str) -> tuple[Path, ...]:
    """The mask `folder/name.<ext>` for the first mask extension that exists, as a one-tuple (empty if none)."""
    found = first_existing([folder / f"{name}{ext}" for ext in MASK_EXTENSIONS])
    return (found,) if found else ()


class MVTecAD(TypedTestLayout):
    """`<cat>/test/<type>/*.png`, masks `<cat>/ground_truth/<type>/<stem>_mask.png`, `good` = normal; train/good."""

    name = "mvtec_ad"
    description = "MVTec AD"

    def masks(self, base: Path, dtype: str, image: Path) -> tuple[Path, ...]:
        return _mask_file(base / "ground_truth" / dtype, f"{image.stem}_mask")


class MPDD(MVTecAD):
    name = "mpdd"
    description = "MPDD (MVTec AD layout)"


class MVTecAD2(TypedTestLayout):
    """The public test set: `<cat>/test_public/{good,bad}`, masks `<cat>/test_public/ground_truth/bad/<stem>_mask.png`;
    train/good. The private test sets have no labels, so they cannot be evaluated."""

    name = "mvtec_ad2"
    description = "MVTec AD 2 (public test set)"
    test_dir = "test_public"

    def types(self, base: Path) -> list[str]:
        return [t for t in super().types(base) if t != "ground_truth"]

    def masks(self, base: Path, dtype: str, image: Path) -> tuple[Path, ...]:
        return _mask_file(base / self.test_dir / "ground_truth" / dtype, f"{image.stem}_mask")


class VisA(DatasetReader):
    """The official layout with `split_csv/1cls.csv` (object, split, label, image, mask); mask values > 0 are defect."""

    name = "visa"
    description = "VisA"
    csv_name = Path("split_csv") / "1cls.csv"

    def _rows(self, root: Path) -> list[dict[str, str]]:
        path = root / self.csv_name
        if not path.is_file():
            raise DatasetError(f"visa: split file not found: {path}")
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
        need = {"object", "split", "label", "image", "mask"}
        if rows and not need <= set(rows[0]):
            raise DatasetError(f"visa: {path} must have columns {', '.join(sorted(need))}")
        return rows

    def categories(self, root: Path) -> list[str]:
        return sorted({r["object"] for r in self._rows(root)})

    def load(self, root: Path, category: str) -> Category:
        self._check_category(root, category)
        samples, train = [], []
        for r in self._rows(root):
            if r["object"] != category:
                continue
            path = root / r["image"]
            if r["split"] == "train":
                if r["label"] == "normal":
                    train.append(path)
                continue
            if r["label"] == "normal":
                samples.append(Sample(path, NORMAL, "normal"))
            else:
                mask = root / r["mask"] if r["mask"] else None
                samples.append(Sample(path, ANOMALOUS, "anomaly", (mask,) if mask and mask.is_file() else ()))
        return Category(category, samples, train)


class BTAD(TypedTestLayout):
    """`<01|02|03>/test/{ok,ko}`, masks in `ground_truth/ko` (.png or .bmp); train/ok."""

    name = "btad"
    description = "BTAD"
    normal_type = "ok"

    def masks(self, base: Path, dtype: str, image: Path) -> tuple[Path, ...]:
        return _mask_file(base / "ground_truth" / dtype, image.stem)


class MVTec3D(TypedTestLayout):
    """RGB only: `<cat>/test/<type>/rgb/*.png`, masks `<cat>/test/<type>/gt/*.png`; train/good/rgb."""

    name = "mvtec_3d"
    description = "MVTec 3D-AD (RGB)"

    def images(self, base: Path, dtype: str) -> list[Path]:
        return images_in(base / "test" / dtype / "rgb")

    def masks(self, base: Path, dtype: str, image: Path) -> tuple[Path, ...]:
        return _mask_file(base / "test" / dtype / "gt", image.stem)

    def train(self, base: Path) -> list[Path]:
        return images_in(base / "train" / "good" / "rgb")


class MVTecLOCO(TypedTestLayout):
    """`<cat>/test/{good,logical_anomalies,structural_anomalies}`; masks: folders `ground_truth/<type>/<id>/*.png`, united."""

    name = "mvtec_loco"
    description = "MVTec LOCO AD"

    def masks(self, base: Path, dtype: str, image: Path) -> tuple[Path, ...]:
        return tuple(images_in(base / "ground_truth" / dtype / image.stem))


class MagneticTile(DatasetReader):
    """Magnetic Tile Defect: `MT_<type>/Imgs/*.jpg` with same-named `.png` masks (> 127 is defect); MT_Free = normal.

    One category, `magnetic_tile`. It has no train split: `train_normals` is empty (few-shot draws
    references from normal images outside the evaluated list).
    """

    name = "mtd"
    description = "Magnetic Tile Defect"
    category = "magnetic_tile"

    def categories(self, root: Path) -> list[str]:
        require_dir(root, f"{self.name} root")
        if not any((root / d / "Imgs").is_dir() for d in _subdirs(root) if d.startswith("MT_")):
            raise DatasetError(f"mtd: no MT_<type>/Imgs folders in {root}")
        return [self.category]

    def load(self, root: Path, category: str = "magnetic_tile") -> Category:
        self._check_category(root, category)
        samples = []
        for folder in [d for d in _subdirs(root) if d.startswith("MT_")]:
            dtype = folder[3:]
            label = NORMAL if dtype == "Free" else ANOMALOUS
            for img in sorted((root / folder / "Imgs").glob("*.jpg")):
                mask = img.with_suffix(".png")
                samples.append(Sample(img, label, dtype, (mask,) if mask.is_file() else (), mask_threshold=127))
        return Category(category, samples)


class KolektorSDD(DatasetReader):
    """KolektorSDD: `kosNN/PartK.jpg` with `kosNN/PartK_label.png` (or `.bmp`); defect where the label is > 0.

    One category, `kolektor`, holding every commutator folder. An image is anomalous when its label is not
    all zero, so the labels are read once while listing (only for the metrics, never for scoring).
    """

    name = "ksdd"
    description = "KolektorSDD"
    category = "kolektor"
    label_extensions = (".png", ".bmp")

    def _folders(self, root: Path) -> list[Path]:
        require_dir(root, f"{self.name} root")
        folders = [root / d for d in _subdirs(root) if any((root / d).glob("Part*.jpg"))]
        if not folders:
            raise DatasetError(f"ksdd: no folders with Part*.jpg images in {root}")
        return folders

    def categories(self, root: Path) -> list[str]:
        self._folders(root)
        return [self.category]

    def load(self, root: Path, category: str = "kolektor") -> Category:
        self._check_category(root, category)
        samples = []
        for folder in self._folders(root):
            for img in sorted(folder.glob("Part*.jpg"), key=lambda p: (len(p.stem), p.stem)):
                label = first_existing([folder / f"{img.stem}_label{ext}" for ext in self.label_extensions])
                if label is None:
                    raise DatasetError(f"ksdd: no label {img.stem}_label.png or .bmp beside {img}")
                mask = Sample(img, ANOMALOUS, "defect", (label,))
                if load_mask(mask).any():
                    samples.append(mask)
                else:
                    samples.append(Sample(img, NORMAL, "good"))
        return Category(category, samples)


class GenericFolder(DatasetReader):
    """`normal/` and `anomalous/` (any sub-folders), optional `masks/` matched by relative path and stem.

    A mask for `anomalous/a/b.png` is `masks/a/b.<ext>` or `masks/a/b_mask.<ext>`. The folder is one
    category named after the root folder.
    """

    name = "folder"
    description = "generic normal/anomalous folder"

    def categories(self, root: Path) -> list[str]:
        require_dir(root, "folder root")
        if not (root / "normal").is_dir() and not (root / "anomalous").is_dir():
            raise DatasetError(f"folder: {root} must contain normal/ and/or anomalous/")
        return [root.name]

    def load(self, root: Path, category: str | None = None) -> Category:
        name = self.categories(root)[0]
        if category not in (None, name):
            raise DatasetError(f"folder: the only category is {name!r}, not {category!r}")
        samples = [Sample(p, NORMAL, "normal") for p in images_in(root / "normal", recursive=True)]
        for img in images_in(root / "anomalous", recursive=True):
            rel = img.relative_to(root / "anomalous")
            folder = root / "masks" / rel.parent
            masks = _mask_file(folder, img.stem) or _mask_file(folder, f"{img.stem}_mask")
            dtype = rel.parts[0] if len(rel.parts) > 1 else "anomalous"
            samples.append(Sample(img, ANOMALOUS, dtype, masks))
        return Category(name, samples)


READERS: dict[str, Callable[[], DatasetReader]] = {
    r.name: r for r in (MVTecAD, MPDD, MVTecAD2, VisA, BTAD, MVTec3D, MVTecLOCO, MagneticTile, KolektorSDD, GenericFolder)
}


def get_reader(name: str) -> DatasetReader:
    try:
        return READERS[name]()
    except KeyError:
        raise DatasetError(f"unknown dataset layout {name!r}; known: {', '.join(READERS)}") from None
