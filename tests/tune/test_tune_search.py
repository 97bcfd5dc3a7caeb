"""Ray Tune search end to end on tiny synthetic data: the CLI's outputs (best.yaml, results.csv, plots,
TensorBoard), Optuna with a trial that fails once and is retried, PBT exploiting a donor's
checkpoint, and the tune driver killed mid-search and restarted. Tiny student (hidden 16, one layer),
direct trials, no teacher (lambda_kd = 0)."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from raysys.cli import main
from raysys.config import load_config
from raysys.data.prepare import load_or_prepare
from raysys.errors import RaysysError
from raysys.train.checkpoint import read_state
from raysys.tune.results import trial_table
from raysys.tune.search import experiment_dir, run_search
from raysys.tune.space import check_space, config_point, param_space, trial_config
from raysys.tune.trainable import FAIL_MARKER, METRIC, direct_config, read_trial_identity

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(300)

TINY_SPACE = {
    "distill.lr": {"kind": "loguniform", "low": 1e-3, "high": 2e-2, "grid": [2e-3, 1e-2]},
    "distill.lambda_ssl": {"kind": "uniform", "low": 0.0, "high": 0.5},
}


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory, tiny_data: dict) -> Path:
    """The tiny synthetic data, a tiny student, 3 epochs, no teacher."""
    root = tmp_path_factory.mktemp("tune")
    config = {
        "data": tiny_data,
        "student": {"hidden_size": 16, "num_layers": 1, "num_heads": 2, "dropout": 0.0},
        "distill": {"epochs": 3, "batch_size": 64, "lr": 5e-3, "lambda_kd": 0.0, "lambda_ssl": 0.1, "patience": 5},
        "eval": {"ks": [10]},
        "tune": {"num_samples": 2, "max_concurrent": 2, "cpus_per_trial": 1, "grace_period": 1, "space": TINY_SPACE},
    }
    path = root / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def dataset(cfg):
    """The prepared dataset the tune stage resolves once and hands to every trial."""
    return load_or_prepare(cfg.data, progress=False)


# ------------------------------------------------------------------------------------ fast checks


def space(key: str, kind: str, low: float, high: float) -> str:
    """A `tune.space=` override searching one key (dotted overrides cannot reach into the space's
    dotted keys, so the space is given whole)."""
    return f"tune.space={{{key}: {{kind: {kind}, low: {low}, high: {high}}}}}"


def test_space_errors_name_the_key(tiny_config: Path) -> None:
    with pytest.raises(RaysysError, match=r"tune.space.distill.nope: 'distill.nope' is not a config key"):
        check_space(load_config(tiny_config, [space("distill.nope", "uniform", 0, 1)]))
    with pytest.raises(RaysysError, match=r"tune.space.distill.lr: kind loguniform needs low > 0"):
        check_space(load_config(tiny_config, [space("distill.lr", "loguniform", 0, 1)]))
    with pytest.raises(RaysysError, match=r"tune.space.student.dropout: value 1.5 is not valid"):
        check_space(load_config(tiny_config, [space("student.dropout", "uniform", 0, 1.5)]))
    with pytest.raises(RaysysError, match=r"distill.lambda_kd is searched but distill.teacher is not set"):
        check_space(load_config(tiny_config, [space("distill.lambda_kd", "uniform", 0, 1)]))


def test_trial_config_fills_the_searched_values(tiny_config: Path) -> None:
    cfg = load_config(tiny_config, ["tune.searcher=grid"])
    assert param_space(cfg.tune)["distill.lr"] == {"grid_search": [2e-3, 1e-2]}
    filled = trial_config(cfg.to_dict(), {"distill.lr": 0.004, "distill.lambda_ssl": 0.25})
    assert filled.distill.lr == 0.004 and filled.distill.lambda_ssl == 0.25
    assert filled.distill.epochs == cfg.distill.epochs and filled.student == cfg.student


def test_the_search_starts_from_the_config_values_when_they_lie_inside_the_space(tiny_config: Path) -> None:
    assert config_point(load_config(tiny_config)) == {"distill.lr": 5e-3, "distill.lambda_ssl": 0.1}
    assert config_point(load_config(tiny_config, ["distill.lr=0.5"])) is None  # outside [1e-3, 2e-2]


def test_a_direct_trial_trains_on_the_global_batch_of_the_ray_run_it_stands_for(tiny_config: Path) -> None:
    cfg = load_config(tiny_config, ["distill.num_workers=2", "distill.lr=0.004"])
    section = direct_config(cfg).distill
    assert section.batch_size == 2 * 64 and section.lr == 0.004 and cfg.distill.batch_size == 64


# ------------------------------------------------------------------------------------ Ray Tune


@pytest.mark.slow
def test_cli_grid_asha_writes_best_config_results_plots_and_tensorboard(
    ray_session, tiny_config: Path, tmp_path: Path, capfd: pytest.CaptureFixture
) -> None:
    out = tmp_path / "run"
    assert (
        main(["tune", "--config", str(tiny_config), "tune.searcher=grid", "tune.num_samples=1", "--out", str(out)]) == 0
    )
    assert "Ray dashboard at" in capfd.readouterr().out  # the console writes to the terminal (fd 1)
    summary = json.loads((out / "summary.json").read_text())
    table = pd.read_csv(out / "results.csv")
    assert len(table) == 2 and sorted(table["distill.lr"]) == [2e-3, 1e-2]  # the grid, once each
    assert summary["trials"] == {
        "total": 2,
        "terminated": 2,
        "errored": 0,
        "iterations": int(table["iterations"].sum()),
    }
    assert table["best_valid_ndcg@10"].iloc[0] == table["best_valid_ndcg@10"].max() == summary["best"][METRIC]
    assert 0 < summary["best"][METRIC] <= 1 and table["iterations"].between(1, 3).all()

    best = load_config(out / "best.yaml")  # the file `raysys distill --config` reads
    assert (
        best.distill.lr == table["distill.lr"].iloc[0]
        and best.distill.lambda_ssl == table["distill.lambda_ssl"].iloc[0]
    )
    assert best.student == load_config(tiny_config).student and best.data.max_len == 10
    assert summary["best"]["values"] == {"distill.lr": best.distill.lr, "distill.lambda_ssl": best.distill.lambda_ssl}

    assert all(Path(p).stat().st_size > 1000 for p in summary["plots"]) and len(summary["plots"]) == 3
    for trial_dir in table["trial_dir"]:
        assert list(Path(trial_dir).glob("events.out.tfevents.*")), trial_dir  # tensorboard --logdir RUN
        assert Path(trial_dir).parent == experiment_dir(out)


@pytest.mark.slow
def test_optuna_trial_that_raises_once_is_retried_and_completes(ray_session, tiny_config: Path, tmp_path: Path) -> None:
    cfg = load_config(tiny_config, ["tune.searcher=optuna", "tune.scheduler=none", "tune.max_failures=1"])
    grid = run_search(cfg, tmp_path, dataset(cfg), fail_in_epoch=2)
    assert len(grid) == 2 and grid.num_errors == 0
    for result in grid:
        assert (Path(result.path) / FAIL_MARKER).exists()  # its process did die
        history = result.metrics_dataframe
        assert result.metrics["training_iteration"] == 3 and list(history["epoch"]) == [1, 2, 3]
        state = read_state(result.checkpoint.path)
        assert state["epoch"] == 3 and state["resumed_from"] == [state["history"][0]["step"]]  # from epoch 1
        assert 1e-3 <= result.config["distill.lr"] <= 2e-2  # TPE sampled inside the space
    starts = [r.config for r in grid if r.config["distill.lr"] == 5e-3 and r.config["distill.lambda_ssl"] == 0.1]
    assert len(starts) == 1  # tune.start_from_config: one trial ran the config's own values


@pytest.mark.slow
def test_ray_train_trials_launch_a_trainer_and_report_through_tune(
    ray_session, tiny_config: Path, tmp_path: Path
) -> None:
    overrides = [
        "tune.trial_mode=ray_train",
        "tune.scheduler=none",
        "tune.num_samples=1",
        "distill.epochs=2",
        "distill.num_workers=1",
        "distill.cpus_per_worker=0.5",
    ]
    cfg = load_config(tiny_config, overrides)
    grid = run_search(cfg, tmp_path, dataset(cfg))
    assert len(grid) == 1 and grid.num_errors == 0
    result = grid[0]
    assert result.metrics["training_iteration"] == 2 and list(result.metrics_dataframe["epoch"]) == [1, 2]
    assert 0 < result.metrics["valid_ndcg@10"] <= 1


@pytest.mark.slow
def test_pbt_exploit_resumes_from_the_donors_checkpoint(ray_session, tiny_config: Path, tmp_path: Path) -> None:
    # One trial barely learns (lr 1e-5), the other does: at epoch 2 the weak one copies the strong one
    # and trains epoch 3 from its weights. Synchronous PBT: otherwise a trial this small can finish
    # before the other one starts.
    overrides = [
        "tune.searcher=grid",
        "tune.scheduler=pbt",
        "tune.num_samples=1",
        "tune.perturbation_interval=2",
        "tune.quantile_fraction=0.5",
        "tune.resample_probability=0",
        "tune.synch=true",
        "tune.space={distill.lr: {kind: loguniform, low: 1.0e-5, high: 3.0e-2, grid: [1.0e-5, 1.0e-2]}}",
        "distill.schedule=constant",
    ]
    cfg = load_config(tiny_config, overrides)
    grid = run_search(cfg, tmp_path, dataset(cfg))
    assert len(grid) == 2 and grid.num_errors == 0
    table = trial_table(grid, cfg)
    weak = next(r for r in grid if r.metrics_dataframe["lr"].iloc[0] == 1e-5)
    strong = next(r for r in grid if r is not weak)
    weak_id, strong_id = (r.metrics_dataframe["trial_id"].iloc[0] for r in (weak, strong))

    identity = read_trial_identity(weak.checkpoint.path)  # the weak trial's own last checkpoint
    assert identity.trial_id == weak_id and read_state(weak.checkpoint.path)["epoch"] == 3
    assert identity.lineage == [{"from_trial": strong_id, "at_epoch": 2}]
    history = weak.metrics_dataframe
    assert list(history["epoch"]) == [1, 2, 3] and list(history["exploits"]) == [0, 0, 1]
    # Epoch 3 started from the donor's epoch-2 weights: it scores like the strong trial, not the weak one.
    assert history[METRIC].iloc[2] > history[METRIC].iloc[1] + 0.1
    # The restored optimizer runs at the trial's own explored lr (the donor's x1.2 or x0.8), not the donor's.
    assert math.isclose(history["lr"].iloc[2], weak.config["distill.lr"]) and weak.config["distill.lr"] != 1e-2
    assert read_trial_identity(strong.checkpoint.path).lineage == []
    assert table.loc[table["trial_id"] == strong_id, "exploits"].item() == 0


@pytest.mark.slow
def test_killed_driver_resumes_and_every_trial_finishes_once(ray_session, tiny_config: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    command = [sys.executable, "-m", "raysys.cli", "tune", "--config", str(tiny_config), "--out", str(out)]
    command += ["tune.num_samples=2", "tune.max_concurrent=1", "tune.scheduler=none"]
    # The driver joins the session's cluster, so killing it kills only the driver and its trials.
    env = {**os.environ, "RAY_ADDRESS": ray_session.get_runtime_context().gcs_address}
    first = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for_first_result(out, first)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert not (out / "summary.json").exists()
    second = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resuming the Tune experiment" in second.stderr

    table = pd.read_csv(out / "results.csv")
    assert len(table) == 2 and table["trial_id"].is_unique  # none duplicated, none lost
    assert (table["status"] == "TERMINATED").all() and (table["iterations"] == 3).all()
    # A trial the killed driver had started but not yet saved in the experiment state is started again
    # under the same id (a second folder): no trial id beyond the finished ones.
    folder_ids = {"_".join(p.name.split("_")[2:4]) for p in experiment_dir(out).glob("direct_trial_*")}
    assert folder_ids == set(table["trial_id"])
    for trial_dir in table["trial_dir"]:
        progress = pd.read_csv(Path(trial_dir) / "progress.csv")
        assert sorted(set(progress["epoch"])) == [1, 2, 3]


def _wait_for_first_result(out: Path, process: subprocess.Popen, timeout_s: float = 120) -> None:
    """Until some trial has reported an epoch (its result.json is not empty)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if any(p.stat().st_size > 0 for p in out.glob("tune/direct_trial_*/result.json")):
            return
        assert process.poll() is None, "the tune driver exited before any trial reported"
        time.sleep(0.5)
    raise AssertionError("no trial reported within the timeout")
