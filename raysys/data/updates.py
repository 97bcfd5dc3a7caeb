"""What `raysys update` learns from: the events logged after a prepared dataset's latest interaction,
split by time into what is trained on and what is held out, and the rows of both old and new.

    new = logged_since("runs/serve/event_log", cutoff)   # user_id, item_id, timestamp, event; time order
    train, held = split_newest(new, 0.1)                 # the newest 10 % held out, by time
    write_update_source(dataset, train, out_dir)         # base.parquet (the dataset's rows) + new.parquet
    examples = holdout_examples(dataset, train, held, negative_events=("skip", "dislike"))

Held-out examples follow the leave-one-out protocol on the new events: per user with a positive
held-out event, the first one is the target and everything the user did before it (the dataset's
rows and the trained-on new events, positives only) is the history.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from raysys import storage
from raysys.data.dataset import PreparedDataset
from raysys.data.event_log import interactions, read_log
from raysys.errors import RaysysError

SOURCE_SCHEMA = pa.schema(
    [("user_id", pa.string()), ("item_id", pa.string()), ("timestamp", pa.int64()), ("event", pa.string())]
)
LOG_MIRRORS = "event_logs"  # under data.cache_dir: local copies of s3:// / gs:// event logs


@dataclass(frozen=True)
class HoldoutExamples:
    """Evaluation examples in original ids: each user's history (oldest first) and its target."""

    users: list[str]
    histories: list[list[str]]
    targets: list[str]

    def write(self, path: Path) -> None:
        """As Parquet: user_id, history (list of ids), target."""
        table = pa.table(
            {
                "user_id": pa.array(self.users, pa.string()),
                "history": pa.array(self.histories, pa.list_(pa.string())),
                "target": pa.array(self.targets, pa.string()),
            }
        )
        pq.write_table(table, path)

    @classmethod
    def read(cls, path: Path) -> HoldoutExamples:
        table = pq.read_table(path)
        return cls(table["user_id"].to_pylist(), table["history"].to_pylist(), table["target"].to_pylist())


def latest_time(dataset: PreparedDataset) -> int:
    """The time of the dataset's latest interaction: its manifest's `max_timestamp` (read from its rows
    for a dataset prepared before the manifest recorded it)."""
    recorded = dataset.manifest.get("max_timestamp")
    if recorded is not None:
        return int(recorded)
    times = pc.list_flatten(dataset.sequences(["timestamps"])["timestamps"].combine_chunks())
    return int(pc.max(times).as_py()) if len(times) else -1


def logged_since(
    location: str, cutoff: float, cache_dir: str | Path, position: dict[str, int] | None = None
) -> tuple[pa.Table, dict[str, int]]:
    """The event log's interactions not learnt from yet (SOURCE_SCHEMA, time order) and the log's
    position now ({writer: last seq}, what the next update starts after). Not learnt from: past
    `position` when one is known (an earlier update's: whatever their timestamps say), else timed after
    `cutoff`. `location`: a log directory, or an s3:// / gs:// log (its sealed segments, copied under
    cache_dir first)."""
    log = read_log(local_log(location, cache_dir))
    now = log.group_by("writer").aggregate([("seq", "max")])
    reached = dict(zip(now["writer"].to_pylist(), now["seq_max"].to_pylist(), strict=True))
    if position is None:
        new = log.filter(pc.greater(log["timestamp"], cutoff))
    else:
        after = [position.get(w, -1) for w in log["writer"].to_pylist()]
        new = log.filter(pc.greater(log["seq"], pa.array(after, pa.int64())))
    return _as_source(interactions(new)), {**(position or {}), **reached}


def logged_items(location: str, cache_dir: str | Path) -> pa.Table:
    """item_id, embedding of the items added through POST /items in the event log (the latest per item)."""
    log = read_log(local_log(location, cache_dir))
    items = log.filter(pc.equal(log["kind"], "item")).sort_by([("timestamp", "descending")])
    rows = items.append_column("row", pa.array(np.arange(items.num_rows)))
    latest = rows.group_by("item_id", use_threads=False).aggregate([("row", "min")])["row_min"]
    items = items.take(latest)
    return pa.table({"item_id": items["item_id"], "embedding": items["text_embedding"]})


def split_newest(table: pa.Table, fraction: float) -> tuple[pa.Table, pa.Table]:
    """(older, newest): the newest ceil(fraction x rows) rows of a time-ordered table held apart."""
    held = min(table.num_rows, math.ceil(fraction * table.num_rows))
    return table.slice(0, table.num_rows - held), table.slice(table.num_rows - held)


def dataset_rows(dataset: PreparedDataset) -> pa.Table:
    """Every kept interaction of a prepared dataset as rows (SOURCE_SCHEMA, "click" without event types)."""
    columns = ["user_id", "items", "timestamps"] + (["events"] if _has_column(dataset, "events") else [])
    seq = dataset.sequences(columns)
    ids = pa.array(dataset.item_ids(), pa.string())
    items = seq["items"].combine_chunks()
    owner = pc.list_parent_indices(items)
    flat = pc.list_flatten(items)
    if "events" in columns:
        events = pc.cast(pc.list_flatten(seq["events"].combine_chunks()), pa.string())
    else:
        events = pa.array(["click"] * len(flat), pa.string())
    return pa.table(
        {
            "user_id": seq["user_id"].combine_chunks().take(owner),
            "item_id": ids.take(flat),
            "timestamp": pc.cast(pc.list_flatten(seq["timestamps"].combine_chunks()), pa.int64()),
            "event": events,
        },
        SOURCE_SCHEMA,
    )


def write_update_source(dataset: PreparedDataset, new: pa.Table, out_dir: Path) -> Path:
    """A Parquet log of the dataset's rows (base.parquet) and `new` (new.parquet); returns the folder."""
    out_dir.mkdir(parents=True, exist_ok=True)
    pq.write_table(dataset_rows(dataset), out_dir / "base.parquet")
    pq.write_table(_as_source(new), out_dir / "new.parquet")
    return out_dir


def holdout_examples(
    dataset: PreparedDataset, train: pa.Table, held: pa.Table, negative_events: Collection[str]
) -> HoldoutExamples:
    """Per user with a positive held-out event: the first one (target) and the user's positive rows
    before it in the dataset and in `train` (history, oldest first)."""
    negative = pa.array(list(negative_events), pa.string())
    held = held.filter(pc.invert(pc.is_in(held["event"], negative)))
    firsts: dict[str, tuple[int, str]] = {}
    for user, item, time in zip(*(held[c].to_pylist() for c in ("user_id", "item_id", "timestamp")), strict=True):
        if user not in firsts:  # `held` is in time order
            firsts[user] = (time, item)
    if not firsts:
        return HoldoutExamples([], [], [])
    before = pa.concat_tables([dataset_rows(dataset), _as_source(train)])
    before = before.filter(pc.is_in(before["user_id"], pa.array(list(firsts), pa.string())))
    before = before.filter(pc.invert(pc.is_in(before["event"], negative)))
    before = before.sort_by([("user_id", "ascending"), ("timestamp", "ascending")])
    histories: dict[str, list[str]] = {user: [] for user in firsts}
    for user, item, time in zip(*(before[c].to_pylist() for c in ("user_id", "item_id", "timestamp")), strict=True):
        if time < firsts[user][0]:
            histories[user].append(item)
    users = sorted(firsts)
    return HoldoutExamples(users, [histories[u] for u in users], [firsts[u][1] for u in users])


def local_log(location: str, cache_dir: str | Path) -> Path:
    """The log directory to read: `location`, or its copy under cache_dir for an s3:// / gs:// log."""
    if storage.is_uri(location):
        local = storage.local_mirror(location, Path(cache_dir).expanduser() / LOG_MIRRORS)
        root = storage.download(location, local) if storage.exists(location) else local
    else:
        root = Path(location).expanduser()
    if not Path(root).is_dir():
        raise RaysysError("no event log here", where=location, hint="set update.event_log (or serve.event_log)")
    return Path(root)


def _as_source(table: pa.Table) -> pa.Table:
    """user_id, item_id, timestamp (whole seconds), event as SOURCE_SCHEMA, in time order (stable)."""
    timestamps = pc.cast(pc.floor(pc.cast(table["timestamp"], pa.float64())), pa.int64())
    events = table["event"] if "event" in table.column_names else pa.array(["click"] * table.num_rows)
    out = pa.table(
        {"user_id": table["user_id"], "item_id": table["item_id"], "timestamp": timestamps, "event": events}
    ).cast(SOURCE_SCHEMA)
    order = np.argsort(out["timestamp"].to_numpy(), kind="stable")
    return out.take(pa.array(order))


def _has_column(dataset: PreparedDataset, name: str) -> bool:
    try:
        dataset.sequences_schema([name])
    except KeyError:
        return False
    return True
