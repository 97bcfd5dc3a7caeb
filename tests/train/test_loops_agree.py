"""The three drivers run one loop: the in-process loop (`train_local`), a direct Tune trial under a
one-trial Tuner (`run_search`) and a Ray Train run with one worker (`fit`, DeepSpeed ZeRO 0) take the
same optimizer steps with the same losses, for every task, with every source of randomness on
(shuffling, dropout, Cloze masks, contrastive augmentations, sampled click negatives), grad_accum 3
and a partial accumulation at each epoch's end. A Ray run killed in epoch 2 and resumed from epoch
1's checkpoint retraces the uninterrupted run step for step."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from raysys.config import Config, config_from_dict
from raysys.data.batches import training_parts
from raysys.data.dataset import PreparedDataset
from raysys.data.prepare import load_or_prepare
from raysys.train.history import read_history
from raysys.train.local import train_local
from raysys.train.loop import steps_per_epoch
from raysys.train.ray_train import FAIL_MARKER, fit
from raysys.train.tasks import task_for
from raysys.tune.search import run_search

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

GRAD_ACCUM = 3
BATCH = 24
TEACHER = {"arch": "gpt2", "hidden_size": 24, "num_layers": 1, "num_heads": 2, "dropout": 0.1}
STUDENT = {"hidden_size": 16, "num_layers": 1, "num_heads": 2, "dropout": 0.1}
TRAINING = {
    "epochs": 2,
    "batch_size": BATCH,
    "grad_accum": GRAD_ACCUM,
    "lr": 5e-3,
    "warmup_steps": 2,
    "num_workers": 1,
    "cpus_per_worker": 0.5,
    "patience": 5,
}
TASKS = {
    "pretrain": ("pretrain", {"pretrain": {"weight_masked_item": 0.5, "weight_contrastive": 0.2}}),
    "distill": ("distill", {"distill": {"lambda_ssl": 0.2, "lambda_kd": 1.0, "lambda_hidden": 0.5}}),
    "ctr": ("pretrain", {"pretrain": {"task": "ctr", "ctr_negatives": 2}}),
}


@pytest.fixture(scope="module")
def base(tiny_data: dict, ray_session, tmp_path_factory) -> dict:
    """The shared config (as a dict) with a tiny exported teacher for the distillation task."""
    raw = {
        "data": tiny_data,
        "teacher": TEACHER,
        "student": STUDENT,
        "pretrain": dict(TRAINING),
        "distill": dict(TRAINING),
        "eval": {"ks": [10]},
        "tune": {"searcher": "grid", "scheduler": "none", "num_samples": 1, "cpus_per_trial": 1},
    }
    cfg = config_from_dict(raw)
    dataset = load_or_prepare(cfg.data, progress=False)
    teacher_cfg = cfg.model_copy(update={"pretrain": cfg.pretrain.model_copy(update={"epochs": 1})})
    outcome = train_local(teacher_cfg, "pretrain", dataset)
    out = tmp_path_factory.mktemp("teacher")
    raw["distill"]["teacher"] = task_for(cfg, "pretrain").export(outcome.model, out, dataset, outcome.metrics)[
        "model_dir"
    ]
    return raw


def task_config(base: dict, name: str) -> tuple[Config, str]:
    stage, updates = TASKS[name]
    raw = json.loads(json.dumps(base))
    for section, values in updates.items():
        raw[section].update(values)
    section = "distill" if stage == "distill" else "pretrain"
    raw["tune"].update(stage=stage, space={f"{section}.lr": {"kind": "choice", "values": [5e-3], "grid": [5e-3]}})
    return config_from_dict(raw), stage


def step_losses(history: list[dict]) -> list[float]:
    return [loss for record in history for loss in record["step_losses"]]


@pytest.mark.parametrize("name", list(TASKS))
def test_the_three_drivers_take_the_same_steps(name: str, base: dict, tmp_path: Path) -> None:
    cfg, stage = task_config(base, name)
    dataset = load_or_prepare(cfg.data, progress=False)
    task = task_for(cfg, stage)
    rows = task.rows(training_parts(dataset.sequences(task.columns(dataset))), dataset.num_items)
    batches = -(-len(rows) // BATCH)
    assert batches % GRAD_ACCUM != 0, "the data must leave a partial accumulation at each epoch's end"
    per_epoch = steps_per_epoch(len(rows), BATCH, GRAD_ACCUM)

    local = step_losses(train_local(cfg, stage, dataset).history)
    grid = run_search(cfg, tmp_path / "tune", dataset)
    assert len(grid) == 1 and grid.num_errors == 0
    tuned = step_losses(read_history(Path(grid[0].path)))
    ray = step_losses(fit(cfg, stage, tmp_path / "ray", dataset).history)

    print(f"{name}: {len(rows)} rows, {per_epoch} steps per epoch; local {local[:3]}... ray {ray[:3]}...")
    assert len(local) == 2 * per_epoch and np.isfinite(local).all()
    np.testing.assert_allclose(tuned, local, rtol=1e-4)
    np.testing.assert_allclose(ray, local, rtol=1e-4)


def test_a_ray_run_killed_in_epoch_two_resumes_step_for_step(base: dict, tmp_path: Path) -> None:
    cfg, stage = task_config(base, "pretrain")
    dataset: PreparedDataset = load_or_prepare(cfg.data, progress=False)
    cfg = cfg.model_copy(update={"pretrain": cfg.pretrain.model_copy(update={"max_failures": 1})})
    whole = fit(cfg, stage, tmp_path / "whole", dataset)
    per_epoch = len(whole.history[0]["step_losses"])
    resumed = fit(cfg, stage, tmp_path / "killed", dataset, fail_in_epoch=2)
    assert (tmp_path / "killed" / FAIL_MARKER).exists()  # the worker died after epoch 2's first step
    state = json.loads((resumed.checkpoint / "train_state.json").read_text())
    assert state["resumed_from"] == [per_epoch]  # from epoch 1's checkpoint
    assert [r["epoch"] for r in resumed.history] == [1, 2]
    np.testing.assert_allclose(step_losses(resumed.history), step_losses(whole.history), rtol=1e-6)
    assert resumed.valid == pytest.approx(whole.valid, rel=1e-6)
