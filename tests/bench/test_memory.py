"""PeakMemorySampler: a child that allocates a known amount shows up in the tree's peak; shared memory
mapped by two processes is counted once by PSS and twice by RSS."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from raysys.bench.memory import SHM_DIR, PeakMemorySampler

MIB = 2**20

ALLOCATE = """
import sys, time
block = bytearray(int(sys.argv[1]))  # zero-filled: every page is written, so it is resident
time.sleep(1.0)
"""

MAP_SHARED = """
import mmap, sys, time
with open(sys.argv[1], "rb") as f:
    view = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    touched = sum(view[i] for i in range(0, len(view), 4096))  # fault every page in
    print("ready", flush=True)
    time.sleep(1.0)
"""


def test_child_allocation_counts_in_the_tree_peak() -> None:
    size = 256 * MIB
    with PeakMemorySampler(interval_s=0.1) as mem:
        subprocess.run([sys.executable, "-c", ALLOCATE, str(size)], check=True)
    baseline = mem.samples[0]
    grew = mem.peak.pss_bytes - baseline.pss_bytes
    assert 0.9 * size < grew < 1.5 * size
    assert mem.peak.num_processes >= 2
    assert mem.samples[-1].pss_bytes < baseline.pss_bytes + 0.5 * size  # the child is gone at the end
    assert len(mem.samples) >= 5


def test_sampler_rooted_at_a_child_pid() -> None:
    size = 128 * MIB
    child = subprocess.Popen([sys.executable, "-c", ALLOCATE, str(size)])
    with PeakMemorySampler(pid=child.pid, interval_s=0.1) as mem:
        child.wait()
    assert mem.peak.pss_bytes > 0.9 * size
    assert mem.samples[-1].num_processes == 0  # the root exited: nothing left to read


@pytest.mark.skipif(not SHM_DIR.is_dir(), reason="no /dev/shm on this platform")
def test_shared_memory_is_counted_once_by_pss() -> None:
    size = 128 * MIB
    segment = SHM_DIR / f"raysys-test-{uuid.uuid4().hex}"
    try:
        with PeakMemorySampler(interval_s=0.1) as mem:
            _write_zeros(segment, size)
            readers = [
                subprocess.Popen([sys.executable, "-c", MAP_SHARED, str(segment)], stdout=subprocess.PIPE, text=True)
                for _ in range(2)
            ]
            for reader in readers:
                assert reader.stdout.readline().strip() == "ready"
            mem.sample()  # both readers hold the whole segment now
            for reader in readers:
                reader.wait()
                reader.stdout.close()
    finally:
        segment.unlink(missing_ok=True)
    baseline, peak = mem.samples[0], mem.peak
    pss_growth = peak.pss_bytes - baseline.pss_bytes
    rss_growth = peak.rss_bytes - baseline.rss_bytes
    assert 0.9 * size < pss_growth < 1.5 * size  # the segment once (half in each reader), plus two interpreters
    assert rss_growth > 1.9 * size  # RSS counts the segment in both readers
    assert peak.shm_bytes > 0.5 * size  # machine-wide, so only loosely: other processes share /dev/shm


def _write_zeros(path: Path, size: int) -> None:
    with open(path, "wb") as f:
        f.write(bytes(size))
