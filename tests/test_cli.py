"""The command line: --help, a prepare run's outputs, config errors, and the jobs/ entry file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from raysys import cli

ROOT = Path(__file__).resolve().parents[1]


def run_command(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAY_ADDRESS": "local"}  # a fresh local Ray, not the test session's
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, env=env, timeout=timeout)


def test_help_lists_every_stage() -> None:
    done = run_command("-m", "raysys.cli", "--help")
    assert done.returncode == 0, done.stderr
    for stage in cli.STAGES:
        assert stage in done.stdout
    done = run_command("-m", "raysys.cli", "prepare", "--help")
    assert done.returncode == 0 and "--quiet" in done.stdout and "--config" in done.stdout


def test_config_error_is_one_line_and_exit_2(monkeypatch, tmp_path: Path, capsys) -> None:
    monkeypatch.setattr(cli, "STAGES", {"prepare": cli.STAGES["prepare"]})
    code = cli.main(["prepare", "data.min_user_interactions=many", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert err.startswith("raysys prepare: error: ") and "data.min_user_interactions" in err


@pytest.mark.slow
def test_prepare_writes_summary_config_and_manifest(ray_session, monkeypatch, tmp_path: Path, capsys) -> None:
    monkeypatch.setattr(cli, "STAGES", {"prepare": cli.STAGES["prepare"]})
    log = tmp_path / "log.csv"
    log.write_text("user_id,item_id,timestamp,rating\nu1,i1,1,5\nu1,i2,2,4\nu1,i3,3,3\nu2,i1,1,2\n")
    out = tmp_path / "run"
    code = cli.main(["prepare", f"data.path={log}", f"data.cache_dir={tmp_path / 'cache'}", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stage"] == "prepare" and summary["cache_hit"] is False and summary["seconds"] > 0
    assert (summary["num_users"], summary["num_items"], summary["num_interactions"]) == (2, 3, 4)
    assert (summary["num_valid"], summary["num_test"], summary["num_input_rows"]) == (1, 1, 4)
    assert summary["has_ratings"] is True and Path(summary["dataset_path"]).is_dir()
    assert (out / "config.yaml").is_file() and (out / "data_manifest.json").is_file()
    code = cli.main(["prepare", f"data.path={log}", f"data.cache_dir={tmp_path / 'cache'}", "--out", str(out)])
    assert code == 0 and json.loads((out / "summary.json").read_text())["cache_hit"] is True


@pytest.mark.slow
def test_job_file_runs_from_the_repo_root(tmp_path: Path) -> None:
    """`python jobs/prepare.py --config jobs/configs/quickstart.yaml ...` (a small synthetic log)."""
    out = tmp_path / "run"
    done = run_command(
        "jobs/prepare.py",
        "--config",
        "jobs/configs/quickstart.yaml",
        "data.synthetic.num_users=100",
        "data.synthetic.num_items=50",
        "data.synthetic.num_interactions=1500",
        f"data.cache_dir={tmp_path / 'cache'}",
        "--out",
        str(out),
        "--quiet",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_input_rows"] == 1500 and summary["has_text"] is True
