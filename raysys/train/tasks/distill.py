"""The student's task: L = L_rec + λ_ssl·L_ssl + λ_kd·L_kd + λ_hidden·L_hidden from a frozen teacher.

The teacher (`distill.teacher`, a model directory; with `distill.extra_teachers` an ensemble,
`raysys.objectives.distillation.TeacherEnsemble`) runs forward on the same process as the student;
the hidden alignment (a student -> teacher projection) is trained with the student when λ_hidden > 0.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from raysys.config import DistillConfig
from raysys.data.batches import TrainingRows, next_item_batch
from raysys.data.dataset import PAD_INDEX, PreparedDataset
from raysys.errors import RaysysError
from raysys.models.common import SequenceModel
from raysys.models.student import build_student
from raysys.objectives.distillation import HiddenAlignment, TeacherEnsemble, teacher_item_init
from raysys.objectives.joint import distill_loss
from raysys.train.engines import TrainedModules
from raysys.train.tasks.base import Batch, Task


class DistillTask(Task):
    """Distillation of the student from the frozen teacher."""

    name = "distill"
    model_section = "student"

    def __init__(self, cfg, section: str = "distill") -> None:
        super().__init__(cfg, section)
        self.teacher: SequenceModel | TeacherEnsemble | None = None  # loaded by `attach`

    @property
    def train_cfg(self) -> DistillConfig:
        return getattr(self.cfg, self.section)

    def check(self, dataset: PreparedDataset) -> None:
        from raysys.models.export import read_model_config

        cfg = self.train_cfg
        if cfg.teacher is None and not cfg.extra_teachers:
            if cfg.lambda_kd > 0 or cfg.lambda_hidden > 0 or cfg.init_items == "teacher":
                raise RaysysError(
                    "distillation needs a teacher",
                    where=f"{self.section}.teacher",
                    hint=f"{self.section}.teacher=RUN/model, or {self.section}.lambda_kd=0 (and init_items=random)",
                )
            return
        for key, path in self.teacher_paths():
            teacher = read_model_config(Path(path))
            if int(teacher["num_items"]) != dataset.num_items:
                raise RaysysError(
                    f"the teacher {path} scores {teacher['num_items']} items, the dataset has {dataset.num_items}",
                    where=f"{self.section}.{key}",
                    hint="distil on the dataset the teacher was trained on",
                )

    def teacher_paths(self) -> list[tuple[str, str]]:
        """(config key, model directory) of every teacher: `teacher`, then `extra_teachers`."""
        cfg = self.train_cfg
        if cfg.extra_teachers and not cfg.teacher:
            raise RaysysError(
                "extra_teachers join a teacher, and none is set",
                where=f"{self.section}.extra_teachers",
                hint=f"name the first in {self.section}.teacher",
            )
        extra = [(f"extra_teachers[{i}]", path) for i, path in enumerate(cfg.extra_teachers)]
        return [("teacher", cfg.teacher)] + extra if cfg.teacher else []

    def build_model(self, num_items: int, text_emb: torch.Tensor | None) -> nn.Module:
        return build_student(self.cfg.student, num_items, self.cfg.data.max_len, text_emb=text_emb)

    def attach(self, model: nn.Module, device: torch.device | str) -> HiddenAlignment | None:
        """Load the frozen teacher; start the student's items from the teacher's (`init_items=teacher`);
        the hidden alignment when λ_hidden > 0. Each needs a teacher."""
        cfg = self.train_cfg
        uses_teacher = cfg.lambda_kd > 0 or cfg.lambda_hidden > 0 or cfg.init_items == "teacher"
        if not cfg.teacher or not uses_teacher:
            if uses_teacher:
                where = f"{self.section}.teacher"
                raise RaysysError("lambda_kd / lambda_hidden > 0 and init_items=teacher need a teacher", where=where)
            return None
        from raysys.models.export import load_model_dir

        members = [
            load_model_dir(path, device=str(device)).model.eval().requires_grad_(False)
            for _, path in self.teacher_paths()
        ]
        self.teacher = members[0] if len(members) == 1 else TeacherEnsemble(members)
        if cfg.init_items == "teacher" and not cfg.init_from:  # init_from (an update) brings its own items
            with torch.no_grad():
                table = model.items.id_embedding.weight  # [V, Hs]
                start = teacher_item_init(self.teacher.item_embeddings(), table.shape[1], self.cfg.student.init_std)
                table.copy_(start.to(table.device))
                table[PAD_INDEX].zero_()
        if cfg.lambda_hidden > 0:
            return HiddenAlignment(model.hidden_size, self.teacher.hidden_size)
        return None

    def batch(self, rows: TrainingRows, indices: np.ndarray, rng: np.random.Generator) -> Batch:
        windows, _ = rows.take(indices)  # [B, max_len + 1]
        return next_item_batch(windows)

    def loss(self, modules: TrainedModules, batch: dict[str, torch.Tensor], generator: torch.Generator) -> dict:
        return distill_loss(modules.model, batch, self.train_cfg, self.teacher, modules.alignment, generator)
