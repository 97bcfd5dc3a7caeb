"""Ranking metrics on hand-computed cases (ties, exclusion, repeated target), mergeable sums,
and the click-prediction metrics AUC and LogLoss."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from raysys.config import EvalConfig
from raysys.data.dataset import SplitExamples
from raysys.eval.evaluator import evaluate_split
from raysys.eval.metrics import RankingSums, auc, log_loss, mrr_at_k, ndcg_at_k, ranks_and_top_k

# Item index space of 7: pad 0, mask 1, items 2..6. Pad and mask score highest to prove they never rank.
ROW = [9.0, 9.0, 0.5, 0.9, 0.5, 0.1, 0.7]
NUM_ITEMS = len(ROW)


def fixed_scores(input_ids: torch.Tensor) -> torch.Tensor:
    return torch.tensor(ROW).expand(input_ids.shape[0], -1)


def one_user(history: list[int], target: int, **eval_kwargs) -> dict[str, float]:
    examples = SplitExamples(np.array([0], np.int32), [np.array(history, np.int32)], np.array([target], np.int32))
    cfg = EvalConfig(ks=[1, 3, 5], **eval_kwargs)
    return evaluate_split(fixed_scores, examples, NUM_ITEMS, cfg, max_len=4)


def test_ties_count_against_the_target():
    # target 2 scores 0.5: items 3 (0.9) and 6 (0.7) are higher, item 4 ties -> rank 3 (0-based).
    metrics = one_user(history=[5], target=2, exclude_seen=False)
    assert metrics["hr@3"] == 0.0
    assert metrics["hr@5"] == 1.0
    assert metrics["ndcg@5"] == pytest.approx(1 / math.log2(5))
    assert metrics["mrr@5"] == pytest.approx(1 / 4)
    assert metrics["recall@5"] == metrics["hr@5"]


def test_history_is_excluded():
    # Items 3 and 6 seen: only the tie with item 4 stays ahead -> rank 1.
    metrics = one_user(history=[3, 6], target=2)
    assert metrics["hr@1"] == 0.0
    assert metrics["hr@3"] == 1.0
    assert metrics["ndcg@3"] == pytest.approx(1 / math.log2(3))
    assert metrics["mrr@3"] == pytest.approx(1 / 2)


def test_target_in_history_stays_rankable():
    # Repeat consumption: target 2 was seen before; item 3 is excluded, 6 is higher, 4 ties -> rank 2.
    metrics = one_user(history=[2, 3], target=2)
    assert metrics["mrr@5"] == pytest.approx(1 / 3)
    assert metrics["hr@3"] == 1.0 and metrics["hr@1"] == 0.0


def test_exclusion_off_ranks_history_items():
    metrics = one_user(history=[3, 6], target=2, exclude_seen=False)
    assert metrics["mrr@5"] == pytest.approx(1 / 4)


def test_all_equal_scores_get_zero():
    num_items = 40  # 38 rankable items: more than the largest cut-off
    histories = [np.array([2, 5], np.int32), np.array([7], np.int32)]
    examples = SplitExamples(np.array([0, 1], np.int32), histories, np.array([3, 30], np.int32))
    constant = lambda ids: torch.zeros(ids.shape[0], num_items)  # noqa: E731
    metrics = evaluate_split(constant, examples, num_items, EvalConfig(ks=[5, 10, 20]), max_len=3)
    assert all(metrics[f"{m}@{k}"] == 0.0 for m in ("hr", "ndcg", "mrr", "recall") for k in (5, 10, 20))


def test_ranks_and_top_k_directly():
    scores = torch.tensor([ROW, ROW])
    nothing = (torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long))
    ranks, top = ranks_and_top_k(scores, torch.tensor([3, 5]), nothing, 5)
    assert ranks.tolist() == [0, 4]  # item 3 is the best; item 5 is the worst of 5
    assert ndcg_at_k(ranks, 5).tolist() == pytest.approx([1.0, 1 / math.log2(6)])
    assert mrr_at_k(ranks, 4).tolist() == [1.0, 0.0]
    assert ranks_and_top_k(scores, torch.tensor([3, 5]), nothing, 3)[0].tolist() == [0, 3]  # capped at k
    ranks, top = ranks_and_top_k(scores, torch.tensor([3, 5]), (torch.tensor([1]), torch.tensor([3])), 3)
    assert top[0].tolist() == [3, 6, 2] or top[0].tolist() == [3, 6, 4]
    assert top[1, 0].item() == 6 and ranks[1].item() == 3  # user 1 cannot be shown item 3
    others = (torch.tensor([0, 0, 0]), torch.tensor([2, 3, 4]))  # user 0 may rank only items 5 and 6
    ranks, top = ranks_and_top_k(scores[:1], torch.tensor([5]), others, 3)
    assert top.tolist() == [[6, 5, -1]] and ranks.tolist() == [1]


def test_capped_ranks_agree_with_a_brute_force_count_below_the_cap():
    generator = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 6, (64, 30), generator=generator).float()  # many ties
    scores[5, 9] = -torch.inf
    targets = torch.randint(2, 30, (64,), generator=generator)
    excluded = (torch.randint(0, 64, (200,), generator=generator), torch.randint(2, 30, (200,), generator=generator))
    k = 7
    ranks, _ = ranks_and_top_k(scores, targets, excluded, k)
    for user in range(64):
        blocked = set(excluded[1][excluded[0] == user].tolist()) - {int(targets[user])}
        target_score = scores[user, targets[user]]
        rank = sum(
            1
            for item in range(2, 30)
            if item != targets[user] and item not in blocked and scores[user, item] >= target_score
        )
        assert ranks[user].item() == (k if target_score == -torch.inf else min(rank, k))


def test_coverage_counts_items_in_any_top_k():
    # Both users see the same top-1 (item 3) unless it is in their history.
    examples = SplitExamples(
        np.array([0, 1], np.int32), [np.array([5], np.int32), np.array([3], np.int32)], np.array([2, 2], np.int32)
    )
    metrics = evaluate_split(fixed_scores, examples, NUM_ITEMS, EvalConfig(ks=[1, 2]), max_len=2)
    assert metrics["coverage@1"] == pytest.approx(2 / 5)  # items 3 and 6 of 5 rankable
    assert metrics["coverage@2"] == pytest.approx(3 / 5)  # plus one of the tied items 2 / 4


def test_sums_merge_and_vector_round_trip():
    ranks = torch.tensor([0, 3, 12, 1, 7])
    top = torch.tensor([[2, 3], [4, 5], [2, 9], [3, -1], [8, 2]])
    whole = RankingSums.empty((1, 2), 10)
    whole.add(ranks, top)
    first, second = RankingSums.empty((1, 2), 10), RankingSums.empty((1, 2), 10)
    first.add(ranks[:2], top[:2])
    second.add(ranks[2:], top[2:])
    merged = first.merge(second)
    assert merged.metrics() == pytest.approx(whole.metrics())
    summed = whole.from_vector(first.to_vector() + second.to_vector())
    assert summed.metrics() == pytest.approx(whole.metrics())
    assert summed.count == 5
    assert whole.metrics()["coverage@1"] == pytest.approx(4 / 8)  # items 2, 4, 3, 8


def test_sampled_sums_need_sampled_ranks():
    sums = RankingSums.empty((5,), 10, sampled=True)
    with pytest.raises(ValueError, match="ranks_sampled"):
        sums.add(torch.tensor([0]), torch.tensor([[2, 3, 4, 5, 6]]))


def test_auc_hand_value_with_ties():
    # Positive/negative pairs: 0.9>0.3, 0.9>0.1, 0.3=0.3 (half), 0.3>0.1 -> 3.5 / 4.
    assert auc([1, 0, 1, 0], [0.9, 0.3, 0.3, 0.1]) == pytest.approx(0.875)
    assert auc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == pytest.approx(1.0)
    assert auc([1, 1, 0, 0], [0.1, 0.2, 0.3, 0.4]) == pytest.approx(0.0)
    assert auc(torch.tensor([1, 0, 1, 0]), torch.full((4,), 0.5)) == pytest.approx(0.5)


def test_auc_needs_both_classes():
    with pytest.raises(ValueError, match="one class"):
        auc([1, 1], [0.2, 0.4])


def test_log_loss_hand_value_and_clipping():
    assert log_loss([1, 0], [0.8, 0.4]) == pytest.approx(-(math.log(0.8) + math.log(0.6)) / 2)
    assert log_loss([0, 1], [1.0, 0.0]) == pytest.approx(-math.log(1e-7), rel=1e-6)  # finite, not inf
    assert log_loss([1], [1.0]) == pytest.approx(0.0, abs=1e-6)
