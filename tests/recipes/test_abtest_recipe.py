"""`raysys abtest` on an A/B log written by the event log's writers: abtest.json, summary.json, the
report's A/B section, the time window, and clear errors (exit 2) for what cannot be analysed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from raysys.cli import main
from raysys.data.ab_log import AB_DIR, AB_SCHEMA
from raysys.data.event_log import EventLogWriter
from raysys.eval.ab_simulation import simulate_log


def write_ab_log(event_log: Path, ctr: dict[str, float], users: int = 1500) -> int:
    """A simulated test written through two writers (two replicas) into EVENT_LOG/ab; its record count."""
    records = simulate_log(users, ctr, seed=3).drop_columns(["writer", "seq"]).to_pylist()
    with (
        EventLogWriter(event_log / AB_DIR, "r0", schema=AB_SCHEMA, seal_records=500) as first,
        EventLogWriter(event_log / AB_DIR, "r1", schema=AB_SCHEMA) as second,
    ):
        for n, record in enumerate(records):
            (first if n % 2 else second).append([record])
    return len(records)


def test_abtest_writes_the_analysis_the_summary_and_the_report(tmp_path: Path, capfd) -> None:
    log = tmp_path / "event_log"
    count = write_ab_log(log, {"a": 0.10, "b": 0.16})
    out = tmp_path / "abtest"
    overrides = ["serve.variants=[{name: a}, {name: b}]", f"abtest.event_log={log}"]
    assert main(["abtest", *overrides, "--out", str(out)]) == 0
    result = json.loads((out / "abtest.json").read_text())
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stage"] == "abtest" and summary["variants"] == result["variants"]
    assert result["records"] == count and result["control"] == "a" and result["significant"] is True
    for name in ("a", "b"):
        v = result["variants"][name]
        assert {"users", "impressions", "clicks", "ctr", "ctr_ci95"} <= set(v)
    assert result["variants"]["b"]["ctr"] > result["variants"]["a"]["ctr"] and result["p_value"] < 0.05
    page = (out / "report.html").read_text()
    assert "<h2>A/B test</h2>" in page and "b</td>" in page
    assert "A/B test (unit: user)" in capfd.readouterr().out

    # A window with nothing in it, or a control without impressions: a clear error, exit 2
    assert main(["abtest", *overrides, "abtest.since=1e9", "--out", str(tmp_path / "empty")]) == 2
    assert "no impressions logged" in capfd.readouterr().err
    assert main(["abtest", *overrides, "abtest.control=z", "--out", str(tmp_path / "z")]) == 2
    assert "'z' has no impressions" in capfd.readouterr().err


def test_abtest_without_a_log_is_a_clear_error(tmp_path: Path, capfd) -> None:
    assert main(["abtest", "--out", str(tmp_path / "a")]) == 2
    assert "no event log to read" in capfd.readouterr().err
    assert main(["abtest", f"abtest.event_log={tmp_path / 'none'}", "--out", str(tmp_path / "b")]) == 2
    assert "no event log here" in capfd.readouterr().err


@pytest.mark.parametrize("window", [("abtest.until=100",), ("abtest.since=100", "abtest.until=200")])
def test_the_time_window_keeps_only_its_records(tmp_path: Path, window: tuple[str, ...]) -> None:
    log = tmp_path / "event_log"
    write_ab_log(log, {"a": 0.1, "b": 0.1}, users=100)  # simulated timestamps are 0, 1, 2, ...
    out = tmp_path / "w"
    assert main(["abtest", f"abtest.event_log={log}", *window, "--out", str(out)]) == 0
    assert json.loads((out / "abtest.json").read_text())["records"] == 100
