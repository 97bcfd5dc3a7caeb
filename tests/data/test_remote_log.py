"""An event log in an object store (moto S3, 127.0.0.1): writers ack from the local stage and upload
sealed segments; an unreachable store delays uploads but never an acknowledgement or a record; a fresh
stage (a new disk) continues numbering and rebuilds the live store from the URI; training reads the URI."""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from raysys import storage
from raysys.config import Config
from raysys.data.event_log import EventLogWriter, event_record, item_record, read_log
from raysys.data.remote_log import log_location, pull_segments, push_segments
from raysys.data.sources import resolve_source
from raysys.pipeline.stages import localize_data
from raysys.serve.state import LiveStore

BUCKET = "raysys-log-test"


@pytest.fixture(scope="module")
def bucket(s3_server):
    """The session's moto S3 server (tests/conftest.py) with this module's bucket."""
    import boto3

    boto3.client("s3").create_bucket(Bucket=BUCKET)
    return BUCKET


def wait_for(predicate, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.05)
    return predicate()


def keys(table) -> list[tuple[str, int]]:
    return list(zip(table["writer"].to_pylist(), table["seq"].to_pylist(), strict=True))


def test_log_location_stages_a_uri_and_keeps_a_path(tmp_path: Path) -> None:
    local, remote = log_location("s3://b/logs/app/", str(tmp_path))
    assert remote == "s3://b/logs/app" and local.is_relative_to(tmp_path) and local.name == "app"
    assert log_location("s3://b/logs/app", str(tmp_path))[0] == local  # the same URI, the same stage
    assert log_location(str(tmp_path / "log")) == ((tmp_path / "log").resolve(), None)


def test_sealed_segments_are_uploaded_and_training_reads_the_uri(tmp_path: Path, bucket: str) -> None:
    uri = f"s3://{bucket}/sealed"
    stage = tmp_path / "stage"
    log = EventLogWriter(stage, "r0", seal_records=4, remote=uri)
    for n in range(10):  # two segments sealed by count, the third open
        log.append([event_record(f"u{n % 3}", f"i{n}", timestamp=float(n))])
    assert wait_for(lambda: len(storage.list_files(uri)) == 2)
    log.append([item_record("new", np.ones(4, dtype=np.float32), timestamp=10.0)])
    log.close()  # seals the rest and uploads it
    assert sorted(storage.list_files(uri)) == [f"seg-r0-0000000{n}.parquet" for n in range(3)]
    assert log.uploader.uploaded == 3 and push_segments(stage, uri) == []  # nothing left to upload

    # Training: data.path is the URI; it is copied to the data cache and read as an event log.
    cfg = localize_data(Config.model_validate({"data": {"path": uri, "cache_dir": str(tmp_path / "cache")}}))
    source = resolve_source(cfg.data)  # what the Ray Data read tasks are built from
    assert source.format == "event_log" and len(source.files) == 3
    assert keys(read_log(cfg.data.path)) == keys(read_log(stage)) == [("r0", n) for n in range(11)]


def test_an_unreachable_store_delays_uploads_and_loses_nothing(tmp_path: Path, s3_server: str) -> None:
    import boto3

    uri = "s3://raysys-created-later/log"  # no such bucket yet: every upload fails
    stage = tmp_path / "stage"
    log = EventLogWriter(stage, "r0", seal_records=2, remote=uri)
    assert log.append([event_record("u", "a"), event_record("u", "b")]) == [0, 1]  # acknowledged from the stage
    assert wait_for(lambda: log.uploader.failing) and (stage / "seg-r0-00000000.parquet").is_file()
    boto3.client("s3").create_bucket(Bucket="raysys-created-later")
    log.append([event_record("u", "c"), event_record("u", "d")])  # the next seal retries the first segment too
    assert wait_for(lambda: len(storage.list_files(uri)) == 2) and not log.uploader.failing
    log.close()
    copy = tmp_path / "copy"
    storage.download_dir(uri, copy)
    assert keys(read_log(copy)) == [("r0", n) for n in range(4)]


def test_a_fresh_stage_continues_numbering_and_rebuilds_the_store_from_the_uri(tmp_path: Path, bucket: str) -> None:
    uri = f"s3://{bucket}/fresh"
    first = tmp_path / "node-a"
    with EventLogWriter(first, "r0", remote=uri) as log:
        log.append([event_record("u1", "a", timestamp=1.0), event_record("u1", "b", timestamp=2.0)])
        log.append([item_record("new", np.arange(4, dtype=np.float32), timestamp=3.0)])
    shutil.rmtree(first)  # the node and its disk are gone; the URI holds every sealed record

    second = tmp_path / "node-b"
    with EventLogWriter(second, "r0", remote=uri) as log:  # the same writer name on a new disk
        assert (log.segment, log.next_seq) == (1, 3)  # after what was uploaded, not over it
        log.append([event_record("u1", "c", timestamp=4.0)])
    assert sorted(storage.list_files(uri)) == ["seg-r0-00000000.parquet", "seg-r0-00000001.parquet"]

    async def rebuild() -> None:
        store = LiveStore()
        third = tmp_path / "node-c"
        await store.open_log(str(third), remote=uri)  # an empty stage: the segments are downloaded first
        assert (await store.read(["u1"], 0)).events == {"u1": ["a", "b", "c"]}
        assert store.stats()["items"] == 1 and sorted(p.name for p in third.glob("seg-*")) == sorted(
            storage.list_files(uri)
        )
        store._tail_task.cancel()

    asyncio.run(rebuild())
    assert pull_segments(uri, second) == ["seg-r0-00000000.parquet"]  # only what the stage lacked
    assert keys(read_log(second)) == [("r0", n) for n in range(4)]


def test_the_ab_log_beside_a_uri_log_is_uploaded_and_read_back(tmp_path: Path, bucket: str) -> None:
    """What a replica does for an s3:// event log: its A/B writer stages EVENT_LOG/ab and uploads the sealed
    segments to URI/ab; `raysys abtest` reads them from the URI (copied to the cache), training never does."""
    from raysys.data.ab_log import AB_SCHEMA, ab_location, impression_record, read_ab_log

    uri = f"s3://{bucket}/with-ab"
    stage, _ = log_location(uri, str(tmp_path / "stages"))
    ab_root, ab_remote = ab_location(stage, uri)
    assert ab_remote == f"{uri}/ab"
    with EventLogWriter(stage, "r0", remote=uri) as events, EventLogWriter(ab_root, "r0", remote=ab_remote,
                                                                           schema=AB_SCHEMA) as ab:  # fmt: skip
        events.append([event_record("u1", "i1", timestamp=1.0)])
        ab.append([impression_record(f"req{n}", "u1", "a", ["i1", "i2"], float(n)) for n in range(3)])
    assert list(storage.list_files(ab_remote)) == ["seg-r0-00000000.parquet"]
    read = read_ab_log(uri, str(tmp_path / "cache"))
    assert read["request_id"].to_pylist() == ["req0", "req1", "req2"] and read["item_ids"][0].as_py() == ["i1", "i2"]
    assert keys(read_log(localize_data(Config.model_validate(
        {"data": {"path": uri, "cache_dir": str(tmp_path / "cache2")}})).data.path)) == [("r0", 0)]  # fmt: skip
