"""report.html from a hand-made run directory: every section, numbers and embedded plots."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pandas as pd

from raysys.report import build_report
from raysys.report.report import history_frame


def _history(stage_dir: Path, losses: list[float], ndcgs: list[float]) -> None:
    stage_dir.mkdir(parents=True)
    lines = [
        json.dumps({"epoch": i + 1, "step": 10 * (i + 1), "loss": loss, "valid_ndcg@10": ndcg})
        for i, (loss, ndcg) in enumerate(zip(losses, ndcgs, strict=True))
    ]
    (stage_dir / "history.jsonl").write_text("\n".join(lines) + "\n")
    (stage_dir / "tensorboard").mkdir()


def _metrics(ndcg: float) -> dict:
    return {
        "valid": {"ndcg@10": ndcg + 0.01},
        "test": {"hr@10": 0.5, "ndcg@10": ndcg, "mrr@10": 0.2, "recall@10": 0.5, "coverage@10": 0.9},
    }


def make_run(root: Path) -> Path:
    run = root / "run"
    _history(run / "teacher", [6.0, 5.0, 4.5], [0.10, 0.20, 0.25])
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
            "teacher": {"metrics": _metrics(0.3125), "path": str(run / "teacher" / "model")},
            "student": {"metrics": _metrics(0.2875), "path": str(run / "student" / "model")},
            "popularity": {"metrics": _metrics(0.1111)},
            "itemknn": {"metrics": _metrics(0.2222)},
        },
        "serve_smoke": {
            "user_id": "u7",
            "model_version": "student-x",
            "top_items": ["i3", "i9"],
            "latency_ms": {"first": 120.5, "p50": 9.25, "p90": 14.0, "max": 20.0, "requests": 21},
        },
        "stages": {"prepare": {"skipped": True, "seconds": 0.0}, "teacher": {"skipped": False, "seconds": 61.5}},
    }
    (run / "summary.json").write_text(json.dumps(summary))
    return run


def _pngs(page: str) -> list[bytes]:
    return [base64.b64decode(b) for b in re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", page)]


def test_report_has_every_section_with_its_numbers(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    (tmp_path / "ablation.csv").write_text("variant,test_ndcg@10\nno_kd,0.2500\nfull,0.2875\n")
    (run / "tune").mkdir()
    pd.DataFrame({"trial_id": ["a", "b"], "best_valid_ndcg@10": [0.21, 0.27], "distill.lr": [1e-3, 2e-3]}).to_csv(
        run / "tune" / "results.csv", index=False
    )
    bench = tmp_path / "bench"
    bench.mkdir()
    (bench / "bench_serve.md").write_text("| items | max sustained req/s |\n| 1682 | 400 |\n")

    path = build_report(run, ablation=tmp_path / "ablation.csv", bench_serve=bench)

    assert path == run / "report.html"
    page = path.read_text()
    for heading in ("Data", "Training curves", "Metrics", "Tune results", "Ablation", "Serving", "Artifacts"):
        assert f"<h2>{heading}</h2>" in page
    assert "<td>6789</td>" in page and "<td>3 (duplicate: 3)</td>" in page
    assert "<td>0.3125</td>" in page and "<td>0.2875</td>" in page and "<td>0.1111</td>" in page
    assert page.index("0.27") < page.index("0.21")  # tune trials best first
    assert "no_kd" in page and "400" in page  # ablation rows and the load benchmark
    assert "<td>9.25</td>" in page and "i3, i9" in page  # smoke latency p50 and top items
    assert "teacher/tensorboard" in page and "skipped (up to date)" in page
    pngs = _pngs(page)
    assert len(pngs) == 2 and all(png.startswith(b"\x89PNG") for png in pngs)


def test_report_leaves_out_what_the_run_lacks(tmp_path: Path) -> None:
    run = tmp_path / "bare"
    run.mkdir()
    (run / "summary.json").write_text(json.dumps({"models": {"popularity": {"metrics": _metrics(0.1)}}}))

    page = build_report(run).read_text()

    assert "<h2>Metrics</h2>" in page
    for heading in ("Data", "Training curves", "Tune results", "Ablation", "Serving"):
        assert f"<h2>{heading}</h2>" not in page
    assert len(_pngs(page)) == 1  # the metrics bar chart only


def test_history_frame_orders_epochs(tmp_path: Path) -> None:
    _history(tmp_path / "teacher", [3.0, 2.0], [0.1, 0.2])
    frame = history_frame(tmp_path / "teacher")
    assert frame["epoch"].tolist() == [1, 2] and frame["loss"].tolist() == [3.0, 2.0]
    assert history_frame(tmp_path / "missing").empty
