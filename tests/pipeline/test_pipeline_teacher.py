"""The pipeline's teacher: `pretrain` (the self-supervised mix) then `finetune` (next item from
pretrain's weights), each its own resumable stage on Ray Train with 2 workers; `pipeline.pretrain=false`
skips pretraining; `raysys finetune` on its own; `pipeline.kd_control` trains the student without its
teacher beside the distilled one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from raysys.cli import main
from raysys.config import Config, config_from_dict, load_config
from raysys.errors import RaysysError
from raysys.models.export import load_model_dir
from raysys.pipeline import stages
from raysys.pipeline.runner import StageRunner, stage_hashes
from raysys.train.history import read_history

TINY_MODEL = {"hidden_size": 16, "num_layers": 1, "num_heads": 2, "dropout": 0.0}
TRAINING = {"batch_size": 64, "lr": 5e-3, "num_workers": 2, "cpus_per_worker": 0.5, "epochs": 2, "patience": 5}
SSL = {"weight_next_item": 0.0, "weight_masked_item": 1.0, "weight_contrastive": 0.1}


def tiny_cfg(tiny_data: dict, pretrain: bool, kd_control: bool = False) -> Config:
    return config_from_dict(
        {
            "data": tiny_data,
            "teacher": TINY_MODEL,
            "student": TINY_MODEL,
            "pretrain": {**TRAINING, **SSL},
            "finetune": TRAINING,
            "distill": {**TRAINING, "lambda_kd": 1.0, "lambda_ssl": 0.0},
            "eval": {"ks": [10]},
            "pipeline": {"pretrain": pretrain, "kd_control": kd_control},
        }
    )


def run_teacher(cfg: Config, root: Path) -> tuple[StageRunner, dict]:
    runner = StageRunner(root, stage_hashes(cfg), log=lambda line: None)
    stages.prepare(cfg, runner)
    return runner, stages.teacher(cfg, runner)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_pretrain_then_finetune_stages_on_two_workers_and_resume(ray_session, tiny_data: dict, tmp_path: Path) -> None:
    cfg = tiny_cfg(tiny_data, pretrain=True)
    runner, finetuned = run_teacher(cfg, tmp_path)

    pretrained = load_model_dir(tmp_path / "pretrain" / "model")
    assert pretrained.kind == "teacher"
    ssl = read_history(tmp_path / "pretrain")
    assert len(ssl) == 2 and all(r["masked_item"] > 0 and r["contrastive"] > 0 and r["next_item"] == 0 for r in ssl)
    assert finetuned["init_from"] == str((tmp_path / "pretrain" / "model").resolve())
    assert load_config(tmp_path / "finetune" / "config.yaml").finetune.init_from == finetuned["init_from"]
    tuned = read_history(tmp_path / "finetune")
    assert len(tuned) == 2 and all(r["next_item"] > 0 and r["masked_item"] == 0 for r in tuned)
    teacher = load_model_dir(tmp_path / "finetune" / "model")
    assert teacher.kind == "teacher" and teacher.metrics["valid"] == finetuned["metrics"]["valid"]
    changed = [
        name
        for name, weight in teacher.model.state_dict().items()
        if not torch.equal(weight, pretrained.model.state_dict()[name])
    ]
    assert changed  # the fine-tune trained on from the pretrained weights (same shapes, new values)
    assert runner.records["pretrain"]["skipped"] is False and runner.records["finetune"]["skipped"] is False
    assert stages.with_teacher(cfg, runner).distill.teacher == str((tmp_path / "finetune" / "model").resolve())

    again, summary = run_teacher(cfg, tmp_path)  # a rerun: both stages are done
    assert again.records["pretrain"]["skipped"] and again.records["finetune"]["skipped"]
    assert summary["metrics"] == finetuned["metrics"]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_without_pretraining_and_with_the_kd_control(ray_session, tiny_data: dict, tmp_path: Path) -> None:
    cfg = tiny_cfg(tiny_data, pretrain=False, kd_control=True)
    runner, finetuned = run_teacher(cfg, tmp_path)
    assert "pretrain" not in runner.records and not (tmp_path / "pretrain").exists()
    assert finetuned["init_from"] is None and finetuned["task"] == "next_item"  # from scratch
    assert load_model_dir(tmp_path / "finetune" / "model").kind == "teacher"

    stages.student(cfg, runner)
    stages.student_no_kd(cfg, runner)
    alone = load_config(tmp_path / "student_no_kd" / "config.yaml").distill
    assert alone.teacher is None and alone.lambda_kd == 0 and alone.epochs == cfg.distill.epochs
    assert all(r.get("kd", 0.0) == 0 for r in read_history(tmp_path / "student_no_kd"))
    assert all(r["kd"] > 0 for r in read_history(tmp_path / "student"))
    models = stages.evaluate(cfg, runner)["models"]
    assert set(models) == {"teacher", "student", "student_no_kd", "popularity", "itemknn"}
    assert 0 <= models["student_no_kd"]["metrics"]["test"]["ndcg@10"] <= 1


def test_the_pretrain_stage_refuses_a_fine_tune_task(tmp_path: Path) -> None:
    cfg = load_config(None, ["pipeline.pretrain=true", "pretrain.task=next_item"])
    with pytest.raises(RaysysError, match="pretrain.task"):
        stages.pretrain(cfg, StageRunner(tmp_path, stage_hashes(cfg)))


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_raysys_finetune_starts_from_a_pretrained_model(ray_session, tiny_data: dict, tmp_path: Path) -> None:
    config = tmp_path / "tiny.yaml"
    config.write_text(json.dumps(tiny_cfg(tiny_data, pretrain=False).to_dict()))  # JSON is YAML
    common = ["--config", str(config), "pretrain.num_workers=1", "finetune.num_workers=1", "finetune.epochs=1"]
    assert main(["pretrain", *common, "pretrain.epochs=1", "--out", str(tmp_path / "ssl")]) == 0
    model = tmp_path / "ssl" / "model"
    assert main(["finetune", *common, f"finetune.init_from={model}", "--out", str(tmp_path / "ft")]) == 0
    summary = json.loads((tmp_path / "ft" / "summary.json").read_text())
    assert summary["stage"] == "finetune" and summary["init_from"] == str(model) and summary["task"] == "next_item"
    assert summary["resolved"]["finetune.loss"]["value"] in ("full", "sampled")
    assert load_model_dir(summary["model_dir"]).kind == "teacher"
