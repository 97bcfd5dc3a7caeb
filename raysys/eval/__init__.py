"""Evaluation: full-ranking metrics with the protocol in code, baselines, score fusion, CTR metrics.

from raysys.eval import evaluate_split, evaluate_dataset, build_baseline
metrics = evaluate_split(model.next_item_scores, dataset.split("valid"), dataset.num_items, cfg.eval, max_len)
"""

from raysys.eval.baselines import BASELINES, ItemKNNScorer, PopularityScorer, build_baseline
from raysys.eval.evaluator import ScoreFn, evaluate_dataset, evaluate_slices, evaluate_split
from raysys.eval.fusion import FusedScorer, FusionChoice, choose_fusion_weight
from raysys.eval.metrics import RankingSums, auc, log_loss

__all__ = [
    "BASELINES",
    "FusedScorer",
    "FusionChoice",
    "ItemKNNScorer",
    "PopularityScorer",
    "RankingSums",
    "ScoreFn",
    "auc",
    "build_baseline",
    "choose_fusion_weight",
    "evaluate_dataset",
    "evaluate_slices",
    "evaluate_split",
    "log_loss",
]
