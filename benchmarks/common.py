"""Helpers shared by the benchmark scripts: machine facts, peak memory, BENCHMARKS.md sections, MTD subset."""

from __future__ import annotations

import os
import platform
import re
import resource
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS_MD = ROOT / "BENCHMARKS.md"
MTD_ROOT = ROOT.parent / "shared" / "datasets" / "mtd"
KSDD_ROOT = ROOT.parent / "shared" / "datasets" / "ksdd"


def machine() -> str:
    """One line: date, CPU model, cores, RAM, GPU, library versions."""
    import timm
    import torch

    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{time.strftime('%Y-%m-%d')}; {cpu}, {os.cpu_count()} cores, {mem:.0f} GiB RAM, {gpu}; "
            f"Python {platform.python_version()}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
            f"timm {timm.__version__}")


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def git_rev() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def update_section(name: str, body: str) -> None:
    """Replace (or append) the section between <!-- name --> markers in BENCHMARKS.md."""
    start, end = f"<!-- {name} -->", f"<!-- /{name} -->"
    text = BENCHMARKS_MD.read_text() if BENCHMARKS_MD.exists() else "# Benchmarks\n\nEvery number here was measured by the script named in its section.\n"
    block = f"{start}\n{body.rstrip()}\n{end}"
    pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    tmp = BENCHMARKS_MD.with_suffix(".md.tmp")
    tmp.write_text(text)
    tmp.replace(BENCHMARKS_MD)


def mtd_subset(root: Path = MTD_ROOT) -> list:
    """The 'mtd-200' benchmark subset: the first 20 images (by file name) of each defect class, first 100 of Free."""
    from musc.datasets import get_reader

    category = get_reader("mtd").load(root)
    chosen = []
    for dtype, count in (("Blowhole", 20), ("Break", 20), ("Crack", 20), ("Fray", 20), ("Uneven", 20), ("Free", 100)):
        of_type = sorted((s for s in category.samples if s.defect_type == dtype), key=lambda s: s.path.name)
        chosen += of_type[:count]
    return chosen


ELONGATED_ASPECT = 1.8
MID_ASPECT = 1.5
"""The mid sets lie from here up to ELONGATED_ASPECT: where `--tiles auto` started to tile until they showed that two
tiles lose against whole images (musc.tiling.AUTO_MIN_ASPECT is 2.0 since)."""


def elongated(orientation: str, low: float = ELONGATED_ASPECT, high: float = float("inf")) -> list:
    """MTD images outside mtd-200 whose long side is between `low` (included) and `high` (excluded) times the short
    one (default: at least ELONGATED_ASPECT), in one orientation ('tall' or 'wide'), by file name."""
    from PIL import Image

    from musc.datasets import get_reader

    skip = {s.path for s in mtd_subset()}
    chosen = []
    for s in sorted(get_reader("mtd").load(MTD_ROOT).samples, key=lambda s: s.path.name):
        if s.path in skip:
            continue
        with Image.open(s.path) as im:
            w, h = im.size
        if low * min(w, h) <= max(w, h) < high * min(w, h) and (h > w) == (orientation == "tall"):
            chosen.append(s)
    return chosen


def publish(section: str, lines: list[str], write: bool = True) -> str:
    """Add the machine line, print the section, and (unless told not to) write it into BENCHMARKS.md."""
    text = "\n".join([*lines, "", f"Machine: {machine()}."])
    print(text, flush=True)
    if write:
        update_section(section, text)
    return text
