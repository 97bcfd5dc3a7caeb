"""jobs/bench/live_memory.py runs and writes its figures: evicted users reloaded through the user index
(each with its events, faster than a full scan) and a flood held within the store's byte budget."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_live_memory_bench_reloads_users_and_bounds_a_flood(tmp_path: Path) -> None:
    command = [sys.executable, str(REPO / "jobs" / "bench" / "live_memory.py"), "--out", str(tmp_path)]
    small = ["--events", "30000", "--users", "2000", "--samples", "50", "--flood", "40", "--warmup", "10"]
    done = subprocess.run([*command, *small], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "bench_live_memory.json").read_text())
    reload, flood = result["reload"], result["flood"]
    assert reload["events_per_reloaded_user"] > 10 and reload["store"]["sealed_segments"] >= 3
    assert 0 < reload["reload_p50_ms"] <= reload["reload_p99_ms"] < reload["full_scan_one_user_ms"]
    assert flood["requests"] == 40 and flood["store"]["bytes"] <= flood["budget_mib"] << 20
    assert flood["store"]["evicted"] > 0 and flood["rss_peak_growth_mib"] < flood["bound_mib"]
    assert [p for p in tmp_path.iterdir() if p.name.startswith("live-")] == []  # the logs are removed after
