"""The teacher: a large transformer over behaviour sequences, built from Hugging Face classes
(`raysys.models.hf`: BERT, GPT-2 or Llama blocks, `teacher.arch`).

    teacher = build_teacher(cfg.teacher, dataset.num_items, cfg.data.max_len)
"""

from __future__ import annotations

import torch

from raysys.config import TeacherConfig
from raysys.models.common import check_model_config, count_non_embedding_params
from raysys.models.hf import HFSequenceModel

__all__ = ["build_teacher", "count_non_embedding_params"]


def build_teacher(
    cfg: TeacherConfig, num_items: int, max_len: int, text_emb: torch.Tensor | None = None
) -> HFSequenceModel:
    """A teacher for `num_items` (index space incl. pad 0 and mask 1) and windows of `max_len`.

    `text_emb` [num_items, text_dim] is used when `cfg.use_text`; build under `torch.device("meta")`
    to size a model without allocating it.
    """
    check_model_config(cfg, "teacher", text_emb)
    return HFSequenceModel(
        cfg.arch,
        cfg,
        num_items,
        max_len,
        text_emb,
        gradient_checkpointing=cfg.gradient_checkpointing,
        attn_implementation=cfg.attn_implementation,
    )
