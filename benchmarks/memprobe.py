"""Peak-memory measurement of one call: a thread samples this process's RSS every few milliseconds."""

from __future__ import annotations

import os
import threading
import time
from typing import Any, Callable

_PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * _PAGE


def measure(fn: Callable[[], Any], interval: float = 0.005) -> tuple[Any, float, float]:
    """(result, seconds, peak RSS above the RSS at the start, in MiB)."""
    import ctypes
    import gc

    gc.collect()
    try:  # hand freed heap pages back to the OS, so the RSS rise measures this call alone
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    start_rss = rss_bytes()
    peak = [start_rss]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss_bytes())
            time.sleep(interval)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    t0 = time.perf_counter()
    try:
        result = fn()
    finally:
        seconds = time.perf_counter() - t0
        done.set()
        thread.join()
    peak[0] = max(peak[0], rss_bytes())
    return result, seconds, (peak[0] - start_rss) / 2**20
