"""The batched torch evaluator against a brute-force Python loop on random data (ties included),
sampled-negative metrics, dataset slices, and the errors a bad scorer gets."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from raysys.config import EvalConfig
from raysys.data.batches import pad_histories
from raysys.data.dataset import SplitExamples
from raysys.errors import RaysysError
from raysys.eval.evaluator import evaluate_dataset, evaluate_split, sample_negatives

NUM_ITEMS = 60
MAX_LEN = 6


class TableScorer:
    """score(j) = sum over the window's items i of W[i, j], rounded to 1 decimal (many ties)."""

    def __init__(self, num_items: int, seed: int, decimals: int | None = 1) -> None:
        weights = torch.rand(num_items, num_items, generator=torch.Generator().manual_seed(seed))
        weights[:2] = 0.0  # pad and mask contribute nothing
        self.weights, self.decimals = weights, decimals

    def __call__(self, input_ids: torch.Tensor) -> torch.Tensor:
        scores = self.weights[input_ids].sum(dim=1)  # [B, L, N] -> [B, N]
        return scores if self.decimals is None else torch.round(scores, decimals=self.decimals)


def random_examples(seed: int, num_users: int = 37) -> SplitExamples:
    """Random histories (1-12 items) and targets; every fifth target repeats a history item."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 13, size=num_users)
    histories = [rng.integers(2, NUM_ITEMS, size=int(n)).astype(np.int32) for n in lengths]
    targets = rng.integers(2, NUM_ITEMS, size=num_users).astype(np.int32)
    for i in range(0, num_users, 5):
        targets[i] = histories[i][0]
    return SplitExamples(np.arange(num_users, dtype=np.int32), histories, targets)


def brute_force(score_fn, examples: SplitExamples, ks: list[int], exclude_seen: bool, coverage: bool) -> dict:
    """One user at a time, plain Python: rank = #other candidates with score >= the target's."""
    sums = {f"{m}@{k}": 0.0 for m in ("hr", "ndcg", "mrr") for k in ks}
    shown: dict[int, set[int]] = {k: set() for k in ks}
    for history, target in zip(examples.histories, examples.targets, strict=True):
        scores = score_fn(torch.from_numpy(pad_histories([history], MAX_LEN)))[0].tolist()
        seen = set(history.tolist()) if exclude_seen else set()
        candidates = [j for j in range(2, NUM_ITEMS) if j not in seen or j == target]
        rank = sum(1 for j in candidates if j != target and scores[j] >= scores[target])
        for k in ks:
            if rank < k:
                sums[f"hr@{k}"] += 1
                sums[f"ndcg@{k}"] += 1 / math.log2(rank + 2)
                sums[f"mrr@{k}"] += 1 / (rank + 1)
            shown[k].update(sorted(candidates, key=lambda j: -scores[j])[:k])
    out = {name: value / len(examples.targets) for name, value in sums.items()}
    if coverage:
        out.update({f"coverage@{k}": len(shown[k]) / (NUM_ITEMS - 2) for k in ks})
    return out


@pytest.mark.parametrize("exclude_seen", [True, False])
def test_matches_brute_force_with_ties(exclude_seen: bool):
    examples, scorer = random_examples(0), TableScorer(NUM_ITEMS, seed=1, decimals=1)
    ks = [1, 5, 10]
    cfg = EvalConfig(ks=ks, batch_size=8, exclude_seen=exclude_seen)
    metrics = evaluate_split(scorer, examples, NUM_ITEMS, cfg, MAX_LEN)
    expected = brute_force(scorer, examples, ks, exclude_seen, coverage=False)
    assert {key: metrics[key] for key in expected} == pytest.approx(expected, abs=1e-12)
    assert metrics["num_users"] == len(examples.targets)


def test_matches_brute_force_coverage_without_ties():
    examples, scorer = random_examples(2), TableScorer(NUM_ITEMS, seed=3, decimals=None)
    cfg = EvalConfig(ks=[3, 10], batch_size=5)
    metrics = evaluate_split(scorer, examples, NUM_ITEMS, cfg, MAX_LEN)
    expected = brute_force(scorer, examples, [3, 10], True, coverage=True)
    assert {key: metrics[key] for key in expected} == pytest.approx(expected, abs=1e-12)


def test_batch_size_does_not_change_metrics():
    examples, scorer = random_examples(4), TableScorer(NUM_ITEMS, seed=5)
    one = evaluate_split(scorer, examples, NUM_ITEMS, EvalConfig(batch_size=1, sampled_negatives=10), MAX_LEN)
    many = evaluate_split(scorer, examples, NUM_ITEMS, EvalConfig(batch_size=64, sampled_negatives=10), MAX_LEN)
    assert one == pytest.approx(many, abs=1e-12)


def test_sampled_metrics_are_labelled_and_only_on_request():
    examples, scorer = random_examples(6), TableScorer(NUM_ITEMS, seed=7)
    full = evaluate_split(scorer, examples, NUM_ITEMS, EvalConfig(ks=[10]), MAX_LEN)
    assert not any(key.startswith("sampled") for key in full)
    both = evaluate_split(scorer, examples, NUM_ITEMS, EvalConfig(ks=[10], sampled_negatives=20), MAX_LEN)
    assert {"sampled_hr@10", "sampled_ndcg@10", "sampled_mrr@10"} <= set(both)
    assert {key: both[key] for key in full} == full  # the full-ranking figures do not move
    # 20 negatives instead of ~45 candidates: the target can only rank higher.
    assert both["sampled_hr@10"] >= both["hr@10"]
    assert both["sampled_ndcg@10"] >= both["ndcg@10"]


def test_sampled_negatives_avoid_history_and_are_seeded():
    histories = [np.array([2, 3, 4], np.int32), np.arange(2, 11, dtype=np.int32)]
    targets = np.array([5, 11], np.int32)
    draw = sample_negatives(np.array([7, 8]), histories, targets, 12, 4, seed=0).numpy()
    assert set(draw[0]).isdisjoint({2, 3, 4, 5}) and len(set(draw[0])) == 4
    assert draw[0].min() >= 2 and draw[0].max() < 12
    assert draw[1].tolist() == [-1, -1, -1, -1]  # every rankable item is history or target
    again = sample_negatives(np.array([7]), histories[:1], targets[:1], 12, 4, seed=0).numpy()
    assert again[0].tolist() == draw[0].tolist()  # per-user seeding: independent of the batch


def test_scorer_shape_and_nan_are_user_errors():
    examples = random_examples(8, num_users=3)
    wrong_shape = lambda ids: torch.zeros(ids.shape[0], NUM_ITEMS - 1)  # noqa: E731
    with pytest.raises(RaysysError, match="shape"):
        evaluate_split(wrong_shape, examples, NUM_ITEMS, EvalConfig(), MAX_LEN)
    nan = lambda ids: torch.full((ids.shape[0], NUM_ITEMS), float("nan"))  # noqa: E731
    with pytest.raises(RaysysError, match="NaN"):
        evaluate_split(nan, examples, NUM_ITEMS, EvalConfig(), MAX_LEN)
    with pytest.raises(RaysysError, match="eval.ks"):
        evaluate_split(TableScorer(NUM_ITEMS, 0), examples, NUM_ITEMS, EvalConfig(ks=[0, 10]), MAX_LEN)


def test_dataset_slices(make_dataset, evaluated_parts):
    # Users 0-1 are short (4 interactions); user 2 is long. Item 9 only ever appears as a test target.
    sequences = [[2, 3, 4, 9], [3, 2, 5, 6], [2, 3, 4, 5, 6, 7, 8, 9]]
    dataset = make_dataset(sequences, 10)
    cfg = EvalConfig(ks=[1, 5], short_history_max=4)
    prefers_low = lambda ids: -torch.arange(10, dtype=torch.float32).expand(ids.shape[0], -1)  # noqa: E731
    metrics = evaluate_dataset(lambda split: prefers_low, dataset, cfg, max_len=5)
    assert set(metrics) == evaluated_parts
    assert metrics["valid"]["num_users"] == 3
    assert metrics["test/short_history"]["num_users"] == 2
    assert metrics["test/cold_items"]["num_users"] == 2  # target 9 (users 0 and 2) is never trained on; 6 is
    assert metrics["test/warm_items"]["num_users"] == 1
    assert metrics["valid/cold_items"]["num_users"] == 1  # valid targets 4, 5, 8: only 8 is in no training
    # part (those are 2,3 / 3,2 / 2..7)
    # User 0: history 2,3,4 excluded -> candidates 5..9, target 9 last (rank 4); user 1: target 6,
    # history 3,2,5 -> candidates 4,6,7,8,9, rank 1.
    assert metrics["test/short_history"]["mrr@5"] == pytest.approx((1 / 5 + 1 / 2) / 2)


def test_an_empty_slice_reads_as_no_value_not_zero():
    from raysys.eval.evaluator import slice_metric

    metrics = {"test": {"ndcg@10": 0.25, "num_users": 4}, "test/short_history": {"ndcg@10": 0.0, "num_users": 0}}
    assert slice_metric(metrics, "test", "ndcg@10") == 0.25
    assert slice_metric(metrics, "test/short_history", "ndcg@10") is None  # no users: not a measured 0
    assert slice_metric(metrics, "test/cold_items", "hr@10") is None  # absent


def test_sync_without_a_process_group_is_an_error():
    with pytest.raises(RaysysError, match="process group"):
        evaluate_split(TableScorer(NUM_ITEMS, 0), random_examples(9, 3), NUM_ITEMS, EvalConfig(), MAX_LEN, sync=True)


@pytest.mark.parametrize("arch", ["llama", "causal"])
def test_batches_pad_to_their_longest_history_and_score_as_at_full_width(arch: str):
    """Batches hold users of similar history length, each padded only to its longest (short-history
    logs waste no encoder positions), and a model's metrics equal those at the full window."""
    from raysys.config import StudentConfig
    from raysys.models.student import build_student

    torch.manual_seed(0)
    shape = StudentConfig(arch=arch, hidden_size=16, num_layers=2, num_heads=2, dropout=0.0)
    model = build_student(shape, NUM_ITEMS, MAX_LEN).eval()
    widths: list[int] = []

    def trimmed(input_ids: torch.Tensor) -> torch.Tensor:
        widths.append(input_ids.shape[1])
        return model.next_item_scores(input_ids)

    def full_width(input_ids: torch.Tensor) -> torch.Tensor:
        return model.next_item_scores(torch.nn.functional.pad(input_ids, (MAX_LEN - input_ids.shape[1], 0)))

    examples, cfg = random_examples(6, num_users=50), EvalConfig(ks=[5, 10], batch_size=8)
    metrics = evaluate_split(trimmed, examples, NUM_ITEMS, cfg, MAX_LEN)
    assert widths == sorted(widths) and widths[0] < MAX_LEN and widths[-1] == MAX_LEN
    assert metrics == pytest.approx(evaluate_split(full_width, examples, NUM_ITEMS, cfg, MAX_LEN), abs=1e-9)
