"""jobs/bench/teacher_ladder.py: each run is the pipeline's pretrain -> finetune at a size and setting, the
time cap stops a run between epochs with its curve kept, and the best setting is chosen on valid."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from raysys.config import Config

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def ladder():
    spec = importlib.util.spec_from_file_location("teacher_ladder", REPO / "jobs" / "bench" / "teacher_ladder.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_setting_goes_to_its_sections(ladder) -> None:
    cfg = ladder.run_config(Config(), "512x8", "long_ssl", seed=2)
    assert (cfg.teacher.hidden_size, cfg.teacher.num_layers, cfg.teacher.num_heads) == (512, 8, 8)
    assert cfg.teacher.dropout == 0.3
    assert cfg.pretrain.epochs == 30 and cfg.finetune.epochs == Config().finetune.epochs
    assert cfg.pretrain.lr == cfg.finetune.lr == 0.001 and cfg.pretrain.weight_decay == cfg.finetune.weight_decay == 0.1
    assert cfg.pretrain.seed == cfg.finetune.seed == 2


def test_the_best_setting_is_the_best_mean_on_valid(ladder) -> None:
    rows = [
        {"size": "128x2", "setting": "shipped", "seed": 0, "valid_ndcg@10": 0.12, "test_ndcg@10": 0.30},
        {"size": "128x2", "setting": "reg", "seed": 0, "valid_ndcg@10": 0.14, "test_ndcg@10": 0.01},
        {"size": "128x2", "setting": "reg", "seed": 1, "valid_ndcg@10": 0.11, "test_ndcg@10": 0.01},
        {"size": "128x2", "setting": "heavy", "seed": 0, "error": "OutOfMemoryError"},
        {"size": "512x8", "setting": "heavy", "seed": 0, "capped": "finetune", "finetune_curve": [0.2]},
    ]
    assert ladder.best_settings(rows) == {"128x2": "reg"}  # mean 0.125 > 0.12; test never looked at


@pytest.mark.slow
def test_a_run_pretrains_then_fine_tunes_and_the_cap_keeps_the_curve(ladder, ray_session, tiny_data) -> None:
    from raysys.data.prepare import load_or_prepare

    training = {"epochs": 2, "batch_size": 32, "num_workers": 1}
    cfg = Config.model_validate({"data": tiny_data, "pretrain": training, "finetune": training})
    dataset_dir = str(load_or_prepare(cfg.data, progress=False).path)
    row = ladder.ladder_run(cfg, dataset_dir, "128x2", "reg", 0, "cpu", None, 1)
    assert row["non_embedding_params"] > 0
    assert row["pretrain"]["epochs_run"] == 2 and len(row["finetune"]["valid_curve"]) == 2
    assert row["valid_ndcg@10"] == max(row["finetune"]["valid_curve"])
    assert 0 <= row["test_ndcg@10"] <= 1

    capped = ladder.ladder_run(cfg, dataset_dir, "128x2", "reg", 0, "cpu", 1e-6, 1)
    assert capped["capped"] == "pretrain" and len(capped["pretrain_curve"]) == 1
