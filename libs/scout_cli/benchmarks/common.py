"""Measurement helpers shared by the benchmarks: peak resident memory, medians, result files.

What the machine was is `scout.machine.machine_info` (the test harness records it too, and cannot import the CLI).
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, NoReturn

from scout_cli.console import fail

HARNESS_INSTALL = "pip install -e ./libs/testbed"
"""How to get the test harness (`scout_testbed`), which `pip install .` and the image leave out."""


def needs_harness(error: ModuleNotFoundError, command: str) -> NoReturn:
    """For a command that imports the test harness: if the harness itself is what is missing, say how to install
    it (exit 2); any other missing module is a real error and goes on up.

    Used as ``try: from scout_testbed.x import y`` / ``except ModuleNotFoundError as e: needs_harness(e, "…")``:
    the import stays an ordinary statement in the command (the layering test sees it), and `scout --help` never
    loads the harness.
    """
    if (error.name or "").split(".")[0] != "scout_testbed":
        raise error
    fail(f"{command} needs the test harness: {HARNESS_INSTALL}")


_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_bytes() -> int:
    """Current resident set size of this process (Linux /proc; 0 where unavailable)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except OSError:
        return 0


def release_free_memory() -> None:
    """Return freed heap memory to the OS (glibc `malloc_trim`), so the next RSS peak measures new allocations
    rather than being hidden by memory an earlier measurement freed but the allocator kept."""
    import ctypes
    import gc

    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class PeakRSS:
    """Samples RSS in a background thread; `peak_delta` = highest RSS seen minus RSS at entry.

    torch's CPU allocator returns large blocks to the OS when freed, so consecutive measurements in one
    process do not hide each other; sampling every `interval_s` can miss very short spikes (documented bias: low).
    """

    def __init__(self, interval_s: float = 0.002) -> None:
        self.interval_s = interval_s
        self.start = 0
        self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> PeakRSS:
        self.start = self.peak = rss_bytes()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(self.interval_s)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak = max(self.peak, rss_bytes())

    @property
    def peak_delta(self) -> int:
        return max(0, self.peak - self.start)


def timed(fn: Callable[[], Any], repeats: int) -> tuple[float, list[float], Any]:
    """(median seconds, all samples, last result) over `repeats` calls."""
    samples, result = [], None
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        result = fn()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples), samples, result


class ResultLog:
    """Append-only JSONL of measurements, keyed so an interrupted benchmark resumes where it stopped."""

    def __init__(self, path: Path, key_fields: Iterable[str]) -> None:
        self.path = path
        self.key_fields = tuple(key_fields)
        self.rows: list[dict[str, Any]] = []
        if path.exists():
            with open(path, encoding="utf-8") as f:
                self.rows = [json.loads(line) for line in f if line.strip()]

    def key(self, row: dict[str, Any]) -> tuple[Any, ...]:
        return tuple(row.get(k) for k in self.key_fields)

    def has(self, **fields: Any) -> bool:
        k = self.key(fields)
        return any(self.key(r) == k for r in self.rows)

    def add(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
