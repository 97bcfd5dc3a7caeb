"""Batch builders: padding/truncation, training parts and rows, windows, next-item labels, Cloze masking."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from raysys.config import PretrainConfig
from raysys.data.batches import (
    cloze_batch,
    next_item_batch,
    pad_histories,
    pretrain_batch,
    training_parts,
    training_windows,
    window_rows,
)
from raysys.data.dataset import MASK_INDEX


def random_sequences(rng: np.random.Generator, count: int, max_length: int, num_items: int = 50) -> list[np.ndarray]:
    lengths = rng.integers(0, max_length, size=count)
    return [rng.integers(2, num_items, size=n).astype(np.int32) for n in lengths]


def test_pad_histories_left_pads_and_truncates() -> None:
    out = pad_histories([np.array([5, 6, 7, 8, 9]), np.array([3]), np.array([], dtype=np.int32)], 3)
    assert out.dtype == np.int64
    assert out.tolist() == [[7, 8, 9], [0, 0, 3], [0, 0, 0]]


def test_windows_are_cut_from_the_end_and_overlap_by_one() -> None:
    seq = np.arange(2, 12)  # 10 items
    windows = training_windows([seq, np.array([4]), np.array([5, 6])], max_len=4)
    assert windows.tolist() == [
        [7, 8, 9, 10, 11],  # most recent window is complete
        [3, 4, 5, 6, 7],
        [0, 0, 0, 2, 3],  # oldest window, left-padded
        [0, 0, 0, 5, 6],  # a 1-item sequence gives no window
    ]


def test_windows_cover_every_training_item_exactly_once_as_a_label() -> None:
    rng = np.random.default_rng(0)
    sequences = random_sequences(rng, 200, 40)
    windows = training_windows(sequences, max_len=7)
    labels = next_item_batch(windows)["labels"]
    got = np.sort(labels[labels > 0])
    expected = np.sort(np.concatenate([s[1:] for s in sequences]))
    np.testing.assert_array_equal(got, expected)


def test_next_item_labels_at_every_position() -> None:
    batch = next_item_batch(np.array([[0, 0, 4, 5, 6], [2, 3, 4, 5, 6]]))
    assert batch["input_ids"].tolist() == [[0, 0, 4, 5], [2, 3, 4, 5]]
    assert batch["labels"].tolist() == [[0, 0, 5, 6], [3, 4, 5, 6]]


def test_training_parts_keep_only_the_training_part_and_rows_cut_windows_from_it() -> None:
    table = pa.table(
        {
            "items": pa.array([[2, 3, 4, 5, 6, 7], [8, 9, 10]], pa.list_(pa.int32())),
            "train_len": pa.array([4, 1], pa.int32()),
            "ratings": pa.array([[5, 4, 3, 2, 1, 1], [1, 2, 3]], pa.list_(pa.float32())),
        }
    ).slice(0, 2)
    parts = training_parts(table)
    assert parts.flat.tolist() == [2, 3, 4, 5, 8] and parts.lengths.tolist() == [4, 1]
    assert parts.ratings.tolist() == [5, 4, 3, 2, 1]
    rows = window_rows(parts, max_len=5)
    windows, columns = rows.take(np.arange(len(rows)), trim=False)
    assert windows.tolist() == [[0, 0, 2, 3, 4, 5]] and columns == {}  # [6, 7] are valid/test; [8] has no label


def test_taken_rows_are_trimmed_to_the_longest_and_score_the_same() -> None:
    import torch

    from raysys.config import DistillConfig, StudentConfig
    from raysys.models.student import build_student
    from raysys.objectives.next_item import next_item_loss

    sequences = [np.arange(2, 7), np.arange(10, 14), np.arange(20, 23)]
    rows = window_rows(training_parts(pa.table({"items": [s.tolist() for s in sequences], "train_len": [5, 4, 3]})), 9)
    trimmed, _ = rows.take(np.arange(3))
    full, _ = rows.take(np.arange(3), trim=False)
    assert trimmed.shape == (3, 5) and full.shape == (3, 10) and np.array_equal(full[:, -5:], trimmed)
    torch.manual_seed(0)
    model = build_student(StudentConfig(hidden_size=16, num_layers=1, num_heads=2, dropout=0.0), 30, 9).eval()
    losses = []
    for windows in (trimmed, full):
        batch = {k: torch.from_numpy(v) for k, v in next_item_batch(windows).items()}
        with torch.no_grad():
            losses.append(float(next_item_loss(model, batch["input_ids"], batch["labels"], DistillConfig(loss="full"))))
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)


def test_window_rows_cut_the_same_windows_as_training_windows() -> None:
    sequences = random_sequences(np.random.default_rng(4), 40, 30)
    table = pa.table({"items": [s.tolist() for s in sequences], "train_len": [len(s) for s in sequences]})
    rows = window_rows(training_parts(table), 7)
    np.testing.assert_array_equal(rows.take(np.arange(len(rows)))[0], training_windows(sequences, 7))
    picked = np.array([3, 0, 5])
    np.testing.assert_array_equal(rows.take(picked)[0], training_windows(sequences, 7)[picked])


def test_cloze_mask_rate_and_labels() -> None:
    rng = np.random.default_rng(0)
    seqs = pad_histories(random_sequences(rng, 2000, 60), 50)
    seqs = seqs[(seqs > 0).sum(1) >= 30]  # long rows: the forced last-item mask barely moves the rate
    batch = cloze_batch(seqs, mask_prob=0.2, rng=np.random.default_rng(1))
    masked = batch["input_ids"] == MASK_INDEX
    assert abs(masked.sum() / (seqs > 0).sum() - 0.2) < 0.01
    np.testing.assert_array_equal(batch["labels"][masked], seqs[masked])
    assert np.all(batch["labels"][~masked] == 0)
    assert np.all(batch["input_ids"][~masked] == seqs[~masked])
    assert np.all(masked.any(axis=1))


def test_cloze_always_masks_something_and_never_padding() -> None:
    seqs = np.array([[0, 0, 0, 4], [0, 0, 5, 6]])
    batch = cloze_batch(seqs, mask_prob=0.01, rng=np.random.default_rng(0))
    assert batch["input_ids"][:, -1].tolist() == [MASK_INDEX, MASK_INDEX]
    assert np.all(batch["input_ids"][:, :2] == 0)


def test_batches_are_deterministic_given_the_seed() -> None:
    windows = training_windows(random_sequences(np.random.default_rng(0), 50, 30), 10)
    cfg = PretrainConfig(weight_masked_item=1.0)
    a = pretrain_batch(windows, cfg, np.random.default_rng(3))
    b = pretrain_batch(windows, cfg, np.random.default_rng(3))
    assert set(a) == {"input_ids", "labels", "cloze_input_ids", "cloze_labels"}
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    assert set(pretrain_batch(windows, PretrainConfig(), np.random.default_rng(3))) == {"input_ids", "labels"}


@pytest.mark.parametrize("max_len", [1, 3, 50])
def test_window_shapes(max_len: int) -> None:
    windows = training_windows(random_sequences(np.random.default_rng(2), 30, 20), max_len)
    assert windows.shape[1] == max_len + 1 and windows.dtype == np.int64
    assert np.all(windows[:, -1] > 0) and np.all(windows[:, -2] > 0)  # every window has a label
