"""Click-prediction loss: binary cross-entropy on labelled (history, candidate) pairs."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from raysys.models.ctr import ClickModel


def ctr_loss(model: ClickModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean BCE of click logits against 0/1 labels.

    batch (see `raysys.data.batches.ctr_pairs`): "input_ids" [P, L] left-padded histories,
    "candidates" [P] item indices, "labels" [P] float 1 = click, 0 = no click.
    """
    logits = model(batch["input_ids"], batch["candidates"])
    return F.binary_cross_entropy_with_logits(logits.float(), batch["labels"].float())
