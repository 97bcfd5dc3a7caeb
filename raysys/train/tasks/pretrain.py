"""The teacher's task: the self-supervised mix (masked item, contrastive, next item), or next item alone.

    pretrain.task=pretrain    L = w_next · L_next + w_masked · L_cloze + w_cl · L_cl   (weights from config)
    pretrain.task=next_item   L = L_next (a fine-tune, usually from pretrain.init_from)

Rows are next-item windows; a batch adds Cloze inputs when the masked-item weight is on.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from raysys.config import PretrainConfig
from raysys.data.batches import TrainingRows, pretrain_batch
from raysys.data.dataset import PreparedDataset
from raysys.models.teacher import build_teacher
from raysys.objectives.joint import check_pretrain_objectives, pretrain_loss
from raysys.train.engines import TrainedModules
from raysys.train.tasks.base import Batch, Task


class PretrainTask(Task):
    """Self-supervised pretraining (or the next-item fine-tune) of the teacher."""

    name = "pretrain"
    model_section = "teacher"

    @property
    def train_cfg(self) -> PretrainConfig:
        """The section with the objective weights its task implies: "next_item" is the next-item term alone."""
        cfg: PretrainConfig = getattr(self.cfg, self.section)
        if cfg.task != "next_item":
            return cfg
        return cfg.model_copy(update={"weight_next_item": 1.0, "weight_masked_item": 0.0, "weight_contrastive": 0.0})

    def check(self, dataset: PreparedDataset) -> None:
        check_pretrain_objectives(self.train_cfg, self.cfg.teacher.arch != "bert")

    def build_model(self, num_items: int, text_emb: torch.Tensor | None) -> nn.Module:
        return build_teacher(self.cfg.teacher, num_items, self.cfg.data.max_len, text_emb=text_emb)

    def batch(self, rows: TrainingRows, indices: np.ndarray, rng: np.random.Generator) -> Batch:
        windows, _ = rows.take(indices)  # [B, max_len + 1]
        return pretrain_batch(windows, self.train_cfg, rng)

    def loss(self, modules: TrainedModules, batch: dict[str, torch.Tensor], generator: torch.Generator) -> dict:
        return pretrain_loss(modules.model, batch, self.train_cfg, generator)
