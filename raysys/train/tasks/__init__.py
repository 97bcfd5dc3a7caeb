"""The training tasks every driver runs: the teacher's pretraining (and next-item fine-tune), the
student's distillation and click prediction. `task_for(cfg, stage)` picks the one a stage trains."""

from __future__ import annotations

from typing import Literal

from raysys.config import Config
from raysys.train.tasks.base import Task
from raysys.train.tasks.click import ClickTask
from raysys.train.tasks.distill import DistillTask
from raysys.train.tasks.pretrain import PretrainTask

Stage = Literal["pretrain", "distill"]

__all__ = ["ClickTask", "DistillTask", "PretrainTask", "Stage", "Task", "task_for"]


def task_for(cfg: Config, stage: Stage) -> Task:
    """The task of a training stage: "distill", or "pretrain" by `pretrain.task` (ctr: click prediction)."""
    if stage == "distill":
        return DistillTask(cfg, "distill")
    if cfg.pretrain.task == "ctr":
        return ClickTask(cfg, "pretrain")
    return PretrainTask(cfg, "pretrain")
