"""Full-ranking metrics of a model directory on examples in original ids (`raysys update`'s held-out
events), so models with different catalogs are compared on the same examples.

    metrics = evaluate_holdout(load_model_dir(path), examples, cfg.eval)   # {"ndcg@10": ..., "num_users": ...}

The protocol is `evaluate_split`'s (every item ranked, the history excluded). Ids the model does not
know are left out of a history; an example whose target the model does not know, or whose history it
knows none of, cannot be ranked and counts as a miss (it is in the denominator, never in the sums).
"""

from __future__ import annotations

import numpy as np

from raysys.config import EvalConfig
from raysys.data.dataset import SplitExamples
from raysys.data.updates import HoldoutExamples
from raysys.eval.evaluator import evaluate_split
from raysys.models.export import LoadedModel

SCALED = ("hr@", "ndcg@", "mrr@", "recall@")  # means over users: a miss adds 0 to the sum


def evaluate_holdout(loaded: LoadedModel, examples: HoldoutExamples, cfg: EvalConfig) -> dict[str, float]:
    """hr@K, ndcg@K, mrr@K, recall@K over every example (misses included), "num_users", and how many
    examples the model could not rank ("unrankable")."""
    index = loaded.item_index
    histories, targets = [], []
    for history, target in zip(examples.histories, examples.targets, strict=True):
        known = np.array([index[i] for i in history if i in index], dtype=np.int32)
        if target in index and len(known):
            histories.append(known)
            targets.append(index[target])
    total = len(examples.targets)
    out: dict[str, float] = {"num_users": total, "unrankable": total - len(targets)}
    if not targets:
        return {**out, **{f"{m}{k}": 0.0 for m in SCALED for k in cfg.ks}}
    split = SplitExamples(np.arange(len(targets), dtype=np.int32), histories, np.array(targets, dtype=np.int32))
    metrics = evaluate_split(loaded.next_item_scores, split, loaded.num_items, cfg, loaded.max_len, sync=False)
    share = len(targets) / total
    for key, value in metrics.items():
        if key.startswith(SCALED):
            out[key] = value * share
    return out
