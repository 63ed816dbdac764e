"""Reading images robustly and writing results safely.

Every file is written under a temporary name and renamed, with the permissions the user's umask gives
(not mkstemp's 0600). A result folder is replaced as a whole: it is written as a hidden sibling and
swapped in when complete, so it always holds exactly one complete run, or the earlier one untouched.
"""

from __future__ import annotations

import csv
import ctypes
import fnmatch
import functools
from collections import Counter
import io as _io
import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Iterable, Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageReadError, InputError

log = logging.getLogger("musc")

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm", ".pnm", ".pbm")

LOW_BIT_DEPTH = ("a 16-bit image uses at most 12 of its 16 bits (its brightest pixel is below 4096): scaled from 16 to "
                 "8 bits it keeps about 16 grey levels. If the camera writes 10- or 12-bit data into 16-bit files, "
                 "scale them to the full range before scoring (x16 for 12-bit, x64 for 10-bit)")


EXIF_ORIENTATION = 0x0112
"""The EXIF tag that says how a camera's stored pixels are turned for viewing (1 = as stored)."""
QUARTER_TURNS = (5, 6, 7, 8)
"""Orientations that turn the image by a quarter: width and height trade places."""


def orientation(image: Image.Image) -> int:
    """The image's EXIF orientation, read from the header (1, as stored, when it has none)."""
    return image.getexif().get(EXIF_ORIENTATION, 1)


def upright(image: Image.Image) -> Image.Image:
    """The image as a photo viewer shows it: cameras and phones store pixels in the sensor's orientation and say in
    an EXIF tag how to turn them. Without such a tag, the image itself (no copy)."""
    return image if orientation(image) == 1 else ImageOps.exif_transpose(image)


def upright_size(image: Image.Image) -> tuple[int, int]:
    """(width, height) of `upright(image)`, from the header alone (nothing decoded)."""
    w, h = image.size
    return (h, w) if orientation(image) in QUARTER_TURNS else (w, h)


@functools.lru_cache(maxsize=None)
def warn_once(message: str) -> None:
    """Log a warning only the first time it arises in this process, so a batch of such images gives one line."""
    log.warning(message)


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode (grayscale, palette, RGBA, 16-bit, float) to 8-bit RGB."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(image, dtype=np.float64)
        peak = arr.max(initial=0)
        if image.mode.startswith("I;16") or (image.mode == "I" and peak > 255):
            if peak < 4096:
                warn_once(LOW_BIT_DEPTH)
            arr = arr / 257.0
        elif image.mode == "F" and peak <= 1.0:
            arr = arr * 255.0
        arr = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
        return Image.fromarray(arr, mode="L").convert("RGB")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def read_image(path: str | Path) -> Image.Image:
    """Decode an image file fully and return it upright (`upright`) as 8-bit RGB; ImageReadError names the file
    otherwise."""
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"image not found: {path}")
    try:
        with Image.open(path) as img:
            img.load()
            return to_rgb(upright(img))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageReadError(f"cannot read image {path}: {exc}") from exc


def find_images(folder: str | Path, recursive: bool = True, exclude: Sequence[str] = ()) -> list[Path]:
    """All image files under `folder` (common extensions), sorted by path, less those matching an `exclude` pattern
    (`excluded`)."""
    folder = Path(folder)
    if not folder.exists():
        raise InputError(f"folder not found: {folder}")
    if not folder.is_dir():
        raise InputError(f"not a folder: {folder}")
    pattern = "**/*" if recursive else "*"
    visible = [p for p in folder.glob(pattern)
               if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)]
    files = sorted(p for p in visible if p.suffix.lower() in IMAGE_EXTENSIONS)
    report_left_out([p for p in visible if p.suffix.lower() not in IMAGE_EXTENSIONS], folder)
    if not files:
        raise InputError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found in {folder}")
    results = earlier_results(folder, files)
    if results:
        files = [p for p in files if not any(p.is_relative_to(r) for r in results)]
        log.warning("left out the images in %d earlier musc result folder(s) under %s (%s): their heatmaps, overlays "
                    "and masks are not product images", len(results), folder,
                    ", ".join(sorted(r.relative_to(folder).as_posix() for r in results)))
        if not files:
            raise InputError(f"no images in {folder} outside earlier musc results")
    kept = [p for p in files if not excluded(p, folder, exclude)]
    if not kept:
        raise InputError(f"no images left in {folder}: all {len(files)} match --exclude {' '.join(exclude)}")
    if len(kept) < len(files):
        log.info("left out %d image(s) under %s matching --exclude %s", len(files) - len(kept), folder,
                 " ".join(exclude))
    return kept


def earlier_results(folder: Path, files: Sequence[Path]) -> set[Path]:
    """The folders below `folder` (not `folder` itself) that hold a musc result, among the folders of `files`: a
    result written inside the image folder (`musc score . --out results`) would otherwise be scored with the images
    on the next run."""
    checked: dict[Path, bool] = {}
    found: set[Path] = set()
    for path in files:
        for parent in list(path.relative_to(folder).parents)[:-1]:
            candidate = folder / parent
            if candidate not in checked:
                checked[candidate] = _written_by_musc(candidate)
            if checked[candidate]:
                found.add(candidate)
    return {r for r in found if not any(r != other and r.is_relative_to(other) for other in found)}


def excluded(path: Path, folder: Path | None, patterns: Sequence[str]) -> bool:
    """Whether `path` matches one of the shell patterns (`*`, `?`, `[...]`; case-sensitive), tried on its path
    relative to `folder` (with `/`; `*` also matches across folders) and on its file name."""
    if not patterns:
        return False
    relative = path.relative_to(folder).as_posix() if folder is not None and path.is_relative_to(folder) else None
    return any(fnmatch.fnmatchcase(path.name, pattern) or (relative is not None and fnmatch.fnmatchcase(relative, pattern))
               for pattern in patterns)


GROUND_TRUTH_SUFFIXES = ("_label", "_labels", "_mask", "_masks", "_gt", "_groundtruth", "_ground_truth")
"""File-name endings (before the extension, any case) of ground-truth masks in the common data set layouts
(KolektorSDD's `Part0_label.png`, MVTec AD's `000_mask.png`): the --exclude pattern suggested for them."""
GROUND_TRUTH_FOLDERS = ("ground_truth", "groundtruth", "gt", "masks", "mask", "labels", "label")
"""Folder names (any case) that hold ground-truth masks in the common layouts (MVTec AD's `ground_truth/`, VisA's
`Masks/`)."""


MASK_LIKE_SHARE = 0.9
"""An image with at least this share of its pixels at its darkest or its brightest grey level looks like a mask.
Measured on the shared data: the 1,544 masks of Magnetic Tile Defect and KolektorSDD have 97.4 % or more (antialiased
edges), their 1,561 photos 17.5 % at most."""


def mask_like(image: Image.Image) -> bool:
    """Whether nearly all pixels of `image` sit at two grey levels, its darkest and brightest (`MASK_LIKE_SHARE`): a
    binary mask (or a blank image), not a photo."""
    histogram = image.convert("L").histogram()
    levels = [i for i, count in enumerate(histogram) if count]
    extremes = histogram[levels[0]] + (histogram[levels[-1]] if len(levels) > 1 else 0)
    return extremes >= MASK_LIKE_SHARE * sum(histogram)


def ground_truth_like(paths: Sequence[Path], root: Path | None, masks: Sequence[Path]) -> tuple[list[Path], str | None]:
    """The images among `paths` that look like ground-truth masks by their pixels (`masks`: those found `mask_like`;
    names alone would flag photos of printed labels), and an --exclude pattern that leaves them out, from the first
    one: its name's ending (`GROUND_TRUTH_SUFFIXES`) or folder below `root` (`GROUND_TRUTH_FOLDERS`), else the
    extension the masks alone have (Magnetic Tile Defect: `.png` masks beside `.jpg` photos), else its name."""
    masks = set(masks)
    found = [p for p in paths if p in masks]
    if not found:
        return [], None
    first = found[0]
    suffix = next((s for s in GROUND_TRUTH_SUFFIXES if first.stem.lower().endswith(s)), None)
    if suffix is not None:
        return found, f"*{first.stem[-len(suffix):]}*"
    parents = first.relative_to(root).parts[:-1] if root is not None and first.is_relative_to(root) else ()
    parent = next((part for part in parents if part.lower() in GROUND_TRUTH_FOLDERS), None)
    if parent is not None:
        return found, f"*{parent}/*"
    extensions = {p.suffix for p in found}
    others = {p.suffix for p in paths if p not in masks}
    return found, f"*{extensions.pop()}" if len(extensions) == 1 and not extensions & others else first.name


def report_left_out(others: Sequence[Path], folder: Path) -> None:
    """Log the files find_images left out by extension: a warning for formats Pillow knows as images (GIF,
    JPEG 2000, ...), which a user may expect to be scored; info for the rest (notes, label files)."""
    if not others:
        return
    known = set(Image.registered_extensions())
    counts = Counter(p.suffix.lower() or "(no extension)" for p in others)
    images = {ext: n for ext, n in counts.items() if ext in known}
    rest = {ext: n for ext, n in counts.items() if ext not in known}
    if images:
        log.warning("left out %d file(s) under %s in image formats musc does not take (%s); convert them to one of "
                    "%s to score them", sum(images.values()), folder,
                    ", ".join(f"{ext}: {n}" for ext, n in sorted(images.items())), " ".join(IMAGE_EXTENSIONS))
    if rest:
        log.info("left out %d non-image file(s) under %s (%s)", sum(rest.values()), folder,
                 ", ".join(f"{ext}: {n}" for ext, n in sorted(rest.items())))


def current_umask() -> int:
    """The process's umask, read without changing it where the system allows (Linux), else set and restored."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """Permissions of a new output file: what open() would give it (0666 less the umask)."""
    return 0o666 & ~current_umask()


def folder_mode() -> int:
    """Permissions of a new output folder: what mkdir would give it (0777 less the umask)."""
    return 0o777 & ~current_umask()


def _atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
        os.chmod(tmp, file_mode())  # mkstemp makes 0600 files; outputs follow the umask like any program's
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write bytes so that `path` either keeps its old content or holds the complete new one."""
    _atomic_write(Path(path), lambda fh: fh.write(data))


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_save_npy(path: str | Path, array: np.ndarray) -> None:
    _atomic_write(Path(path), lambda fh: np.save(fh, array))


def atomic_save_png(path: str | Path, image: Image.Image) -> None:
    buf = _io.BytesIO()
    image.save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


def atomic_write_csv(path: str | Path, header: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    buf = _io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def output_name(path: Path, root: Path | None, keep_suffix: bool = False) -> str:
    """A flat file stem for an input image: its path below `root` with separators replaced by '__'."""
    rel = path.relative_to(root) if root is not None and path.is_relative_to(root) else Path(path.name)
    return "__".join((rel if keep_suffix else rel.with_suffix("")).parts)


def output_names(paths: Sequence[Path], root: Path | None) -> list[str]:
    """One output stem per input, unique even on case-insensitive file systems.

    The stem is the path below `root` without its extension (`good/a.png` -> `good__a`); inputs that would
    share a stem (`a.jpg` and `a.png`, or `A.png` and `a.png`) keep their extension (`a.jpg`, `a.png`), and
    any stem still taken gets a numbered suffix (`a-2`).
    """
    plain = [output_name(Path(p), root) for p in paths]
    suffixed = [output_name(Path(p), root, keep_suffix=True) for p in paths]
    counts = Counter(name.casefold() for name in plain)
    suffixed_counts = Counter(name.casefold() for name in suffixed)
    names = [long if counts[name.casefold()] > 1 and suffixed_counts[long.casefold()] == 1 else name
             for name, long in zip(plain, suffixed)]
    taken: set[str] = set()
    unique = []
    for name in names:
        candidate, k = name, 1
        while candidate.casefold() in taken:
            k += 1
            candidate = f"{name}-{k}"
        taken.add(candidate.casefold())
        unique.append(candidate)
    return unique


_STAGING = re.compile(r"^\.(?P<name>.+)\.musc-(?:staging|old)-(?P<pid>\d+)-[^/]*$")


def read_scores_table(folder: str | Path) -> tuple[Path, list[str], list[dict[str, str]]]:
    """A `musc score` result folder's scores.csv: its path, header and rows (rank order); InputError when the folder
    has none or it has no rows."""
    folder = Path(folder)
    path = folder / "scores.csv"
    if not path.is_file():
        raise InputError(f"no scores.csv in {folder}: not a musc result folder "
                         f"(run `musc score ... --out {folder}` first)")
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        rows, header = list(reader), list(reader.fieldnames or [])
    if not rows:
        raise InputError(f"{path} has no rows")
    return path, header, rows


def _written_by_musc(folder: Path) -> bool:
    config = folder / "config.json"
    if config.is_file():
        try:
            data = json.loads(config.read_text())
            return isinstance(data, dict) and "musc_version" in data
        except (OSError, ValueError):
            return False
    scores = folder / "scores.csv"
    if scores.is_file():
        with open(scores, newline="") as fh:
            return fh.readline().startswith("rank,path,score")
    return (folder / "metrics.json").is_file() and (folder / "metrics.md").is_file()


def _existing_ancestor(path: Path) -> Path:
    """The nearest folder above `path` that exists: where its missing folders would be created."""
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    return parent


def check_output_folder(path: str | Path, option: str = "--out", replaced: bool = True) -> Path:
    """Fail with one line, before any work, when `path` cannot become a result folder.

    It must be a folder (or not exist yet) and lie where files can be made; a folder that is `replaced`
    as a whole must hold nothing but an earlier musc result, since other files in it would be lost.
    """
    path = Path(path).absolute()
    if path.exists() and not path.is_dir():
        raise InputError(f"{option} {path} is a file, not a folder: give a folder for the results")
    if path.is_dir() and not replaced:
        if not os.access(path, os.W_OK | os.X_OK):
            raise InputError(f"{option} {path}: no permission to write in this folder")
        return path
    if path.is_dir() and any(path.iterdir()) and not _written_by_musc(path):
        raise InputError(f"{option} {path} is a folder holding other files, not an earlier musc result: "
                         "give a new or empty folder (a result folder is replaced as a whole)")
    parent = _existing_ancestor(path)
    if not parent.is_dir():
        raise InputError(f"{option} {path}: {parent} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"{option} {path}: no permission to create folders in {parent}")
    return path


def check_output_file(path: str | Path, option: str = "--out") -> Path:
    """Fail with one line, before any work, when a file cannot be written at `path`."""
    path = Path(path).absolute()
    if path.is_dir():
        raise InputError(f"{option} {path} is a folder: give a file name")
    parent = _existing_ancestor(path)
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"{option} {path}: cannot write in {parent}")
    return path


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by someone else
        pass
    return True


def _remove_stale_siblings(path: Path) -> None:
    """Staging folders that a killed run left beside `path` (their process is gone) are removed."""
    for sibling in path.parent.glob(f".{path.name}.musc-*"):
        match = _STAGING.match(sibling.name)
        if match and match["name"] == path.name and sibling.is_dir() and not _pid_alive(int(match["pid"])):
            shutil.rmtree(sibling, ignore_errors=True)


_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE); False where the system cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd = -100
    res = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE)
    return res == 0


class ResultFolder:
    """A result folder written as a whole: files go into a hidden sibling that replaces `path` on success.

    >>> with ResultFolder(out) as folder:   # checks `out` and makes the sibling
    ...     write_result(result, folder)    # any error here leaves `out` as it was
    """

    def __init__(self, path: str | Path, option: str = "--out") -> None:
        self.path = Path(path)
        self.option = option
        self.staging: Path | None = None

    def __enter__(self) -> Path:
        self.path = check_output_folder(self.path, self.option)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_siblings(self.path)
        try:
            staging = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.musc-staging-{os.getpid()}-",
                                            dir=self.path.parent))
        except OSError as exc:
            raise InputError(f"{self.option} {self.path}: cannot write there ({exc.strerror or exc})") from exc
        os.chmod(staging, folder_mode())
        self.staging = staging
        return staging

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        staging, self.staging = self.staging, None
        if staging is None:
            return
        if exc_type is not None:
            shutil.rmtree(staging, ignore_errors=True)
            return
        self._commit(staging)

    def _commit(self, staging: Path) -> None:
        path = self.path
        if path.is_dir() and any(path.iterdir()) and not _written_by_musc(path):
            shutil.rmtree(staging, ignore_errors=True)
            raise InputError(f"{self.option} {path} now holds other files: the results were not written")
        if not path.exists():
            os.rename(staging, path)
        elif _exchange(staging, path):
            shutil.rmtree(staging, ignore_errors=True)  # holds the earlier result now
        else:
            old = path.with_name(f".{path.name}.musc-old-{os.getpid()}-{staging.name[-8:]}")
            os.rename(path, old)
            os.rename(staging, path)
            shutil.rmtree(old, ignore_errors=True)
