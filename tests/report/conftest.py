"""A hand-made pipeline run directory (summary, histories, prepare summary) for the report tests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


def _history(stage_dir: Path, losses: list[float], ndcgs: list[float]) -> None:
    stage_dir.mkdir(parents=True)
    lines = [
        json.dumps({"epoch": i + 1, "step": 10 * (i + 1), "loss": loss, "valid_ndcg@10": ndcg})
        for i, (loss, ndcg) in enumerate(zip(losses, ndcgs, strict=True))
    ]
    (stage_dir / "history.jsonl").write_text("\n".join(lines) + "\n")
    (stage_dir / "tensorboard").mkdir()


def _metrics(ndcg: float, cold_hr: float | None = None) -> dict:
    metrics = {
        "valid": {"ndcg@10": ndcg + 0.01},
        "test": {"hr@10": 0.5, "ndcg@10": ndcg, "mrr@10": 0.2, "recall@10": 0.5, "coverage@10": 0.9, "num_users": 940},
    }
    if cold_hr is not None:
        metrics["test/cold_items"] = {"hr@10": cold_hr, "ndcg@10": cold_hr / 2, "num_users": 17.0}
    return metrics


def _make_run(root: Path) -> Path:
    run = root / "run"
    _history(run / "pretrain", [8.0, 7.5], [0.05, 0.08])
    _history(run / "finetune", [6.0, 5.0, 4.5], [0.10, 0.20, 0.25])
    _history(run / "student", [7.0, 6.0], [0.08, 0.18])
    (run / "prepare").mkdir()
    (run / "prepare" / "summary.json").write_text(
        json.dumps(
            {
                "dataset_path": "/cache/ds",
                "num_users": 123,
                "num_items": 45,
                "num_interactions": 6789,
                "num_dropped": {"duplicate": 3, "bad_rating": 0},
            }
        )
    )
    summary = {
        "finished_at": "2026-01-01T00:00:00Z",
        "seconds": 321.0,
        "models": {
            "teacher": {"metrics": _metrics(0.3125), "path": str(run / "export" / "teacher")},
            "student": {"metrics": _metrics(0.2875, cold_hr=0.125), "path": str(run / "export" / "student")},
            "student_no_kd": {"metrics": _metrics(0.2500)},
            "popularity": {"metrics": _metrics(0.1111)},
            "itemknn": {"metrics": _metrics(0.2222)},
        },
        "serve_smoke": {
            "user_id": "u7",
            "model_version": "student-x",
            "top_items": ["i3", "i9"],
            "latency_ms": {"first": 120.5, "p50": 9.25, "p90": 14.0, "max": 20.0, "requests": 21},
        },
        "stages": {"prepare": {"skipped": True, "seconds": 0.0}, "finetune": {"skipped": False, "seconds": 61.5}},
    }
    (run / "summary.json").write_text(json.dumps(summary))
    return run


@pytest.fixture
def make_run():
    """make_run(root) -> root/run, a finished pipeline run directory without a report yet."""
    return _make_run


@pytest.fixture
def write_history():
    """write_history(stage_dir, losses, ndcgs): a stage's history.jsonl (and a tensorboard folder)."""
    return _history


@pytest.fixture
def metrics_of():
    """metrics_of(ndcg, cold_hr=None): a model's metrics as the evaluate stage writes them."""
    return _metrics
