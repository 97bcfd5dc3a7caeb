"""The loop's rules without a model: the seeding rule, steps per epoch, the training state's
"improved" rule and stopping, and the history record's schema."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from raysys.train.loop import (
    AUTO_LENGTH_BUCKETS,
    count_windows,
    epoch_batches,
    epoch_order,
    epoch_randomness,
    resolve_auto,
    steps_per_epoch,
)
from raysys.train.state import TrainState, epoch_record, scalars


def test_randomness_depends_on_seed_epoch_and_rank_only() -> None:
    rng, generator = epoch_randomness(0, 2, 1)
    first = (rng.permutation(10), torch.rand(3, generator=generator), torch.rand(3))  # the global RNG is seeded too
    torch.rand(100)  # whatever ran before
    rng, generator = epoch_randomness(0, 2, 1)
    again = (rng.permutation(10), torch.rand(3, generator=generator), torch.rand(3))
    assert np.array_equal(first[0], again[0]) and torch.equal(first[1], again[1]) and torch.equal(first[2], again[2])
    other_epoch = epoch_randomness(0, 3, 1)[0].permutation(10)
    other_rank = epoch_randomness(0, 2, 0)[0].permutation(10)
    assert not np.array_equal(first[0], other_epoch) and not np.array_equal(first[0], other_rank)


def test_a_smaller_shard_tops_up_so_every_rank_takes_the_same_steps() -> None:
    order = epoch_order(np.random.default_rng(0), 5, 8)
    assert len(order) == 8 and sorted(order[:5].tolist()) == [0, 1, 2, 3, 4] and set(order[5:]) <= set(range(5))
    assert sorted(epoch_order(np.random.default_rng(0), 5, 5).tolist()) == [0, 1, 2, 3, 4]


def test_length_aware_batches_hold_every_row_once_with_similar_lengths() -> None:
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 51, size=1000)
    order = epoch_order(rng, 1000, 1000)
    batches = epoch_batches(rng, order, lengths, batch_size=32, buckets=8)
    assert len(batches) == steps_per_epoch(1000, 32, 1) and sorted(np.concatenate(batches).tolist()) == list(
        range(1000)
    )
    spread = np.mean([np.ptp(lengths[b]) for b in batches])
    plain = np.mean([np.ptp(lengths[b]) for b in epoch_batches(rng, order, lengths, 32, buckets=0)])
    assert spread < 0.3 * plain  # a batch pads to its longest row: similar lengths waste little
    assert not np.all(np.diff(lengths[np.concatenate(batches)]) >= 0)  # the batches themselves are shuffled
    # Each batch holds about the same number of items (targets) as a batch of random rows, so the loss,
    # a mean over a batch's targets, weighs every target as before: short rows come in bigger batches.
    # (1000 rows in chunks of 8 x 32: three full chunks and one of 232 rows, whose batches hold less.)
    items = np.sort([lengths[b].sum() for b in batches])
    assert items[8] >= 0.85 * items[-1] and items[0] >= 0.7 * items[-1]
    sizes = [len(b) for b in batches]
    assert max(sizes) > 2 * min(sizes)
    random_items = [lengths[b].sum() for b in epoch_batches(rng, order, lengths, 32, buckets=0)[:-1]]
    assert np.std(items[8:]) < np.std(random_items)


def test_equal_share_cuts_keep_every_run_non_empty() -> None:
    from raysys.train.loop import equal_share_cuts

    assert equal_share_cuts(np.array([1, 1, 1, 1, 10]), 3).tolist() == [3, 4]
    assert equal_share_cuts(np.array([50, 1, 1]), 3).tolist() == [1, 2]  # one heavy row first
    assert equal_share_cuts(np.array([1, 1, 1, 50]), 4).tolist() == [1, 2, 3]
    assert equal_share_cuts(np.array([3, 3]), 1).tolist() == []


def test_steps_per_epoch_count_the_short_batch_and_group() -> None:
    assert steps_per_epoch(100, 10, 3) == 4  # 10 batches: 3 + 3 + 3 + 1
    assert steps_per_epoch(101, 10, 1) == 11 and steps_per_epoch(10, 10, 3) == 1


def test_state_keeps_the_strictly_better_epoch_and_stops_on_patience() -> None:
    state = TrainState()
    values = [0.1, 0.3, 0.3, 0.2]
    improved = []
    for epoch, value in enumerate(values, start=1):
        record = epoch_record(
            epoch, 10 * epoch, {"loss": 1.0, "step_losses": [1.0]}, {"ndcg@10": value, "num_users": 5}, 1.0
        )
        improved.append(state.advance(record, {"ndcg@10": value}, "ndcg@10"))
    assert improved == [True, True, False, False] and state.best_epoch == 2 and state.bad_epochs == 2
    assert state.finished(epochs=10, patience=2) and not state.finished(epochs=10, patience=3)
    last = state.history[-1]
    assert last["best_epoch"] == 2 and last["best_valid_ndcg@10"] == 0.3 and "valid_num_users" not in last
    assert last["step"] == 40 and "step_losses" not in scalars(last)
    assert TrainState.from_dict(state.to_dict()) == state


def test_gains_within_min_delta_keep_the_best_weights_but_use_up_patience() -> None:
    state = TrainState()
    improved = []
    for epoch, value in enumerate([0.30, 0.40, 0.402, 0.404], start=1):
        record = epoch_record(epoch, epoch, {"loss": 1.0, "step_losses": [1.0]}, {"ndcg@10": value}, 1.0)
        improved.append(state.advance(record, {"ndcg@10": value}, "ndcg@10", min_delta=0.005))
    assert improved == [True, True, True, True] and state.best_epoch == 4  # the best epoch is the best value
    assert state.bad_epochs == 2 and state.finished(epochs=10, patience=2)  # but 0.402 and 0.404 are no progress


class _Prepared:
    """What resolve_auto reads of a prepared dataset: the train_len column and the item count."""

    def __init__(self, train_len: list[int], num_items: int) -> None:
        self.train_len, self.num_items = train_len, num_items

    def sequences(self, columns: list[str]) -> pa.Table:
        assert columns == ["train_len"]
        return pa.table({"train_len": pa.array(self.train_len, pa.int32())})


def test_auto_settings_are_resolved_from_the_data() -> None:
    from raysys.config import Config

    cfg = Config(data={"max_len": 10}, pretrain={"batch_size": 4, "num_negatives": 8})
    short = _Prepared([3] * 100, num_items=600)  # windows of 3 items: 8 targets per batch + 8 negatives
    resolved, why = resolve_auto(cfg, "pretrain", short)
    assert resolved.pretrain.loss == "sampled" and why["pretrain.loss"]["value"] == "sampled"
    assert why["pretrain.loss"]["reason"].startswith("598 items > ")
    assert resolved.pretrain.length_buckets == AUTO_LENGTH_BUCKETS  # 3 of 11 items: 27 % full
    assert why["pretrain.length_buckets"]["reason"] == "training windows 27% full on average (< 50%)"
    assert resolved.distill.loss == "auto"  # only the stage's own section
    long = _Prepared([41] * 100, num_items=500)  # windows of 10 targets: 40 per batch + 8 negatives
    resolved, why = resolve_auto(cfg, "pretrain", long)
    assert resolved.pretrain.loss == "full" and resolved.pretrain.length_buckets == 0  # 11 of 11 items
    assert count_windows(long, 10) == (400, 4000)
    fixed = cfg.model_copy(update={"distill": cfg.distill.model_copy(update={"loss": "full", "length_buckets": 0})})
    assert resolve_auto(fixed, "distill", short) == (fixed, {})  # set values stay as they are
    resolved, why = resolve_auto(cfg, "distill", short)  # the student resolves the same way
    assert set(why) == {"distill.loss", "distill.length_buckets"} and resolved.distill.length_buckets == 50
    with pytest.raises(ValueError, match="resolved from the data"):
        epoch_batches(np.random.default_rng(0), np.arange(4), np.ones(4), 2, "auto")
