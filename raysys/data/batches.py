"""Fixed-length batches from item sequences: left padding, truncation, training rows (windows),
next-item and Cloze targets.

Everything is vectorised numpy over one flat array of items plus per-sequence lengths (offsets
arithmetic); the only Python loop is the one `np.concatenate` makes over the sequences. Randomness
comes from a `numpy.random.Generator`, so a batch is reproducible from its seed.

Training rows (`TrainingRows`) are slices of one flat array of training items, cut into fixed-width
left-padded arrays only when a batch takes them: a rank holds its users' items once, whatever the
number of rows cut from them. Batch formats (int64 item indices, 0 = pad / ignore, 1 = mask):
    windows          [W, max_len + 1]  left-padded training windows (`window_rows`, `training_windows`)
    next_item_batch  {"input_ids" [B, L], "labels" [B, L]: the item after each position}
    cloze_batch      {"input_ids" [B, L] with MASK_INDEX at masked positions,
                      "labels" [B, L]: the original item at masked positions}
    pretrain_batch   next-item keys + "cloze_input_ids", "cloze_labels" when the masked weight > 0
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from raysys.config import PretrainConfig
from raysys.data.dataset import FIRST_ITEM_INDEX, MASK_INDEX, PAD_INDEX


def pad_histories(histories: Sequence[np.ndarray] | np.ndarray, max_len: int) -> np.ndarray:
    """Left-pad (with PAD_INDEX) and truncate histories to their most recent `max_len` items.

    Returns [B, max_len] int64, most recent item in the last column.
    """
    flat, lengths, offsets = _flatten(histories)
    return _left_padded_slices(flat, offsets, offsets + lengths, max_len)


def _flatten(sequences: Sequence[np.ndarray] | np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sequences -> (flat items int64, lengths [S], offsets [S]: where each sequence starts in flat)."""
    sequences = list(sequences)
    lengths = np.fromiter((len(s) for s in sequences), dtype=np.int64, count=len(sequences))
    flat = np.concatenate(sequences).astype(np.int64, copy=False) if lengths.sum() else np.zeros(0, np.int64)
    offsets = np.cumsum(lengths) - lengths
    return flat, lengths, offsets


def _left_padded_slices(flat: np.ndarray, start: np.ndarray, end: np.ndarray, width: int) -> np.ndarray:
    """Rows flat[start_i:end_i] (end_i - start_i <= width), right-aligned in [N, width], pad on the left."""
    idx = end[:, None] - width + np.arange(width)[None, :]
    valid = idx >= start[:, None]
    if flat.size == 0:
        return np.full(idx.shape, PAD_INDEX, dtype=np.int64)
    return np.where(valid, flat[np.clip(idx, 0, flat.size - 1)], PAD_INDEX).astype(np.int64, copy=False)


def _window_bounds(lengths: np.ndarray, offsets: np.ndarray, max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """(start, end) into the flat items of each training window of max_len + 1 items (see `training_windows`)."""
    has_label = lengths >= 2
    counts = np.where(has_label, -(-(lengths - 1) // max_len), 0)  # ceil((n - 1) / max_len)
    seq = np.repeat(np.arange(len(lengths)), counts)
    back = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)  # 0 = most recent window
    end = offsets[seq] + lengths[seq] - back * max_len  # exclusive
    start = np.maximum(offsets[seq], end - (max_len + 1))
    return start, end


@dataclass(frozen=True)
class SequenceParts:
    """The training parts of some users' sequences, flattened: user u's items are
    flat[offsets[u] : offsets[u] + lengths[u]], chronological."""

    flat: np.ndarray  # [T] int64 item indices
    lengths: np.ndarray  # [U] int64
    offsets: np.ndarray  # [U] int64
    ratings: np.ndarray | None = None  # [T] float32, aligned with flat, when the log has ratings


def training_parts(table: pa.Table) -> SequenceParts:
    """The training parts (items[:train_len]) of a prepared sequences table's rows, in row order.

    table: columns "items" (list<int32>), "train_len" and, optionally, "ratings" (list<float32>).
    """
    items = _list_values(table["items"], np.int64)
    lengths = np.diff(items[1]) if len(items[1]) else np.zeros(0, np.int64)
    train_len = np.minimum(table["train_len"].to_numpy().astype(np.int64), lengths)
    position = np.arange(items[0].size) - np.repeat(items[1][:-1], lengths)
    keep = position < np.repeat(train_len, lengths)
    ratings = None
    if "ratings" in table.column_names:
        ratings = _list_values(table["ratings"], np.float32)[0][keep]
    return SequenceParts(items[0][keep], train_len, np.cumsum(train_len) - train_len, ratings)


def sequence_parts(
    sequences: Sequence[np.ndarray] | np.ndarray, ratings: Sequence[np.ndarray] | None = None
) -> SequenceParts:
    """Whole sequences (and their per-item ratings) as the training parts of as many users."""
    flat, lengths, offsets = _flatten(sequences)
    flat_ratings = None
    if ratings is not None:
        flat_ratings = np.concatenate(list(ratings)).astype(np.float32) if flat.size else np.zeros(0, np.float32)
    return SequenceParts(flat, lengths, offsets, flat_ratings)


def _list_values(column: pa.ChunkedArray, dtype: type) -> tuple[np.ndarray, np.ndarray]:
    """A list column -> (all values as `dtype`, offsets [rows + 1] from 0)."""
    array = column.combine_chunks() if column.num_chunks else pa.array([], column.type)
    offsets = array.offsets.to_numpy().astype(np.int64)
    values = array.flatten().to_numpy(zero_copy_only=False).astype(dtype, copy=False)
    return values, offsets - (offsets[0] if len(offsets) else 0)


@dataclass(frozen=True)
class TrainingRows:
    """Training examples as left-padded slices flat[start:end] of `width` items, plus per-row columns.

    `take(rows)` cuts the chosen rows: (slices [len(rows), W] int64, {name: column[rows]}), where W is
    the longest chosen row (`trim=False`: `width`): columns that would be padding in every row are left
    out, which changes no model output (positions count from each row's first item, padding is masked).
    """

    flat: np.ndarray  # [T] int64 training items
    start: np.ndarray  # [R] int64
    end: np.ndarray  # [R] int64, exclusive; end - start <= width
    width: int
    columns: dict[str, np.ndarray] = field(default_factory=dict)  # name -> [R] per-row values
    num_items: int = 0  # the item index space, for tasks that draw items (0: not given)

    def __len__(self) -> int:
        return len(self.start)

    @property
    def lengths(self) -> np.ndarray:
        """[R] items in each row."""
        return self.end - self.start

    def take(self, rows: np.ndarray, *, trim: bool = True) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        start, end = self.start[rows], self.end[rows]
        width = min(self.width, int((end - start).max(initial=1))) if trim else self.width
        slices = _left_padded_slices(self.flat, start, end, width)
        return slices, {name: values[rows] for name, values in self.columns.items()}


def window_rows(parts: SequenceParts, max_len: int) -> TrainingRows:
    """The training windows of max_len + 1 items of `parts` (see `training_windows`) as rows."""
    start, end = _window_bounds(parts.lengths, parts.offsets, max_len)
    return TrainingRows(parts.flat, start, end, max_len + 1)


def training_windows(sequences: Sequence[np.ndarray] | np.ndarray, max_len: int) -> np.ndarray:
    """Cut each training sequence into windows of max_len + 1 items, [W, max_len + 1] int64.

    Windows are cut from the end (the most recent one is complete) and overlap by one item, so
    every item except each sequence's first is a next-item label exactly once. Short sequences
    and the oldest window are left-padded; sequences with < 2 items give no window.
    """
    rows = window_rows(sequence_parts(sequences), max_len)
    return rows.take(np.arange(len(rows)), trim=False)[0]


def next_item_batch(windows: np.ndarray) -> dict[str, np.ndarray]:
    """[B, max_len + 1] windows -> {"input_ids", "labels"} [B, max_len]: the next item at every
    position whose input is a real item (0 where the input is padding)."""
    windows = np.asarray(windows, dtype=np.int64)
    input_ids = windows[:, :-1]
    labels = np.where(input_ids != PAD_INDEX, windows[:, 1:], PAD_INDEX)
    return {"input_ids": input_ids, "labels": labels}


def cloze_batch(sequences: np.ndarray, mask_prob: float, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """[B, L] left-padded sequences -> Cloze {"input_ids", "labels"} [B, L] (BERT4Rec masking).

    Each real item is masked with probability `mask_prob`; a row that drew no mask gets its last
    item masked, so every row trains and the inference case (mask after the history) is common.
    """
    sequences = np.asarray(sequences, dtype=np.int64)
    real = sequences != PAD_INDEX
    masked = real & (rng.random(sequences.shape) < mask_prob)
    unmasked_rows = ~masked.any(axis=1) & real[:, -1]
    masked[unmasked_rows, -1] = True
    return {
        "input_ids": np.where(masked, MASK_INDEX, sequences),
        "labels": np.where(masked, sequences, PAD_INDEX),
    }


def pretrain_batch(windows: np.ndarray, cfg: PretrainConfig, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """[B, max_len + 1] windows -> the next-item batch, plus "cloze_input_ids" / "cloze_labels" built
    from each window's last max_len items when `cfg.weight_masked_item` > 0."""
    batch = next_item_batch(windows)
    if cfg.weight_masked_item > 0:
        cloze = cloze_batch(np.asarray(windows, dtype=np.int64)[:, 1:], cfg.mask_prob, rng)
        batch["cloze_input_ids"], batch["cloze_labels"] = cloze["input_ids"], cloze["labels"]
    return batch


def sampled_items(positives: np.ndarray, num_items: int, rng: np.random.Generator) -> np.ndarray:
    """One uniform real item per positive, never equal to it (a collision moves to the next item)."""
    num_real = num_items - FIRST_ITEM_INDEX
    draws = rng.integers(FIRST_ITEM_INDEX, num_items, size=positives.shape)
    collide = draws == positives
    draws[collide] = (draws[collide] - FIRST_ITEM_INDEX + 1) % num_real + FIRST_ITEM_INDEX
    return draws
