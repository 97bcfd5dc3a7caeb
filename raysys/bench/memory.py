"""Peak memory of a process tree, sampled in a background thread.

    with PeakMemorySampler(pid=child.pid) as mem:   # default: this process and its descendants
        child.wait()
    print(mem.peak.pss_bytes / 2**30, "GiB")

The tree is the root process and all its descendants, so when `ray.init()` runs inside it, Ray's GCS,
raylet and workers are counted too. The headline figure is the summed PSS (proportional set size): a
shared page mapped into k processes counts 1/k in each, so Ray's object store (shared memory mapped into
the raylet and every worker that reads it) is counted once, not once per process. The RSS sum, which does
count shared pages once per process, is kept beside it, and so is the growth of /dev/shm (where the
object store's memory lives on Linux) since the sampler started.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

SHM_DIR = Path("/dev/shm")


@dataclass(frozen=True)
class MemorySample:
    """One reading of the tree, in bytes; `elapsed_s` since the sampler started."""

    elapsed_s: float
    pss_bytes: int  # summed PSS (RSS where the platform has no PSS)
    rss_bytes: int  # summed RSS (shared pages counted in every process that maps them)
    shm_bytes: int  # growth of /dev/shm usage since the start (0 where there is no /dev/shm)
    num_processes: int


class PeakMemorySampler:
    """Context manager sampling the memory of the tree rooted at `pid` every `interval_s` seconds.

    After the `with` block, `peak` holds the per-field maxima over all samples (each field's maximum
    may come from a different sample) and `samples` the whole time line. One sample is always taken on
    entry and one on exit, so even a block shorter than `interval_s` is measured.
    """

    def __init__(self, pid: int | None = None, interval_s: float = 0.25) -> None:
        self.root = psutil.Process(pid if pid is not None else os.getpid())
        self.interval_s = interval_s
        self.samples: list[MemorySample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="peak-memory-sampler", daemon=True)
        self._t0 = time.monotonic()
        self._shm0 = shm_used_bytes()

    def __enter__(self) -> PeakMemorySampler:
        self._t0 = time.monotonic()
        self._shm0 = shm_used_bytes()
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def sample(self) -> MemorySample:
        """Read the tree now, append the reading to `samples` and return it."""
        pss, rss, count = tree_memory(self.root)
        reading = MemorySample(
            elapsed_s=time.monotonic() - self._t0,
            pss_bytes=pss,
            rss_bytes=rss,
            shm_bytes=max(0, shm_used_bytes() - self._shm0),
            num_processes=count,
        )
        self.samples.append(reading)
        return reading

    @property
    def peak(self) -> MemorySample:
        """Maximum of every field over the samples taken so far (`elapsed_s` = when PSS peaked)."""
        if not self.samples:
            raise RuntimeError("PeakMemorySampler has no samples: use it as a context manager")
        top = max(self.samples, key=lambda s: s.pss_bytes)
        return MemorySample(
            elapsed_s=top.elapsed_s,
            pss_bytes=top.pss_bytes,
            rss_bytes=max(s.rss_bytes for s in self.samples),
            shm_bytes=max(s.shm_bytes for s in self.samples),
            num_processes=max(s.num_processes for s in self.samples),
        )


def tree_memory(root: psutil.Process) -> tuple[int, int, int]:
    """(summed PSS, summed RSS, process count) of `root` and its live descendants, in bytes.

    Processes that exit or deny access mid-reading are skipped: a tree that is starting or stopping
    workers changes between listing it and reading each member.
    """
    try:
        members = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0, 0, 0
    pss = rss = count = 0
    for proc in members:
        try:
            info = proc.memory_full_info()
        except psutil.Error:
            continue
        rss += info.rss
        pss += getattr(info, "pss", info.rss)
        count += 1
    return pss, rss, count


def shm_used_bytes() -> int:
    """Bytes in use on /dev/shm (machine-wide), 0 where it does not exist."""
    if not SHM_DIR.is_dir():
        return 0
    return shutil.disk_usage(SHM_DIR).used
