"""The new-item boost of a model with item text, chosen on validation (`new_item_boost: auto`).

An item without an ID vector (absent from training, or added to the served catalog) is scored from its
projected text alone. Training never shows such an item as a positive, so nothing in it says how likely
a new item is to be chosen, and text alone ranks a new item like an average item of its kind. The boost
is a constant added to the scores of the ID-less items; it is chosen from multiples of the spread of the
users' scores (the mean over valid users of the standard deviation of their item scores) on validation
NDCG@10, every multiple ranked from one scoring pass:

    choice = choose_new_item_boost(model, dataset.split("valid"), dataset.num_items, cfg.eval, max_len)
    choice.value, choice.reason     # 0.0 when no valid target is an ID-less item
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from raysys.config import EvalConfig
from raysys.data.dataset import FIRST_ITEM_INDEX, SplitExamples
from raysys.eval.evaluator import choose_on_valid, iter_eval_batches, score_batch
from raysys.models.common import SequenceModel, score_items
from raysys.train.tasks.base import eval_mode

# Multiples of the users' score spread tried (0 keeps text-only scores as they are).
SPREAD_MULTIPLES = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0)


@dataclass(frozen=True)
class BoostChoice:
    value: float  # the boost, in score units
    reason: str  # why, for summary.json's "resolved"
    valid: dict[float, float]  # boost -> validation NDCG@10 (empty when nothing was tried)


def choose_new_item_boost(
    model: SequenceModel, valid: SplitExamples, num_items: int, cfg: EvalConfig, max_len: int
) -> BoostChoice:
    """The boost with the best validation NDCG@10 (single process; the model is left as it was)."""
    id_less = model.items.id_less  # [num_items] bool or None
    if id_less is None or not bool(id_less.any()):
        return BoostChoice(0.0, "the model has no items without an ID vector", {})
    cold = id_less.cpu().numpy()[np.asarray(valid.targets, dtype=np.int64)]  # [N] bool
    if not cold.any():
        return BoostChoice(0.0, "no valid target is an item without an ID vector", {})

    def raw_scores(input_ids: torch.Tensor) -> torch.Tensor:  # [B, L] -> [B, num_items], no boost
        return score_items(model.user_state(input_ids), model.item_embeddings())

    with eval_mode(model):
        spread = _score_spread(raw_scores, valid, num_items, cfg, max_len)
        grid = tuple(round(m * spread, 4) for m in SPREAD_MULTIPLES)
        mask = id_less.float()  # [num_items]
        best, values = choose_on_valid(
            (raw_scores,), lambda s, b: s[0] + b * mask, grid, valid, num_items, cfg, max_len, sync=False
        )
    share = f"{int(cold.sum())} of {len(cold)} valid targets have no ID vector"
    return BoostChoice(best, f"best valid NDCG@10 {values[best]:.4f} ({share}; tried {list(grid)})", values)


def _score_spread(score_fn, valid: SplitExamples, num_items: int, cfg: EvalConfig, max_len: int) -> float:
    """Mean over the first batch of valid users of the standard deviation of their item scores."""
    batch = next(iter_eval_batches(valid, num_items, cfg, max_len, np.arange(len(valid.targets))))
    scores = score_batch(score_fn, batch, num_items)[:, FIRST_ITEM_INDEX:]  # [B, N - 2]
    return float(scores.std(dim=1).mean())
