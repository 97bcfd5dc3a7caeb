"""Validation: every bad input gives a one-line error naming the file and the problem, and `raysys
prepare` exits 2 without a traceback; with data.on_bad_rows=drop bad rows are dropped and counted."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raysys import cli
from raysys.data.validate import parse_timestamps
from raysys.errors import RaysysError

HEADER = "user_id,item_id,timestamp\n"


@pytest.fixture
def prepare(monkeypatch, tmp_path: Path, capsys):
    """Run `raysys prepare KEY=VALUE...` in this process; returns (exit code, stderr, summary or None)."""
    monkeypatch.setattr(cli, "STAGES", {"prepare": cli.STAGES["prepare"]})  # only the stage under test

    def run(*overrides: str) -> tuple[int, str, dict | None]:
        out = tmp_path / "run"
        code = cli.main(["prepare", *overrides, f"data.cache_dir={tmp_path / 'cache'}", "--out", str(out), "--quiet"])
        summary = out / "summary.json"
        return code, capsys.readouterr().err, json.loads(summary.read_text()) if code == 0 else None

    return run


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def assert_user_error(result: tuple[int, str, dict | None], path: Path | str, *fragments: str) -> None:
    """Exit code 2 and exactly one `raysys prepare: error: <file>: ...` line holding every fragment.

    (In-process, stderr may also hold Ray's INFO lines; test_error_subprocess_has_no_traceback checks a
    real process's whole stderr.)"""
    code, err, _ = result
    lines = [ln for ln in err.splitlines() if ln.startswith("raysys prepare:")]
    assert code == 2, err
    assert "raysys.errors.RaysysError" not in err, err
    assert len(lines) == 1 and lines[0].startswith(f"raysys prepare: error: {path}"), err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_raysys_error_pickles_with_its_message() -> None:
    error = RaysysError("bad row", where="log.csv", hint="fix it")
    copy = pickle.loads(pickle.dumps(error))
    assert str(copy) == str(error) == "log.csv: bad row — fix it"
    assert (copy.where, copy.hint, copy.exit_code) == ("log.csv", "fix it", 2)


def test_timestamp_parsing_reasons() -> None:
    seconds, reason = parse_timestamps(pa.array(["100", "abc", None, "", "-4", "2020-01-01", " 7 ", "1.5e3"]))
    assert seconds.tolist()[5:] == [1577836800, 7, 1500] and seconds[0] == 100
    assert reason.tolist() == [0, 4, 3, 3, 5, 0, 0, 0]  # 3 missing, 4 unparsable, 5 negative
    _, reason = parse_timestamps(pa.array([1.5, float("nan"), None, -2.0, float("inf")]))
    assert reason.tolist() == [0, 3, 3, 5, 4]


# ---- file-level problems: found before any Ray work


def test_missing_path(prepare, tmp_path: Path) -> None:
    path = tmp_path / "nope.csv"
    assert_user_error(prepare(f"data.path={path}"), path, "no such file or directory")


def test_missing_columns(prepare, tmp_path: Path) -> None:
    path = write(tmp_path / "log.csv", "user_id,item_id,time\nu1,i1,1\n")
    assert_user_error(prepare(f"data.path={path}"), path, "missing column(s) 'timestamp'", "data.time_col")


def test_empty_file(prepare, tmp_path: Path) -> None:
    path = write(tmp_path / "log.csv", "")
    assert_user_error(prepare(f"data.path={path}"), path, "the file is empty")


def test_truncated_parquet(prepare, tmp_path: Path) -> None:
    whole = tmp_path / "whole.parquet"
    pq.write_table(pa.table({"user_id": ["u1"] * 100, "item_id": ["i1"] * 100, "timestamp": np.arange(100)}), whole)
    cut = tmp_path / "cut.parquet"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    assert_user_error(prepare(f"data.path={cut}"), cut, "not a readable Parquet file (truncated or corrupt")


def test_type_changed_between_files(prepare, tmp_path: Path) -> None:
    pq.write_table(pa.table({"user_id": ["u1"], "item_id": ["i1"], "timestamp": [1]}), tmp_path / "a.parquet")
    pq.write_table(pa.table({"user_id": ["u1"], "item_id": ["i1"], "timestamp": ["x"]}), tmp_path / "b.parquet")
    assert_user_error(
        prepare(f"data.path={tmp_path}", "data.format=parquet"),
        tmp_path / "b.parquet",
        "column 'timestamp' is string here but integer in",
        "a.parquet",
    )


# ---- row-level problems: found by Ray tasks, worded by the driver


@pytest.mark.slow
@pytest.mark.parametrize(
    ("body", "fragments"),
    [
        ("u1,i1,1\n,i2,2\n", ["line 3: user id (column 'user_id') is empty"]),
        ("u1,i1,1\nu1,,2\n", ["line 3: item id (column 'item_id') is empty"]),
        ("u1,i1,1\nu1,i2,\n", ["line 3: timestamp (column 'timestamp') is missing"]),
        ("u1,i1,1\nu1,i2,-5\n", ["line 3: timestamp (column 'timestamp') '-5' is negative"]),
        ("u1,i1,1\nu1,i2,yesterday\n", ["line 3: timestamp (column 'timestamp') 'yesterday' is not a number"]),
        ("u1,i1,1\nu1,i2,2\nu1,i1,1\n", ["line 2 and line 4 are the same interaction", "user 'u1', item 'i1'"]),
    ],
    ids=["empty-user", "empty-item", "null-time", "negative-time", "unparsable-time", "duplicate"],
)
def test_bad_rows_fail(ray_session, prepare, tmp_path: Path, body: str, fragments: list[str]) -> None:
    path = write(tmp_path / "log.csv", HEADER + body)
    assert_user_error(prepare(f"data.path={path}"), path, *fragments, "data.on_bad_rows=drop")


@pytest.mark.slow
def test_nan_timestamp_in_parquet(ray_session, prepare, tmp_path: Path) -> None:
    path = tmp_path / "log.parquet"
    pq.write_table(pa.table({"user_id": ["u1", "u1"], "item_id": ["i1", "i2"], "timestamp": [1.0, float("nan")]}), path)
    assert_user_error(prepare(f"data.path={path}"), path, "row 2: timestamp (column 'timestamp') is missing")


@pytest.mark.slow
def test_corrupt_parquet_pages(ray_session, prepare, tmp_path: Path) -> None:
    """A footer that reads but data pages that do not: the read task marks it, the driver words it."""
    path = tmp_path / "log.parquet"
    n = 5000
    pq.write_table(
        pa.table(
            {
                "user_id": [f"u{i % 50}" for i in range(n)],
                "item_id": [f"i{i % 70}" for i in range(n)],
                "timestamp": np.arange(n),
            }
        ),
        path,
    )
    data = bytearray(path.read_bytes())
    for offset in range(200, len(data) // 2, 37):
        data[offset] ^= 0xFF
    path.write_bytes(bytes(data))
    assert_user_error(prepare(f"data.path={path}"), path, "cannot read the file")


@pytest.mark.slow
def test_empty_input(ray_session, prepare, tmp_path: Path) -> None:
    path = write(tmp_path / "log.csv", HEADER)
    assert_user_error(prepare(f"data.path={path}"), path, "the log has no interactions")


@pytest.mark.slow
def test_drop_policy_counts_every_row(ray_session, prepare, tmp_path: Path) -> None:
    """kept + dropped (by reason) + filtered (k-core) = input rows; repeated consumption is kept."""
    path = write(
        tmp_path / "log.csv",
        HEADER
        + (
            "u1,i1,1\nu1,i2,2\nu1,i1,3\n"  # u1: i1 consumed twice at different times: 3 kept
            "u1,i2,2\n"  # duplicate of line 3
            ",i1,4\nu2,,5\nu2,i1,\nu2,i2,-1\nu2,i3,soon\n"  # one row per reason
            "u3,i1,1\nu3,i3,2\n"  # u3 has 2 interactions: removed by min_user_interactions=3
            "u4,i1,1\nu4,i2,2\nu4,i1,3\n"
        ),
    )
    code, err, summary = prepare(f"data.path={path}", "data.on_bad_rows=drop", "data.min_user_interactions=3")
    assert code == 0, err
    assert summary["num_dropped"] == {
        "missing_user_id": 1,
        "missing_item_id": 1,
        "missing_timestamp": 1,
        "unparsable_timestamp": 1,
        "negative_timestamp": 1,
        "bad_rating": 0,
        "duplicate": 1,
    }
    assert summary["num_input_rows"] == 14
    assert summary["num_filtered"] == 2  # u3's two rows (i3 then has no interactions either)
    assert summary["num_interactions"] == 6  # u1 and u4, three each
    assert (summary["num_users"], summary["num_items"]) == (2, 2)
    kept, dropped, filtered = summary["num_interactions"], sum(summary["num_dropped"].values()), summary["num_filtered"]
    assert kept + dropped + filtered == summary["num_input_rows"]


@pytest.mark.slow
def test_error_subprocess_has_no_traceback(tmp_path: Path) -> None:
    """The real command: a duplicate found inside a Ray task ends as one line on stderr and exit code 2."""
    path = write(tmp_path / "log.csv", HEADER + "u1,i1,1\nu1,i1,1\n")
    env = {**os.environ, "RAY_ADDRESS": "local"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "raysys.cli",
            "prepare",
            f"data.path={path}",
            f"data.cache_dir={tmp_path / 'cache'}",
            "--out",
            str(tmp_path / "run"),
            "--quiet",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and "Error" not in done.stderr.replace("error:", ""), done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith(f"raysys prepare: error: {path}: line 2 and line 3 are")
