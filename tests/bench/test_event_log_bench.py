"""jobs/bench/event_log.py runs and writes its figures: the in-memory point, the durable points (group
commit shares fsyncs among concurrent appenders) and the reload."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_event_log_bench_writes_every_point(tmp_path: Path) -> None:
    command = [sys.executable, str(REPO / "jobs" / "bench" / "event_log.py"), "--out", str(tmp_path)]
    done = subprocess.run([*command, "--seconds", "0.3", "--threads", "1,4"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    result = json.loads((tmp_path / "bench_event_log.json").read_text())
    points = {p["name"]: p for p in result["points"]}
    assert set(points) == {"memory", "log-1", "log-4"}
    assert points["memory"]["fsyncs_per_call"] == 0 and points["log-1"]["fsyncs_per_call"] > 0
    assert all(p["calls"] > 0 and p["latency_ms"]["p99"] >= p["latency_ms"]["p50"] for p in points.values())
    written = points["log-1"]["calls"] + points["log-4"]["calls"]
    assert result["reload"]["records"] == written * 3  # every acknowledged record read back once
    assert [p for p in tmp_path.iterdir() if p.name.startswith("log-")] == []  # the log is removed after
    assert "reload:" in done.stdout
