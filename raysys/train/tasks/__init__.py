"""The training tasks every driver runs: the teacher's pretraining (and next-item fine-tune), the
student's distillation and click prediction. `task_for(cfg, stage)` picks the one a stage trains."""

from __future__ import annotations

from typing import Literal

from raysys.config import Config
from raysys.train.tasks.base import Task
from raysys.train.tasks.click import ClickTask
from raysys.train.tasks.distill import DistillTask
from raysys.train.tasks.pretrain import PretrainTask

Stage = Literal["pretrain", "finetune", "distill"]

__all__ = ["ClickTask", "DistillTask", "PretrainTask", "Stage", "Task", "task_for"]


def task_for(cfg: Config, stage: Stage) -> Task:
    """The task of a training stage: "distill", or the teacher's "pretrain" / "finetune" by that
    section's `task` (ctr: click prediction; next_item: the next-item term alone)."""
    if stage == "distill":
        return DistillTask(cfg, "distill")
    if getattr(cfg, stage).task == "ctr":
        return ClickTask(cfg, stage)
    return PretrainTask(cfg, stage)
