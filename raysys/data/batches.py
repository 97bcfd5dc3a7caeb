"""Fixed-length batches from item sequences: left padding, truncation, next-item and Cloze targets,
training windows and click-prediction pairs.

Everything is vectorised numpy over one flat array of items plus per-sequence lengths (offsets
arithmetic); the only Python loop is the one `np.concatenate` makes over the sequences. Randomness
comes from a `numpy.random.Generator`, so a batch is reproducible from its seed. The builders take
lists of arrays (local) or Ray Data numpy batches (`windows_from_ray_batch`, `ctr_pairs_from_ray_batch`).

Batch formats (int64 item indices, 0 = pad / ignore, 1 = mask):
    windows          [W, max_len + 1]  left-padded training windows (`training_windows`)
    next_item_batch  {"input_ids" [B, L], "labels" [B, L]: the item after each position}
    cloze_batch      {"input_ids" [B, L] with MASK_INDEX at masked positions,
                      "labels" [B, L]: the original item at masked positions}
    pretrain_batch   next-item keys + "cloze_input_ids", "cloze_labels" when the masked weight > 0
    ctr_pairs        {"input_ids" [P, L] histories, "candidates" [P], "labels" [P] float32 1 / 0}
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

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


def _windows_from_flat(flat: np.ndarray, lengths: np.ndarray, offsets: np.ndarray, max_len: int) -> np.ndarray:
    """Training windows of max_len + 1 items, cut from the end of each sequence (see `training_windows`)."""
    has_label = lengths >= 2
    counts = np.where(has_label, -(-(lengths - 1) // max_len), 0)  # ceil((n - 1) / max_len)
    seq = np.repeat(np.arange(len(lengths)), counts)
    back = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)  # 0 = most recent window
    end = offsets[seq] + lengths[seq] - back * max_len  # exclusive
    start = np.maximum(offsets[seq], end - (max_len + 1))
    return _left_padded_slices(flat, start, end, max_len + 1)


def training_windows(sequences: Sequence[np.ndarray] | np.ndarray, max_len: int) -> np.ndarray:
    """Cut each training sequence into windows of max_len + 1 items, [W, max_len + 1] int64.

    Windows are cut from the end (the most recent one is complete) and overlap by one item, so
    every item except each sequence's first is a next-item label exactly once. Short sequences
    and the oldest window are left-padded; sequences with < 2 items give no window.
    """
    flat, lengths, offsets = _flatten(sequences)
    return _windows_from_flat(flat, lengths, offsets, max_len)


def _training_parts(batch: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A sequences-table batch (columns items, train_len, optional ratings) -> flat training items,
    their ratings (or an empty array), lengths and offsets, keeping items[:train_len] of each row."""
    flat, lengths, offsets = _flatten(batch["items"])
    train_len = np.minimum(np.asarray(batch["train_len"], dtype=np.int64), lengths)
    position = np.arange(flat.size) - np.repeat(offsets, lengths)
    keep = position < np.repeat(train_len, lengths)
    ratings = np.zeros(0, np.float32)
    if "ratings" in batch and batch["ratings"] is not None:
        ratings = np.concatenate(list(batch["ratings"])).astype(np.float32)[keep] if flat.size else ratings
    return flat[keep], ratings, train_len, np.cumsum(train_len) - train_len


def windows_from_ray_batch(batch: Mapping[str, Any], max_len: int) -> dict[str, np.ndarray]:
    """Ray Data `map_batches` function: a batch of the prepared sequences table (columns "items":
    arrays / lists, "train_len") -> {"window": [W, max_len + 1]} windows of the training parts."""
    flat, _, lengths, offsets = _training_parts(batch)
    return {"window": _windows_from_flat(flat, lengths, offsets, max_len)}


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


def _sampled_items(positives: np.ndarray, num_items: int, rng: np.random.Generator) -> np.ndarray:
    """One uniform real item per positive, never equal to it (a collision moves to the next item)."""
    num_real = num_items - FIRST_ITEM_INDEX
    draws = rng.integers(FIRST_ITEM_INDEX, num_items, size=positives.shape)
    collide = draws == positives
    draws[collide] = (draws[collide] - FIRST_ITEM_INDEX + 1) % num_real + FIRST_ITEM_INDEX
    return draws


def _ctr_pairs_from_flat(
    flat: np.ndarray,
    ratings: np.ndarray,
    lengths: np.ndarray,
    offsets: np.ndarray,
    max_len: int,
    num_items: int,
    rng: np.random.Generator,
    rating_threshold: float,
    negatives_per_click: int,
) -> dict[str, np.ndarray]:
    position = np.arange(flat.size) - np.repeat(offsets, lengths)
    target = np.flatnonzero(position >= 1)  # every item that has a history before it
    start = np.maximum(np.repeat(offsets, lengths)[target], target - max_len)
    histories = _left_padded_slices(flat, start, target, max_len)
    candidates = flat[target]
    labels = (ratings[target] >= rating_threshold) if ratings.size else np.ones(target.size, dtype=bool)
    if labels.all():  # no explicit non-clicks in the log: sample them uniformly
        histories = np.concatenate([histories] + [histories] * negatives_per_click)
        negatives = [_sampled_items(candidates, num_items, rng) for _ in range(negatives_per_click)]
        candidates = np.concatenate([candidates] + negatives)
        labels = np.arange(candidates.size) < target.size
    return {"input_ids": histories, "candidates": candidates.astype(np.int64), "labels": labels.astype(np.float32)}


def ctr_pairs(
    sequences: Sequence[np.ndarray] | np.ndarray,
    max_len: int,
    num_items: int,
    rng: np.random.Generator,
    ratings: Sequence[np.ndarray] | np.ndarray | None = None,
    rating_threshold: float = 4.0,
    negatives_per_click: int = 1,
) -> dict[str, np.ndarray]:
    """Labelled (history, candidate) pairs for click prediction, one per item that has a history.

    With per-item `ratings` (aligned with `sequences`), an item rated >= `rating_threshold` is a
    click (1) and one rated below is an explicit non-click (0). Without ratings, or when no rating
    is below the threshold, every logged item is a click and `negatives_per_click` uniform items
    (never the clicked one) with the same history are non-clicks.
    Returns {"input_ids" [P, max_len], "candidates" [P], "labels" [P] float32}.
    """
    flat, lengths, offsets = _flatten(sequences)
    flat_ratings = np.zeros(0, np.float32)
    if ratings is not None and flat.size:
        flat_ratings = np.concatenate(list(ratings)).astype(np.float32)
    return _ctr_pairs_from_flat(
        flat, flat_ratings, lengths, offsets, max_len, num_items, rng, rating_threshold, negatives_per_click
    )


def ctr_pairs_from_ray_batch(
    batch: Mapping[str, Any],
    max_len: int,
    num_items: int,
    rng: np.random.Generator,
    rating_threshold: float = 4.0,
    negatives_per_click: int = 1,
) -> dict[str, np.ndarray]:
    """`ctr_pairs` over the training parts of a sequences-table batch (columns "items", "train_len"
    and, when the log has them, "ratings")."""
    flat, ratings, lengths, offsets = _training_parts(batch)
    return _ctr_pairs_from_flat(
        flat, ratings, lengths, offsets, max_len, num_items, rng, rating_threshold, negatives_per_click
    )


def ctr_eval_pairs(
    histories: Sequence[np.ndarray],
    targets: np.ndarray,
    target_ratings: np.ndarray | None,
    max_len: int,
    num_items: int,
    rng: np.random.Generator,
    rating_threshold: float = 4.0,
) -> dict[str, np.ndarray]:
    """Click-prediction examples of a held-out split: each user's history and held-out item.

    With ratings, the held-out item is a click when rated >= `rating_threshold`, else a non-click.
    Without ratings (or when every held-out item is a click) each held-out item is a click and one
    uniform item (never it) with the same history is a non-click, so the AUC is defined.
    Returns {"input_ids" [P, max_len], "candidates" [P], "labels" [P] float32}.
    """
    input_ids = pad_histories(histories, max_len)
    candidates = np.asarray(targets, dtype=np.int64)
    labels = np.ones(candidates.size, dtype=bool)
    if target_ratings is not None:
        labels = np.asarray(target_ratings) >= rating_threshold
    if labels.all():
        input_ids = np.concatenate([input_ids, input_ids])
        candidates = np.concatenate([candidates, _sampled_items(candidates, num_items, rng)])
        labels = np.arange(candidates.size) < targets.size
    return {"input_ids": input_ids, "candidates": candidates, "labels": labels.astype(np.float32)}


def ctr_rows_from_ray_batch(
    batch: Mapping[str, Any], max_len: int, num_items: int, seed: int, rating_threshold: float, negatives_per_click: int
) -> dict[str, np.ndarray]:
    """Ray Data `map_batches` function: sequences-table batch -> click-prediction training rows.

    The sampled non-clicks are seeded by the batch's first user, so an epoch's pairs are reproducible."""
    first_user = int(np.asarray(batch["user_index"])[0]) if len(batch["user_index"]) else 0
    rng = np.random.default_rng([seed, first_user])
    return ctr_pairs_from_ray_batch(batch, max_len, num_items, rng, rating_threshold, negatives_per_click)
