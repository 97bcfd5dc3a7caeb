"""Fixed-length batches from item sequences: left padding, truncation, next-item and Cloze targets."""

from __future__ import annotations

import numpy as np

from raysys.data.dataset import PAD_INDEX


def pad_histories(histories: list[np.ndarray], max_len: int) -> np.ndarray:
    """Left-pad (with PAD_INDEX) and truncate histories to their most recent `max_len` items.

    Returns [B, max_len] int64, most recent item in the last column.
    """
    out = np.full((len(histories), max_len), PAD_INDEX, dtype=np.int64)
    lengths = np.fromiter((min(len(h), max_len) for h in histories), dtype=np.int64, count=len(histories))
    if len(histories) == 0:
        return out
    flat = np.concatenate([h[len(h) - n :] for h, n in zip(histories, lengths)]) if lengths.sum() else np.empty(0)
    rows = np.repeat(np.arange(len(histories)), lengths)
    cols = max_len - np.repeat(lengths, lengths) + (np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths))
    out[rows, cols] = flat
    return out
