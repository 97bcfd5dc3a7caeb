"""The pure pieces of the shard writer: `hold_out` (data.cold_item_holdout)."""

from __future__ import annotations

import numpy as np

from raysys.data.sequences import hold_out


def reference(sequence: list[int], held: set[int]) -> list[int]:
    """What one user keeps: a held-out item only as one of the last two (valid, test) interactions, and
    only while something before them is left to train on."""
    targets = sequence[-2:] if len(sequence) >= 3 else []
    train = sequence[: len(sequence) - len(targets)]
    trainable = [item for item in train if item not in held]
    if targets and trainable:
        return trainable + targets
    return [item for item in sequence if item not in held]


def test_hold_out_keeps_held_items_only_as_evaluated_targets() -> None:
    rng = np.random.default_rng(0)
    sequences = [list(rng.integers(2, 12, size=rng.integers(1, 8))) for _ in range(300)]
    sequences += [[3, 4, 5], [3, 3, 7], [2, 3, 4, 5]]  # 3 held: a target stays only with training left
    held_items = {3, 4}
    flat = np.array([item for seq in sequences for item in seq])
    owner = np.repeat(np.arange(len(sequences)), [len(seq) for seq in sequences])
    keep = rng.random(len(flat)) > 0.1  # some elements already filtered (k-core): they stay dropped
    keep[-10:] = True  # the three hand-written users
    is_held = np.isin(flat, list(held_items))

    drop = hold_out(keep, owner, is_held, len(sequences))

    assert not (drop & ~keep).any()
    kept_before = [
        [int(x) for x, k, o in zip(flat, keep, owner, strict=True) if k and o == u] for u in range(len(sequences))
    ]
    after = keep & ~drop
    kept_after = [
        [int(x) for x, k, o in zip(flat, after, owner, strict=True) if k and o == u] for u in range(len(sequences))
    ]
    assert kept_after == [reference(seq, held_items) for seq in kept_before]
    for seq in kept_after:  # never a held-out item in a training part
        train = seq[:-2] if len(seq) >= 3 else seq
        assert not held_items & set(train)
    assert kept_after[-3:] == [[5], [7], [2, 4, 5]]  # no training left: no evaluation, the held items go
