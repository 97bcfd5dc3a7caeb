"""jobs/bench/sparse_defaults.py: the targets read validation figures only."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("sparse_defaults", REPO / "jobs" / "bench" / "sparse_defaults.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def summary(valid: dict[str, float], test: float) -> dict:
    metrics = {model: {"valid": {"ndcg@10": value}, "test": {"ndcg@10": test}} for model, value in valid.items()}
    return {"models": {model: {"metrics": m} for model, m in metrics.items()}}


def test_targets_read_validation_only(bench) -> None:
    valid = {"student": 0.20, "student_no_kd": 0.19, "teacher": 0.21, "itemknn": 0.15, "popularity": 0.05}
    tune = {"best": {"valid_ndcg@10": 0.205, "values": {"distill.lr": 0.001}}}
    result = bench.figures(summary(valid, test=0.0), tune)
    assert result["share_of_tuned"] == pytest.approx(0.976)
    assert all(result["targets"].values())
    worse = bench.figures(summary({**valid, "itemknn": 0.25}, test=0.9), {"best": {"valid_ndcg@10": 0.3, "values": {}}})
    assert worse["targets"] == {"beats_itemknn": False, "beats_student_no_kd": True, "share_of_tuned>=0.95": False}
    without_control = dict(valid)
    del without_control["student_no_kd"]
    assert not bench.figures(summary(without_control, 0.0), tune)["targets"]["beats_student_no_kd"]


def test_bad_arguments_are_refused(bench) -> None:
    with pytest.raises(SystemExit):
        bench.parse_args(["--trials", "0"])


def test_trials_lists_the_search_best_first(bench, tmp_path: Path) -> None:
    (tmp_path / "results.csv").write_text(
        "trial_id,status,best_valid_ndcg@10,iterations,distill.lr,student.dropout,teacher.arch,trial_dir\n"
        "b,TERMINATED,0.12346,20,0.002,0.1,llama,/x/b\n"
        "a,TERMINATED,0.05,2,0.0005,0.3,gpt2,/x/a\n"
    )
    rows = bench.trials(tmp_path, ["distill.lr", "student.dropout", "teacher.arch"])
    assert [(r["trial_id"], r["valid_ndcg@10"], r["epochs"]) for r in rows] == [("b", 0.1235, 20), ("a", 0.05, 2)]
    assert rows[0]["values"] == {"distill.lr": 0.002, "student.dropout": 0.1, "teacher.arch": "llama"}
