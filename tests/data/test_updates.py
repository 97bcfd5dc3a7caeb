"""What `raysys update` learns from: the events after a dataset's latest time, the newest held out by
time, the dataset's rows as a source, and held-out examples (first positive held-out event per user,
everything the user did before it as history)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from raysys.bench.model_dirs import write_random_dataset
from raysys.data.event_log import EventLogWriter, event_record
from raysys.data.updates import (
    SOURCE_SCHEMA,
    HoldoutExamples,
    dataset_rows,
    holdout_examples,
    latest_time,
    logged_since,
    split_newest,
    write_update_source,
)


def rows(*records: tuple[str, str, int, str]) -> pa.Table:
    return pa.Table.from_pylist([dict(zip(SOURCE_SCHEMA.names, r, strict=True)) for r in records], SOURCE_SCHEMA)


def test_events_after_the_cutoff_in_time_order_and_the_newest_held_out(tmp_path: Path) -> None:
    with EventLogWriter(tmp_path / "log", "r0") as log:
        log.append([event_record("u1", "a", timestamp=5.0), event_record("u2", "b", "skip", 12.7)])
    with EventLogWriter(tmp_path / "log", "r1") as log:
        log.append([event_record("u1", "c", timestamp=11.0), event_record("u3", "d", timestamp=20.0)])
    new, position = logged_since(str(tmp_path / "log"), 10, tmp_path / "cache")
    assert new.schema == SOURCE_SCHEMA and position == {"r0": 1, "r1": 1}
    assert new.to_pylist() == [
        {"user_id": "u1", "item_id": "c", "timestamp": 11, "event": "click"},
        {"user_id": "u2", "item_id": "b", "timestamp": 12, "event": "skip"},
        {"user_id": "u3", "item_id": "d", "timestamp": 20, "event": "click"},
    ]
    train, held = split_newest(new, 0.3)  # ceil(0.9) = 1 held out: the newest
    assert train.num_rows == 2 and held["item_id"].to_pylist() == ["d"]
    assert split_newest(new.slice(0, 0), 0.3)[1].num_rows == 0

    # After an update's position: what was logged since, whatever its time (a replay of old events too)
    with EventLogWriter(tmp_path / "log", "r0") as log:
        log.append([event_record("u4", "e", timestamp=1.0)])
    since, later = logged_since(str(tmp_path / "log"), 10, tmp_path / "cache", position)
    assert since["item_id"].to_pylist() == ["e"] and later == {"r0": 2, "r1": 1}
    unknown_writer, _ = logged_since(str(tmp_path / "log"), 10, tmp_path / "cache", {"r0": 2})
    assert unknown_writer["item_id"].to_pylist() == ["c", "d"]  # a writer the position does not name: all of it


def test_the_dataset_rows_and_the_holdout_examples(tmp_path: Path) -> None:
    dataset = write_random_dataset(tmp_path / "data", num_items=20, num_users=4, max_history=6)
    base = dataset_rows(dataset)
    seq = dataset.sequences(["user_id", "items"])
    assert base.num_rows == sum(len(s) for s in seq["items"].to_pylist())
    first = [dataset.item_ids()[i] for i in seq["items"][0].as_py()]
    assert base.filter(pa.compute.equal(base["user_id"], "u0"))["item_id"].to_pylist() == first
    assert latest_time(dataset) == max(len(s) for s in seq["items"].to_pylist()) - 1

    train = rows(("u0", "x1", 100, "click"), ("u0", "x2", 101, "skip"), ("new", "x1", 102, "click"))
    held = rows(
        ("u0", "x3", 200, "dislike"),  # not a positive: never a target
        ("u0", "x4", 201, "click"),
        ("new", "x2", 202, "click"),
        ("new", "x5", 203, "click"),  # the user's second held-out event: not a target either
    )
    examples = holdout_examples(dataset, train, held, ["skip", "dislike"])
    assert examples.users == ["new", "u0"] and examples.targets == ["x2", "x4"]
    assert examples.histories == [["x1"], [*first, "x1"]]  # positives before the target, oldest first
    examples.write(tmp_path / "examples.parquet")
    assert HoldoutExamples.read(tmp_path / "examples.parquet") == examples

    source = write_update_source(dataset, train, tmp_path / "source")
    assert pq.read_table(source / "base.parquet").equals(base)
    assert pq.read_table(source / "new.parquet").equals(train)


def test_logged_items_are_the_latest_embedding_per_item(tmp_path: Path) -> None:
    import numpy as np

    from raysys.data.event_log import item_record
    from raysys.data.updates import logged_items

    with EventLogWriter(tmp_path / "log", "r0") as log:
        log.append([item_record("new", np.zeros(4), timestamp=1.0), event_record("u", "new", timestamp=2.0)])
        log.append(
            [item_record("new", np.ones(4), timestamp=3.0), item_record("other", np.full(4, 2.0), timestamp=4.0)]
        )
    items = logged_items(str(tmp_path / "log"), tmp_path / "cache").sort_by("item_id")
    assert items.to_pylist() == [
        {"item_id": "new", "embedding": [1.0] * 4},
        {"item_id": "other", "embedding": [2.0] * 4},
    ]
