"""`raysys evaluate` end to end: the ml-100k popularity reference figures (through the real
prepare pipeline), a model directory with and without fusion, on 1 and 2 Ray Train workers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from raysys.cli import main
from raysys.config import EvalConfig, StudentConfig
from raysys.eval.evaluator import evaluate_dataset
from raysys.models.export import export_model_dir
from raysys.models.student import build_student

ROOT = Path(__file__).resolve().parents[2]
ML100K_CONFIG = ROOT / "jobs" / "configs" / "ml100k.yaml"


def run_evaluate(out: Path, *flags: str) -> dict:
    assert main(["evaluate", "--out", str(out), "--quiet", *flags]) == 0
    return json.loads((out / "summary.json").read_text())


@pytest.mark.slow
def test_ml100k_popularity_reference(ray_session, ml100k_path, tmp_path, evaluated_parts):
    """Leave-one-out, no filters, history = train + valid items excluded, popularity counted over
    every user's train + valid items, ties against the target: test HR@10 0.0859, NDCG@10 0.0439."""
    data = [f"data.path={ml100k_path}", f"data.cache_dir={tmp_path / 'cache'}"]
    pop = run_evaluate(tmp_path / "pop", "--config", str(ML100K_CONFIG), "--baseline", "popularity", *data)
    test = pop["metrics"]["test"]
    assert test["num_users"] == 943
    assert abs(test["hr@10"] - 0.0859) < 5e-5 and abs(test["ndcg@10"] - 0.0439) < 5e-5
    assert test["recall@10"] == test["hr@10"]
    assert set(pop["metrics"]) == evaluated_parts
    assert pop["protocol"]["ties"] == "count against the target" and pop["scorer"] == {"baseline": "popularity"}
    knn = run_evaluate(tmp_path / "knn", "--config", str(ML100K_CONFIG), "--baseline", "itemknn", *data)
    assert knn["metrics"]["test"]["ndcg@10"] > test["ndcg@10"] + 0.03  # 0.088 vs 0.044


@pytest.fixture
def model_dir(make_dataset, random_sequences, tmp_path):
    """A tiny untrained student exported for a small random dataset, and that dataset."""
    dataset = make_dataset(random_sequences(1, num_users=60, num_items=30, max_length=12), 30)
    cfg = StudentConfig(hidden_size=16, num_layers=1, num_heads=1, dropout=0.0)
    torch.manual_seed(0)
    model = build_student(cfg, dataset.num_items, max_len=8).eval()
    out = export_model_dir(model, tmp_path / "model", dataset, kind="student", model_cfg=cfg, max_len=8, metrics={})
    return out, dataset, model


@pytest.mark.slow
def test_model_dir_with_fusion_on_one_and_two_workers(ray_session, model_dir, tmp_path, monkeypatch):
    path, dataset, model = model_dir
    monkeypatch.setattr("raysys.recipes.evaluate.load_or_prepare", lambda cfg, progress=True: dataset)
    plain = run_evaluate(tmp_path / "plain", "--model", str(path))
    expected = evaluate_dataset(lambda split: model.next_item_scores, dataset, EvalConfig(), max_len=8)
    assert plain["metrics"]["test"] == pytest.approx(expected["test"], abs=1e-9)
    assert plain["scorer"]["kind"] == "student" and "fusion" not in plain

    fused = run_evaluate(tmp_path / "fused", "--model", str(path), "--fuse", "popularity")
    fusion = fused["fusion"]
    assert fusion["baseline"] == "popularity" and fusion["weight"] in [i / 10 for i in range(11)]
    assert fusion["valid_grid"][str(fusion["weight"])] == max(fusion["valid_grid"].values())
    assert fused["metrics"]["valid"]["ndcg@10"] == pytest.approx(fusion["valid_grid"][str(fusion["weight"])])

    two = run_evaluate(tmp_path / "two", "--model", str(path), "--fuse", "popularity", "--num-workers", "2")
    assert two["fusion"]["weight"] == fusion["weight"]
    for part, metrics in fused["metrics"].items():
        assert two["metrics"][part] == pytest.approx(metrics, abs=1e-12)


def test_flags_are_checked(model_dir, tmp_path, monkeypatch, capsys, make_dataset):
    path, dataset, _ = model_dir
    monkeypatch.setattr("raysys.recipes.evaluate.load_or_prepare", lambda cfg, progress=True: dataset)
    assert main(["evaluate", "--out", str(tmp_path / "a")]) == 2
    assert "exactly one of --baseline" in capsys.readouterr().err
    assert main(["evaluate", "--out", str(tmp_path / "b"), "--baseline", "popularity", "--fuse", "itemknn"]) == 2
    assert "--fuse" in capsys.readouterr().err
    other = make_dataset([[2, 3, 4, 5]], 6)
    monkeypatch.setattr("raysys.recipes.evaluate.load_or_prepare", lambda cfg, progress=True: other)
    assert main(["evaluate", "--out", str(tmp_path / "c"), "--model", str(path)]) == 2
    assert "item vocabulary" in capsys.readouterr().err
