"""Next-item loss at every position of each window: one encoder pass teaches all L positions."""

from __future__ import annotations

import torch

from raysys.config import TrainingConfig
from raysys.models.common import SequenceModel, unseen_items
from raysys.objectives.softmax import item_loss


def labelled_positions(hidden: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Hidden states and targets where labels > 0, [B, L, H] + [B, L] -> [N, H], [N]."""
    keep = labels > 0
    return hidden[keep], labels[keep]


def next_item_loss(
    model: SequenceModel,
    input_ids: torch.Tensor,
    labels: torch.Tensor,
    cfg: TrainingConfig,
    generator: torch.Generator | None = None,
    hidden: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean cross-entropy of the next item at every labelled position.

    input_ids [B, L] (left-padded); labels [B, L]: the item after each position, 0 = ignore (see
    `raysys.data.batches.next_item_batch`).
    Only causal models may use it (a bidirectional encoder would see the answer). `hidden` [B, L, H]
    reuses an encoder pass the caller already made.
    """
    if not model.is_causal:
        raise ValueError("next_item_loss needs a causal model; a bidirectional one sees the next item")
    if hidden is None:
        hidden = model.encode(input_ids)
    h, y = labelled_positions(hidden, labels)
    return item_loss(h, y, model.item_embeddings(), cfg, generator, unseen_items(model))
