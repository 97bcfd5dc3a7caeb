"""Score fusion of a model with a baseline: s = (1 - w) * z(model) + w * z(baseline).

Each user's scores are z-normalised over the rankable items first, so the two scales meet. The
weight w is chosen on the validation split over a grid (one pass scores every w), then applied
unchanged to the test split:

    choice = choose_fusion_weight(model_fn, base_valid, dataset.split("valid"), num_items, cfg, max_len)
    test_scorer = FusedScorer(model_fn, base_test, choice.weight)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from raysys.config import EvalConfig
from raysys.data.dataset import FIRST_ITEM_INDEX, SplitExamples
from raysys.eval.evaluator import ScoreFn, choose_on_valid

DEFAULT_WEIGHTS = tuple(i / 10 for i in range(11))  # 0.0, 0.1, ..., 1.0


def zscore_rows(scores: torch.Tensor) -> torch.Tensor:
    """Per-user z-scores over the rankable items. [B, N] -> [B, N] float32; pad and mask columns
    are 0 and a user whose scores are all equal gets all 0."""
    scores = scores.float()
    items = scores[:, FIRST_ITEM_INDEX:]
    mean = items.mean(dim=1, keepdim=True)
    std = items.std(dim=1, keepdim=True, unbiased=False)
    z = torch.zeros_like(scores)
    z[:, FIRST_ITEM_INDEX:] = torch.where(std > 0, (items - mean) / std.clamp(min=1e-12), 0.0)
    return z


def fuse_scores(model_scores: torch.Tensor, baseline_scores: torch.Tensor, weight: float) -> torch.Tensor:
    """(1 - weight) * z(model) + weight * z(baseline); [B, N] each -> [B, N], pad and mask at -inf."""
    baseline_scores = baseline_scores.to(model_scores.device)
    fused = (1.0 - weight) * zscore_rows(model_scores) + weight * zscore_rows(baseline_scores)
    fused[:, :FIRST_ITEM_INDEX] = -torch.inf
    return fused


class FusedScorer:
    """A score_fn fusing `model_fn` and `baseline_fn` with a fixed weight (see `fuse_scores`)."""

    def __init__(self, model_fn: ScoreFn, baseline_fn: ScoreFn, weight: float) -> None:
        self.model_fn, self.baseline_fn, self.weight = model_fn, baseline_fn, weight

    def __call__(self, input_ids: torch.Tensor) -> torch.Tensor:
        """input_ids [B, L] -> fused scores [B, num_items]."""
        return fuse_scores(self.model_fn(input_ids), self.baseline_fn(input_ids), self.weight)


@dataclass(frozen=True)
class FusionChoice:
    """The chosen weight and the validation metric of every weight tried."""

    weight: float
    metric: str  # e.g. "ndcg@10"
    valid: dict[float, float]  # weight -> validation value of `metric`


def choose_fusion_weight(
    model_fn: ScoreFn,
    baseline_fn: ScoreFn,
    valid: SplitExamples,
    num_items: int,
    cfg: EvalConfig,
    max_len: int,
    *,
    weights: tuple[float, ...] = DEFAULT_WEIGHTS,
    metric: str = "ndcg@10",
    sync: bool | None = None,
) -> FusionChoice:
    """The grid weight with the best validation `metric` (the smallest such weight on a tie).

    Model and baseline score each batch once; every weight is ranked from those scores
    (`raysys.eval.evaluator.choose_on_valid`).
    """
    best, values = choose_on_valid(
        (model_fn, baseline_fn),
        lambda scores, w: fuse_scores(scores[0], scores[1], w),
        weights,
        valid,
        num_items,
        cfg,
        max_len,
        metric=metric,
        sync=sync,
    )
    return FusionChoice(weight=best, metric=metric, valid=values)
