"""Block functions of the prepare pipeline: vocabularies, encoding, per-user sequences, k-core, shards.

Each function takes and returns a pyarrow Table (one Ray Data block) and runs inside a Ray task; all
work is vectorized (pyarrow compute / numpy), never a Python loop per row or per user. Index spaces:

    vocab position  0..V-1 over the sorted vocabulary (what `encode_block` emits)
    user_index      final, 0..num_users-1 after filtering (what the dataset stores)
    item_index      final, 2..num_items+1 after filtering (0 = pad, 1 = mask)
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from raysys.data.dataset import SEQUENCES_DIR
from raysys.data.validate import REASONS, UNREADABLE

INTEGER_ID = r"^-?\d{1,18}$"
# zstd level 1 without dictionary pages: smallest shards here (26 MB per 5 M interactions vs 40 MB with
# the default snappy + dictionary), written and read in less time than the default.
PARQUET_OPTIONS = {"compression": "zstd", "compression_level": 1, "use_dictionary": False}


# ---------------------------------------------------------------- vocabularies


def summarize_block(block: pa.Table) -> pa.Table:
    """One row per normalized block: its row count, bad rows per reason, the first bad row (ordinal and
    reason; -1 and 0 when none), the first UNREADABLE marker (-1 when none), and its distinct good IDs."""
    reason, ordinal = block["reason"].to_numpy(), block["ordinal"].to_numpy()
    counts = np.bincount(reason, minlength=UNREADABLE + 1)
    bad = np.flatnonzero((reason > 0) & (reason != UNREADABLE))
    first = bad[np.argmin(ordinal[bad])] if len(bad) else -1
    unreadable = ordinal[reason == UNREADABLE]
    return pa.table(
        {
            "num_rows": pa.array([block.num_rows - counts[UNREADABLE]], pa.int64()),
            "reason_counts": pa.array([counts[1 : len(REASONS) + 1].tolist()], pa.list_(pa.int64())),
            "first_bad": pa.array([ordinal[first] if first >= 0 else -1], pa.int64()),
            "first_bad_reason": pa.array([reason[first] if first >= 0 else 0], pa.int8()),
            "first_unreadable": pa.array([unreadable.min() if len(unreadable) else -1], pa.int64()),
            "user_ids": _as_list_cell(used_dictionary_values(block["user_id"])),
            "item_ids": _as_list_cell(used_dictionary_values(block["item_id"])),
        }
    )


def used_dictionary_values(column: pa.ChunkedArray) -> pa.Array:
    """Distinct non-null values of a dictionary column, only those some row refers to (a sliced block
    keeps its whole dictionary)."""
    parts = []
    for chunk in column.chunks:
        used = np.bincount(pc.drop_null(chunk.indices).to_numpy(), minlength=len(chunk.dictionary)) > 0
        parts.append(chunk.dictionary.filter(pa.array(used)))
    if not parts:
        return pa.array([], pa.string())
    return pc.unique(pa.concat_arrays(parts)) if len(parts) > 1 else parts[0]


def build_vocab(ids: pa.Array) -> pa.Array:
    """Distinct IDs in their index order: numeric order when every ID is a decimal integer (MovieLens user
    '1' gets index 0), else lexicographic (byte) order. Deterministic whatever the file or block order."""
    ids = pc.unique(ids)
    if len(ids) and pc.all(pc.match_substring_regex(ids, INTEGER_ID)).as_py():
        order = pc.sort_indices(
            pa.table({"n": pc.cast(ids, pa.int64()), "s": ids}), sort_keys=[("n", "ascending"), ("s", "ascending")]
        )
    else:
        order = pc.sort_indices(ids)
    return ids.take(order)


def extend_vocab(base: pa.Array, ids: pa.Array) -> pa.Array:
    """`base` (a vocabulary, in index order) followed by the distinct `ids` it lacks, in `build_vocab` order."""
    base = base.cast(ids.type)
    new = ids.filter(pc.invert(pc.is_in(ids, value_set=base))) if len(base) else ids
    return pa.concat_arrays([base, build_vocab(new).cast(ids.type)])


def _as_list_cell(values: pa.Array) -> pa.Array:
    """A one-row list array holding `values`."""
    return pa.ListArray.from_arrays(pa.array([0, len(values)], pa.int32()), values)


# ---------------------------------------------------------------- encoding and per-user rows


def encode_block(block: pa.Table, *, user_vocab: pa.Array, item_vocab: pa.Array, num_buckets: int) -> pa.Table:
    """Good rows of a normalized block with IDs replaced by vocabulary positions (int32), plus the
    user's bucket (int32): users 0..U-1 cut into `num_buckets` contiguous ranges, the shuffle key."""
    if pc.max(block["reason"]).as_py():
        block = block.filter(pc.equal(block["reason"], 0))
    users = _positions(block["user_id"], user_vocab)
    bucket = users.to_numpy().astype(np.int64) * num_buckets // max(len(user_vocab), 1)
    columns = {
        "bucket": pa.array(bucket.astype(np.int32)),
        "user_index": users,
        "item_index": _positions(block["item_id"], item_vocab),
        "timestamp": block["timestamp"],
        "ordinal": block["ordinal"],
    }
    for optional in ("rating", "event"):
        if optional in block.column_names:
            columns[optional] = block[optional]
    return pa.table(columns)


def _positions(column: pa.ChunkedArray, vocab: pa.Array) -> pa.Array:
    """Vocabulary positions of a dictionary column: a lookup per dictionary entry, then a gather."""
    column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    lookup = pc.index_in(column.dictionary, value_set=vocab)
    return pc.take(pc.cast(lookup, pa.int32()), column.indices)


def build_user_rows(block: pa.Table, drop_duplicates: bool = True) -> pa.Table:
    """Encoded interactions holding every row of each of their users (one bucket) -> one row per user:

        user_index int32 (vocab position), items list<int32> (vocab positions), timestamps list<int64>,
        [ratings list<float32>], [events list<string>], num_duplicates int32,
        first_duplicate int64, duplicate_of int64   (ordinals; -1 except on the user holding the
                                                     block's earliest duplicate, for the error message)

    Lists are chronological; the sort is on (user, timestamp, ordinal), so file order breaks ties.
    A row with the same user, item and timestamp as an earlier row is a duplicate: dropped and counted
    (with drop_duplicates; without it, the event log's case, such rows are repeats and kept).
    """
    table = block.combine_chunks()
    table = table.take(
        pc.sort_indices(
            table, sort_keys=[("user_index", "ascending"), ("timestamp", "ascending"), ("ordinal", "ascending")]
        )
    )
    user = table["user_index"].to_numpy()
    starts = _run_starts(user)
    if drop_duplicates:
        repeats = _duplicates(user, table["timestamp"].to_numpy(), table["item_index"].to_numpy())
    else:
        repeats = np.full(len(user), -1, dtype=np.int64)
    dup = repeats >= 0
    num_dups = np.zeros(len(starts), dtype=np.int32)
    first_dup, dup_of = np.full(len(starts), -1, np.int64), np.full(len(starts), -1, np.int64)
    if dup.any():
        ordinal = table["ordinal"].to_numpy()
        num_dups = np.add.reduceat(dup.astype(np.int32), starts).astype(np.int32)
        earliest = np.flatnonzero(dup)[np.argmin(ordinal[dup])]
        owner = np.searchsorted(starts, earliest, side="right") - 1
        first_dup[owner], dup_of[owner] = ordinal[earliest], ordinal[repeats[earliest]]
        table = table.filter(pa.array(~dup))
        user = table["user_index"].to_numpy()
        starts = _run_starts(user)
    offsets = pa.array(np.append(starts, len(user)).astype(np.int32))
    columns = {
        "user_index": pa.array(user[starts], pa.int32()),
        "items": pa.ListArray.from_arrays(offsets, table["item_index"].combine_chunks()),
        "timestamps": pa.ListArray.from_arrays(offsets, table["timestamp"].combine_chunks()),
    }
    if "rating" in table.column_names:
        columns["ratings"] = pa.ListArray.from_arrays(offsets, table["rating"].combine_chunks())
    if "event" in table.column_names:
        events = pc.cast(table["event"].combine_chunks(), pa.string())
        columns["events"] = pa.ListArray.from_arrays(offsets, events)
    columns["num_duplicates"] = pa.array(num_dups, pa.int32())
    columns["first_duplicate"], columns["duplicate_of"] = pa.array(first_dup), pa.array(dup_of)
    return pa.table(columns)


def _run_starts(values: np.ndarray) -> np.ndarray:
    """[runs] positions where a run of equal values starts (values sorted)."""
    if len(values) == 0:
        return np.zeros(0, dtype=np.int64)
    return np.flatnonzero(np.r_[True, values[1:] != values[:-1]])


def _duplicates(user: np.ndarray, time: np.ndarray, item: np.ndarray) -> np.ndarray:
    """[n] int64: for each row (sorted by user, time, ordinal) that repeats an earlier row's (user, time,
    item), the position of that earlier row; -1 for every other row.

    Only rows inside a run of equal (user, time) can repeat one, so only those are sorted by item; the
    sort is stable, so the row kept is the earliest in file order.
    """
    n = len(user)
    repeats = np.full(n, -1, dtype=np.int64)
    if n < 2:
        return repeats
    same_as_prev = (user[1:] == user[:-1]) & (time[1:] == time[:-1])
    if not same_as_prev.any():
        return repeats
    run = np.cumsum(np.r_[True, ~same_as_prev])  # [n] id of each (user, time) run
    tied = np.flatnonzero(np.r_[same_as_prev, False] | np.r_[False, same_as_prev])  # rows in a run of length >= 2
    order = tied[np.lexsort((item[tied], run[tied]))]
    new_group = np.r_[True, (run[order][1:] != run[order][:-1]) | (item[order][1:] != item[order][:-1])]
    group_first = order[np.flatnonzero(new_group)][np.cumsum(new_group) - 1]  # [tied] first row of its group
    repeats[order[~new_group]] = group_first[~new_group]
    return repeats


# ---------------------------------------------------------------- k-core


def kcore_counts(block: pa.Table, *, user_alive: np.ndarray, item_alive: np.ndarray, min_user: int) -> pa.Table:
    """One round of the iterated k-core over user rows, as one row: the users of this block that die this
    round (fewer than max(min_user, 1) live items) and per-item counts over the surviving users.

        user_alive [num_vocab_users] bool, item_alive [num_vocab_items] bool (vocab positions)
    """
    users = block["user_index"].to_numpy()
    flat, owner = _flat_items(block["items"])
    was_alive = user_alive[users]
    live = item_alive[flat] & was_alive[owner]
    ok = was_alive & (np.bincount(owner[live], minlength=len(users)) >= max(min_user, 1))
    counts = np.bincount(flat[live & ok[owner]], minlength=len(item_alive)).astype(np.int32)
    return pa.table(
        {
            "dead_users": _as_list_cell(pa.array(users[was_alive & ~ok], pa.int32())),
            "item_counts": _as_list_cell(pa.array(counts)),
        }
    )


def _flat_items(items: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """(flat item positions [n], owning row of each [n]) of a list<int32> column."""
    items = items.combine_chunks() if items.num_chunks != 1 else items.chunk(0)
    return pc.list_flatten(items).to_numpy(), pc.list_parent_indices(items).to_numpy()


# ---------------------------------------------------------------- output shards


def write_shard(
    block: pa.Table,
    *,
    user_map: np.ndarray,
    item_map: np.ndarray,
    user_vocab: pa.Array,
    out_dir: str,
    held_out: np.ndarray | None = None,
    time_cutoff: float | None = None,
) -> pa.Table:
    """Write one `sequences/part-*.parquet` shard (layout in raysys.data.dataset) from user rows and
    return one row describing it: file, size, sha256, counts, and the distinct items of its train parts.

        user_map [num_vocab_users] int32: final user_index (increasing in vocab position), -1 if filtered
        item_map [num_vocab_items] int32: final item_index (from 2), or 0 for a filtered item
        held_out [item_vocab_size] bool over final item indices: items kept out of training parts
                 (`data.cold_item_holdout`; see `hold_out`), or None
        time_cutoff: the temporal split (`data.split=temporal`): per user, the first interaction after it
                 is the test target, the last one at or before it the valid target, later ones are dropped
                 (`after_cutoff`); None: leave-one-out
    """
    users = block["user_index"].to_numpy()
    if (np.diff(users) < 0).any():  # build_user_rows emits users in order; merged blocks may not be
        block = block.take(pa.array(np.argsort(users, kind="stable")))
        users = block["user_index"].to_numpy()
    flat, owner = _flat_items(block["items"])
    new_user, new_item = user_map[users], item_map[flat]
    keep = (new_item > 0) & (new_user[owner] >= 0)
    assert (np.bincount(owner[keep], minlength=len(users))[new_user >= 0] > 0).all(), "a kept user has no items"
    held = np.zeros(len(flat), dtype=bool)
    if held_out is not None:
        held = hold_out(keep, owner, held_out[new_item], len(users))
        keep &= ~held
    late = np.zeros(len(flat), dtype=bool)
    after = np.zeros(len(flat), dtype=bool)
    if time_cutoff is not None:
        after = _timestamps(block) > time_cutoff
        late = after_cutoff(keep, owner, after)
        keep &= ~late
    rows = np.flatnonzero(new_user >= 0)  # kept users, already in final index order
    lengths = np.bincount(owner[keep], minlength=len(users))[rows].astype(np.int32)
    if time_cutoff is None:
        targets = leave_one_out(lengths)
    else:
        targets = temporal_targets(lengths, np.bincount(owner[keep & after], minlength=len(users))[rows])
    stats = {
        "num_users": len(rows),
        "num_interactions": int(keep.sum()),
        "num_held_out": int(held.sum()),
        "num_after_cutoff": int(late.sum()),
        "num_filtered": int(len(flat) - keep.sum() - held.sum() - late.sum()),
        "num_duplicates": int(pc.sum(block["num_duplicates"]).as_py() or 0),
        "num_valid": int((targets[1] >= 0).sum()),
        "num_test": int((targets[2] >= 0).sum()),
        "max_timestamp": _max_timestamp(block, keep),
        **_earliest_duplicate(block),
    }
    if len(rows) == 0:
        return _shard_row("", 0, "", stats, np.zeros(0, np.int32))
    shard = _shard_table(block, rows, lengths, keep, new_item[keep], new_user[rows], user_vocab, targets)
    name = f"{SEQUENCES_DIR}/part-{int(new_user[rows[0]]):09d}.parquet"
    path = Path(out_dir) / name
    pq.write_table(shard, path, **PARQUET_OPTIONS)
    return _shard_row(name, path.stat().st_size, file_sha256(path), stats, _train_items(shard))


def hold_out(keep: np.ndarray, owner: np.ndarray, is_held: np.ndarray, num_users: int) -> np.ndarray:
    """Which list elements `data.cold_item_holdout` removes: a held-out item stays only as one of a user's
    last two kept interactions (the valid and test targets) while something is left to train on before
    them; a user whose every earlier item is held out loses its evaluation, and its held-out items go.

        keep [n] bool kept elements (list order, grouped by user), owner [n] their row, is_held [n] bool
        -> [n] bool elements to drop (a subset of `keep`)
    """
    kept = np.flatnonzero(keep)
    user = owner[kept]
    lengths = np.bincount(user, minlength=num_users)
    from_end = lengths[user] - 1 - (np.arange(len(kept)) - np.searchsorted(user, user))  # 0 = the last
    target = (lengths[user] >= 3) & (from_end < 2)  # the valid and test targets, before any drop
    held = is_held[kept]
    trainable = np.bincount(user[~target & ~held], minlength=num_users)  # training items left
    evaluated = (lengths >= 3) & (trainable > 0)
    drop = np.zeros(len(keep), dtype=bool)
    drop[kept] = held & ~(target & evaluated[user])
    return drop


def after_cutoff(keep: np.ndarray, owner: np.ndarray, after: np.ndarray) -> np.ndarray:
    """Which kept elements the temporal split drops: those after the cutoff except each user's first,
    which stays (the test target) only when the user has a kept element before it.

        keep, after [n] bool (list order, grouped by user, chronological), owner [n] their row -> [n] bool
    """
    late = keep & after
    first = np.zeros(len(keep), dtype=bool)
    at = np.flatnonzero(late)
    if len(at):
        users = owner[at]
        first[at[np.r_[True, users[1:] != users[:-1]]]] = True
    has_past = np.zeros(int(owner.max()) + 1 if len(owner) else 0, dtype=bool)
    has_past[owner[keep & ~after]] = True
    return late & ~(first & has_past[owner])


def leave_one_out(lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(train_len, valid position, test position) per user row (-1: none): the last item is the test
    target and the one before it the valid target, for users with at least 3 items."""
    has_eval = lengths >= 3
    return (
        np.where(has_eval, lengths - 2, lengths),
        np.where(has_eval, lengths - 2, -1),
        np.where(has_eval, lengths - 1, -1),
    )


def temporal_targets(lengths: np.ndarray, num_after: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The temporal split's (train_len, valid position, test position) per user row (-1: none): the
    row is the user's interactions up to the cutoff plus at most one after it (`num_after`); that one is
    the test target, the last one up to the cutoff the valid target when another stays to train on."""
    past = lengths - num_after
    has_valid = past >= 2
    train_len = np.where(has_valid, past - 1, past)
    return train_len, np.where(has_valid, past - 1, -1), np.where((num_after > 0) & (past > 0), lengths - 1, -1)


def _timestamps(block: pa.Table) -> np.ndarray:
    return pc.list_flatten(block["timestamps"].combine_chunks()).to_numpy()


def _max_timestamp(block: pa.Table, keep: np.ndarray) -> int:
    """The latest time among the kept elements (-1 when none, or the rows carry no time)."""
    if "timestamps" not in block.column_names or not keep.any():
        return -1
    return int(pc.list_flatten(block["timestamps"].combine_chunks()).to_numpy()[keep].max())


def _earliest_duplicate(block: pa.Table) -> dict[str, int]:
    """Ordinals of the block's earliest duplicate row and of the row it repeats (-1, -1 when none)."""
    first = block["first_duplicate"].to_numpy()
    if not (first >= 0).any():
        return {"first_duplicate": -1, "duplicate_of": -1}
    row = int(np.flatnonzero(first >= 0)[np.argmin(first[first >= 0])])
    return {"first_duplicate": int(first[row]), "duplicate_of": int(block["duplicate_of"][row].as_py())}


def _shard_table(
    block: pa.Table,
    rows: np.ndarray,
    lengths: np.ndarray,
    keep: np.ndarray,
    items: np.ndarray,
    user_index: np.ndarray,
    user_vocab: pa.Array,
    targets: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> pa.Table:
    """The kept users' rows: kept elements stay in list order (so grouped by user, in user order), items
    re-indexed, plus the split.

        rows [U'] kept rows of `block`, lengths [U'] their kept counts, keep [n] mask over list elements,
        items [n'] final item indices of the kept elements, user_index [U'] final user indices,
        targets: [U'] train_len, valid and test positions within the row (-1: none)
    """
    offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32))
    start = offsets.to_numpy()[:-1]
    train_len, valid, test = targets
    items = items.astype(np.int32)
    columns = {
        "user_index": pa.array(user_index.astype(np.int32)),
        "user_id": user_vocab.take(pa.array(block["user_index"].to_numpy()[rows])),
        "items": pa.ListArray.from_arrays(offsets, pa.array(items)),
    }
    everything = bool(keep.all())
    for name in ("timestamps", "ratings", "events"):
        if name in block.column_names:
            values = pc.list_flatten(block[name].combine_chunks())
            columns[name] = pa.ListArray.from_arrays(offsets, values if everything else values.filter(pa.array(keep)))
    at = (lambda i: items[np.maximum(i, 0)]) if len(items) else (lambda i: np.zeros(len(i), np.int32))
    columns["train_len"] = pa.array(train_len.astype(np.int32))
    columns["valid_target"] = pa.array(np.where(valid >= 0, at(start + valid), 0).astype(np.int32))
    columns["test_target"] = pa.array(np.where(test >= 0, at(start + test), 0).astype(np.int32))
    return pa.table(columns)


def _train_items(shard: pa.Table) -> np.ndarray:
    """Distinct item indices in the shard's train parts (items[:train_len])."""
    items = shard["items"].combine_chunks()
    flat, owner = pc.list_flatten(items).to_numpy(), pc.list_parent_indices(items).to_numpy()
    offsets = items.offsets.to_numpy() - items.offsets[0].as_py()
    position = np.arange(len(flat)) - offsets[owner]
    return np.unique(flat[position < shard["train_len"].to_numpy()[owner]]).astype(np.int32)


def _shard_row(name: str, size: int, checksum: str, stats: dict[str, int], train_items: np.ndarray) -> pa.Table:
    return pa.table(
        {
            "file": [name],
            "size": pa.array([size], pa.int64()),
            "sha256": [checksum],
            **{k: pa.array([v], pa.int64()) for k, v in stats.items()},
            "train_items": _as_list_cell(pa.array(train_items, pa.int32())),
        }
    )


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's content (about 2 GB/s with SHA extensions)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
