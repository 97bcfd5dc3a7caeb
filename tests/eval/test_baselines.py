"""Baselines (popularity, item-kNN) as scorers of the same evaluator, and score fusion."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from raysys.config import EvalConfig
from raysys.data.dataset import SplitExamples
from raysys.errors import RaysysError
from raysys.eval.baselines import (
    ItemKNNScorer,
    PopularityScorer,
    allowed_histories,
    build_baseline,
    cosine_item_similarity,
)
from raysys.eval.evaluator import evaluate_dataset, evaluate_split
from raysys.eval.fusion import FusedScorer, choose_fusion_weight, fuse_scores, zscore_rows


def test_allowed_histories_follow_the_protocol(make_dataset):
    # User 1 is too short to evaluate: their whole sequence is training data.
    dataset = make_dataset([[2, 3, 4, 5], [6, 7], [3, 8, 9]], 10)
    assert [h.tolist() for h in allowed_histories(dataset, "valid")] == [[2, 3], [6, 7], [3]]
    assert [h.tolist() for h in allowed_histories(dataset, "test")] == [[2, 3, 4], [6, 7], [3, 8]]
    test_counts = build_baseline("popularity", dataset, "test").counts.tolist()
    assert test_counts == [0, 0, 1, 2, 1, 0, 1, 1, 1, 0]  # test targets 5 and 9 are never counted
    valid_counts = build_baseline("popularity", dataset, "valid").counts.tolist()
    assert valid_counts == [0, 0, 1, 2, 0, 0, 1, 1, 0, 0]


def test_popularity_scores_everyone_alike():
    scorer = PopularityScorer.fit([np.array([2, 2, 3]), np.array([4, 2])], 6)
    scores = scorer(torch.zeros(3, 4, dtype=torch.long))
    assert scores.shape == (3, 6)
    assert scores[1].tolist() == [0, 0, 3, 1, 1, 0]


def test_cosine_similarity_hand_values():
    histories = [np.array([2, 3]), np.array([2, 3, 3]), np.array([2, 4])]  # a repeat counts once
    sim = cosine_item_similarity(histories, 5, neighbors=10).toarray()
    assert sim[2, 3] == pytest.approx(2 / math.sqrt(3 * 2))
    assert sim[2, 4] == pytest.approx(1 / math.sqrt(3 * 1))
    assert sim[3, 4] == 0.0 and sim[2, 2] == 0.0
    pruned = cosine_item_similarity(histories, 5, neighbors=1).toarray()
    assert np.count_nonzero(pruned[2]) == 1 and pruned[2, 3] == pytest.approx(sim[2, 3])


def test_itemknn_scores_the_recent_window():
    sim = cosine_item_similarity([np.array([2, 3]), np.array([4, 5])], 6, neighbors=10)
    scorer = ItemKNNScorer(sim, recent=1)
    input_ids = torch.tensor([[0, 2, 4], [0, 0, 2]])  # left-padded; only the last item counts
    scores = scorer(input_ids)
    assert scores[0].tolist() == pytest.approx([0, 0, 0, 0, 0, 1])
    assert scores[1].tolist() == pytest.approx([0, 0, 0, 1, 0, 0])


def topic_sequences(seed: int, num_users: int, topics: int, topic_size: int) -> list[list[int]]:
    """Each user reads 6 distinct items of one topic (topic t holds items 2 + t*size .. + size-1)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(num_users):
        topic = int(rng.integers(topics))
        out.append((2 + topic * topic_size + rng.permutation(topic_size)[:6]).tolist())
    return out


def test_itemknn_beats_random_on_topics(make_dataset):
    dataset = make_dataset(topic_sequences(0, num_users=150, topics=6, topic_size=8), 2 + 6 * 8)
    cfg = EvalConfig(ks=[5])
    knn = evaluate_dataset(lambda split: build_baseline("itemknn", dataset, split), dataset, cfg, max_len=10)
    generator = torch.Generator().manual_seed(0)
    noise = lambda ids: torch.rand(ids.shape[0], dataset.num_items, generator=generator)  # noqa: E731
    random = evaluate_dataset(lambda split: noise, dataset, cfg, max_len=10)
    # Four unseen items of the right topic among 45 candidates: item-kNN should find them.
    assert knn["test"]["hr@5"] > 0.8
    assert random["test"]["hr@5"] < 0.3
    assert knn["valid"]["ndcg@5"] > random["valid"]["ndcg@5"] + 0.4


def test_unknown_baseline_is_a_user_error(make_dataset):
    dataset = make_dataset([[2, 3, 4]], 5)
    with pytest.raises(RaysysError, match="unknown baseline"):
        build_baseline("bpr", dataset, "test")


def test_zscore_rows_ignores_pad_and_constant_rows():
    z = zscore_rows(torch.tensor([[100.0, -100.0, 1.0, 2.0, 3.0], [5.0, 5.0, 7.0, 7.0, 7.0]]))
    assert z[0, :2].tolist() == [0.0, 0.0]
    assert z[0, 2:].mean().item() == pytest.approx(0.0, abs=1e-6)
    assert z[0, 2:].std(unbiased=False).item() == pytest.approx(1.0)
    assert z[1].tolist() == [0.0] * 5
    assert fuse_scores(torch.rand(2, 5), torch.rand(2, 5), 0.0)[:, :2].isinf().all()


# Fusion case: items 2-11 are the model's distractors, 12-21 the baseline's, targets come from 22-51.
# Each scorer gives the target 1.1 and its own distractors 2.0, so the target wins only when both
# halves are weighed alike: 2(1 - w) < 1.1 and 2w < 1.1, i.e. w = 0.5 on the grid.
FUSION_ITEMS = 52


def distractor_scorer(first: int):
    def score(input_ids: torch.Tensor) -> torch.Tensor:
        scores = torch.zeros(input_ids.shape[0], FUSION_ITEMS)
        scores[torch.arange(input_ids.shape[0]), input_ids[:, -1]] = 1.1  # the history is the target itself
        scores[:, first : first + 10] = 2.0
        return scores

    return score


def test_fusion_picks_the_weight_on_valid():
    targets = np.arange(22, FUSION_ITEMS, dtype=np.int32)
    valid = SplitExamples(np.arange(len(targets), dtype=np.int32), [np.array([t]) for t in targets], targets)
    model, baseline = distractor_scorer(2), distractor_scorer(12)
    cfg = EvalConfig(ks=[10])
    choice = choose_fusion_weight(model, baseline, valid, FUSION_ITEMS, cfg, max_len=3)
    assert choice.weight == 0.5 and choice.metric == "ndcg@10"
    assert choice.valid[0.5] == pytest.approx(1.0)
    assert choice.valid[0.0] == 0.0 and choice.valid[1.0] == 0.0
    fused = evaluate_split(FusedScorer(model, baseline, choice.weight), valid, FUSION_ITEMS, cfg, max_len=3)
    assert fused["ndcg@10"] == pytest.approx(1.0)
    with pytest.raises(RaysysError, match="eval.ks"):
        choose_fusion_weight(model, baseline, valid, FUSION_ITEMS, EvalConfig(ks=[5]), max_len=3)
