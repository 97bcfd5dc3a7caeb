"""evaluate_holdout: examples in original ids, scored by a model directory; what the model cannot rank
(an unknown target, a history it knows none of) counts as a miss."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from raysys.bench.model_dirs import random_model_dir
from raysys.config import EvalConfig, StudentConfig
from raysys.data.dataset import SplitExamples
from raysys.data.updates import HoldoutExamples
from raysys.eval.evaluator import evaluate_split
from raysys.eval.holdout import evaluate_holdout
from raysys.models.export import load_model_dir


def test_unrankable_examples_count_as_misses(tmp_path: Path) -> None:
    cfg = StudentConfig(hidden_size=16, num_layers=1, num_heads=2, dropout=0.0)
    loaded = load_model_dir(random_model_dir(tmp_path / "m", num_items=40, num_users=10, model_cfg=cfg, max_len=8))
    rankable = HoldoutExamples(["a", "b", "c"], [["i1", "new", "i2"], ["i5"], ["i7", "i8"]], ["i3", "i6", "i9"])
    eval_cfg = EvalConfig(ks=[5, 10])
    alone = evaluate_holdout(loaded, rankable, eval_cfg)
    index = loaded.item_index
    split = SplitExamples(
        np.arange(3, dtype=np.int32),
        [
            np.array([index["i1"], index["i2"]], np.int32),
            np.array([index["i5"]], np.int32),
            np.array([index["i7"], index["i8"]], np.int32),
        ],
        np.array([index["i3"], index["i6"], index["i9"]], np.int32),
    )
    reference = evaluate_split(loaded.next_item_scores, split, loaded.num_items, eval_cfg, loaded.max_len, sync=False)
    assert alone["unrankable"] == 0 and alone["num_users"] == 3
    assert alone["ndcg@10"] == pytest.approx(reference["ndcg@10"]) and alone["hr@5"] == pytest.approx(reference["hr@5"])

    more = HoldoutExamples(
        [*rankable.users, "d", "e"], [*rankable.histories, ["i1"], ["new-1", "new-2"]], [*rankable.targets, "new", "i4"]
    )
    both = evaluate_holdout(loaded, more, eval_cfg)  # an unknown target, a history of unknown ids
    assert both["unrankable"] == 2 and both["num_users"] == 5
    assert both["ndcg@10"] == pytest.approx(reference["ndcg@10"] * 3 / 5)
    assert evaluate_holdout(loaded, HoldoutExamples(["d"], [["i1"]], ["new"]), eval_cfg)["ndcg@10"] == 0.0
