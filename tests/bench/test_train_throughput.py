"""jobs/bench/train_throughput.py: the figures taken from a run's history, the ratios and targets, and a
real side-by-side run of both paths on a shrunken sparse preset."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from raysys.bench.commands import TimedRun

REPO = Path(__file__).resolve().parents[2]


def _bench():
    spec = importlib.util.spec_from_file_location("train_throughput", REPO / "jobs" / "bench" / "train_throughput.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _record(epoch: int, items_per_s: float, train: float, whole: float, ndcg: float) -> dict:
    record = {"epoch": epoch, "items_per_s": items_per_s, "train_seconds": train, "seconds": whole}
    return {**record, "valid_ndcg@10": ndcg, "checkpoint_seconds": 0.5}


def test_figures_leave_out_the_warm_up_epoch_and_keep_the_last_ndcg() -> None:
    history = [_record(1, 100.0, 9.0, 10.0, 0.1), _record(2, 300.0, 3.0, 4.0, 0.2), _record(3, 500.0, 2.0, 3.0, 0.25)]
    figures = _bench().run_figures(TimedRun(Path("x"), 30.0, None, None, {}, history))
    assert figures["targets_per_s"] == 400.0 and figures["seconds_per_epoch"] == 3.5
    assert figures["train_seconds_per_epoch"] == 2.5 and figures["validation_seconds_per_epoch"] == 1.0
    assert figures["valid_ndcg@10"] == 0.25 and figures["epochs"] == 3 and figures["wall_seconds"] == 30.0
    assert figures["checkpoint_seconds_per_epoch"] == 0.5 and figures["outside_epochs_seconds"] == 30.0 - 17.0 - 1.5
    one = _bench().run_figures(TimedRun(Path("x"), 5.0, None, None, {}, history[:1]))
    assert one["targets_per_s"] == 100.0  # a single epoch is all there is


def test_ratios_and_targets() -> None:
    bench = _bench()

    def paths(old: float, new: float) -> dict:
        old_run = {"targets_per_s": old, "valid_ndcg@10": 0.1}
        return {"paths": {"old": old_run, "new": {"targets_per_s": new, "valid_ndcg@10": 0.12}}}

    datasets = {"ml100k": paths(1000, 1000), "sparse": paths(200, 600), "catalog100k": paths(50, 200)}
    assert bench.ratios(datasets)["sparse"] == {"targets_per_s_new_over_old": 3.0, "valid_ndcg@10_new_minus_old": 0.02}
    met = bench.targets(datasets)
    assert met["sparse_targets_per_s_share_of_ml100k"] == {"need": ">= 0.5", "value": 0.6, "met": True}
    assert met["catalog100k_targets_per_s_share_of_ml100k"]["met"] is False  # 0.2 < 0.25
    assert bench.targets({"sparse": paths(1, 1)})["sparse_targets_per_s_share_of_ml100k"]["met"] is None


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(SystemExit):
        _bench().parse_args(["--datasets", "ml1m"])
    with pytest.raises(SystemExit):
        _bench().parse_args(["--epochs", "0"])


@pytest.mark.slow
def test_both_paths_run_side_by_side(tmp_path: Path) -> None:
    shrink = [
        "data.synthetic.num_users=300",
        "data.synthetic.num_items=150",
        "data.synthetic.num_interactions=3000",
        "data.synthetic.num_topics=5",
        "data.max_len=20",
        "teacher.hidden_size=16",
        "teacher.num_layers=1",
        "finetune.batch_size=64",
        "finetune.num_workers=1",
    ]
    cmd = [sys.executable, "jobs/bench/train_throughput.py", "--epochs", "2", "--datasets", "sparse"]
    cmd += ["--out", str(tmp_path)]
    cmd += [arg for override in shrink for arg in ("--set", override)]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads((tmp_path / "throughput.json").read_text())
    runs = results["datasets"]["sparse"]["paths"]
    for path in ("old", "new"):
        assert runs[path]["targets_per_s"] > 0 and runs[path]["epochs"] == 2 and 0 <= runs[path]["valid_ndcg@10"] <= 1
    assert {"finetune.length_buckets=0", "finetune.loss=full"} <= set(runs["old"]["overrides"])
    assert not {"finetune.length_buckets=0", "finetune.loss=full"} & set(runs["new"]["overrides"])  # the defaults
    assert results["ratios"]["sparse"]["targets_per_s_new_over_old"] > 0
    assert "| sparse | new |" in (tmp_path / "throughput.md").read_text()
    assert runs["new"]["checkpoint_seconds_per_epoch"] > 0 and runs["new"]["outside_epochs_seconds"] > 0
