"""Masked-item (Cloze) loss, as in BERT4Rec: predict the original item at each masked position."""

from __future__ import annotations

import torch

from raysys.config import TrainingConfig
from raysys.models.common import SequenceModel, unseen_items
from raysys.objectives.next_item import labelled_positions
from raysys.objectives.softmax import item_loss


def masked_item_loss(
    model: SequenceModel,
    input_ids: torch.Tensor,
    labels: torch.Tensor,
    cfg: TrainingConfig,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Mean cross-entropy of the original item at every masked position.

    input_ids [B, L]: left-padded, MASK_INDEX at masked positions; labels [B, L]: the original item
    at masked positions, 0 elsewhere (see `raysys.data.batches.cloze_batch`).
    """
    h, y = labelled_positions(model.encode(input_ids), labels)
    return item_loss(h, y, model.item_embeddings(), cfg, generator, unseen_items(model))
