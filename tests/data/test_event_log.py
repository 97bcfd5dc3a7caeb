"""The durable event log: appends durable on return (group commit), sealing into Parquet, recovery of
what a crashed writer left, and a writer SIGKILLed mid-write losing and duplicating nothing it acknowledged."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from raysys.data.event_log import (
    EventLogWriter,
    LogTailer,
    event_record,
    interactions,
    item_record,
    read_log,
    seal_orphans,
)
from raysys.errors import RaysysError

ROOT = Path(__file__).resolve().parents[2]


def files(root: Path, pattern: str) -> list[str]:
    return sorted(p.name for p in root.glob(pattern))


def test_appends_read_back_in_order_with_items_and_the_interactions_view(tmp_path: Path) -> None:
    with EventLogWriter(tmp_path, "r0") as log:
        assert log.append([event_record("u1", "i1", timestamp=2.0), event_record("u2", "i2", "skip", 1.0)]) == [0, 1]
        assert log.append([item_record("new", np.arange(4, dtype=np.float32), timestamp=3.0)]) == [2]
        table = read_log(tmp_path)  # the open segment's tail, before any seal
        assert table["seq"].to_pylist() == [0, 1, 2] and files(tmp_path, "seg-*") == []
    table = read_log(tmp_path)  # closed: sealed into one segment, no write-ahead file left
    assert files(tmp_path, "seg-*") == ["seg-r0-00000000.parquet"] and files(tmp_path, "wal-*") == []
    assert table["kind"].to_pylist() == ["event", "event", "item"]
    assert table["text_embedding"][2].as_py() == [0.0, 1.0, 2.0, 3.0]
    view = interactions(table)
    assert view.column_names == ["user_id", "item_id", "timestamp", "event"]
    assert view.to_pylist() == [
        {"user_id": "u2", "item_id": "i2", "timestamp": 1.0, "event": "skip"},
        {"user_id": "u1", "item_id": "i1", "timestamp": 2.0, "event": "click"},
    ]


def test_segments_seal_by_count_and_by_age(tmp_path: Path) -> None:
    log = EventLogWriter(tmp_path / "count", "r0", seal_records=3)
    for i in range(7):
        log.append([event_record("u", f"i{i}")])
    deadline = time.monotonic() + 5
    while len(files(tmp_path / "count", "seg-*")) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert files(tmp_path / "count", "seg-*") == ["seg-r0-00000000.parquet", "seg-r0-00000001.parquet"]
    assert read_log(tmp_path / "count")["item_id"].to_pylist() == [f"i{i}" for i in range(7)]
    log.close()
    assert len(files(tmp_path / "count", "seg-*")) == 3 and read_log(tmp_path / "count").num_rows == 7

    with EventLogWriter(tmp_path / "age", "r0", seal_seconds=0.2) as log:
        log.append([event_record("u", "i")])
        time.sleep(0.6)
        assert files(tmp_path / "age", "seg-*") == ["seg-r0-00000000.parquet"]


def test_concurrent_appends_share_fsyncs(tmp_path: Path) -> None:
    with EventLogWriter(tmp_path, "r0") as log:

        def client(c: int) -> None:
            for i in range(50):
                log.append([event_record(f"u{c}", f"i{i}")])

        threads = [threading.Thread(target=client, args=(c,)) for c in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert 0 < log.fsyncs < 400  # 400 durable appends, fewer syncs: they were grouped
    table = read_log(tmp_path)
    assert sorted(table["seq"].to_pylist()) == list(range(400))


def test_a_restarted_writer_seals_what_its_crash_left_and_numbers_on(tmp_path: Path) -> None:
    with EventLogWriter(tmp_path, "r0", seal_records=2) as log:
        log.append([event_record("u", "a"), event_record("u", "b")])  # sealed: segment 0
    # What a crash leaves: an open segment with a torn last line, and a segment sealed just before its
    # write-ahead file was removed (both names present).
    lines = [json.dumps({**event_record("u", x), "writer": "r0", "seq": 2 + i}) for i, x in enumerate("cd")]
    (tmp_path / "wal-r0-00000001.jsonl").write_text("\n".join(lines) + '\n{"kind": "ev')
    (tmp_path / "wal-r0-00000000.jsonl").write_text(json.dumps({**event_record("u", "a"), "writer": "r0", "seq": 0}))
    (tmp_path / ".seg-r0-00000002.parquet.tmp").write_bytes(b"half a file")
    with EventLogWriter(tmp_path, "r0") as log:
        assert files(tmp_path, "wal-*") == ["wal-r0-00000002.jsonl"] and not list(tmp_path.glob(".seg-*"))
        assert log.append([event_record("u", "e")]) == [4]
    assert read_log(tmp_path)["item_id"].to_pylist() == ["a", "b", "c", "d", "e"]


def test_writer_names_and_a_second_live_writer_are_refused(tmp_path: Path) -> None:
    with pytest.raises(RaysysError, match="writer name"):
        EventLogWriter(tmp_path, "a-b")
    with EventLogWriter(tmp_path, "r0"):
        with pytest.raises(RaysysError, match="another process"):
            EventLogWriter(tmp_path, "r0")
    log = EventLogWriter(tmp_path, "r0")  # the first one closed: free again
    log.close()
    with pytest.raises(RaysysError, match="closed"):
        log.append([event_record("u", "i")])


WRITER_SCRIPT = """
import sys
from raysys.data.event_log import EventLogWriter, event_record
log = EventLogWriter(sys.argv[1], "r0", seal_records=int(sys.argv[2]))
i = 0
while True:
    seqs = log.append([event_record("u%d" % (i % 7), "i%d" % i) for _ in range(1 + i % 3)])
    print(" ".join(map(str, seqs)), flush=True)
    i += 1
"""


@pytest.mark.parametrize("seal_records", [10_000, 25])
def test_a_writer_killed_mid_write_keeps_every_acknowledged_record_once(tmp_path: Path, seal_records: int) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER_SCRIPT, str(tmp_path), str(seal_records)],
        stdout=subprocess.PIPE,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    acked: list[int] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        acked.extend(int(s) for s in line.split())
        if len(acked) >= 300:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    acked.extend(int(s) for s in proc.stdout.read().split())  # acknowledgements already printed
    seen = read_log(tmp_path)["seq"].to_pylist()
    assert len(seen) == len(set(seen)) and set(acked) <= set(seen)
    with EventLogWriter(tmp_path, "r0", seal_records=seal_records):
        pass  # a restart seals what was left
    after = read_log(tmp_path)["seq"].to_pylist()
    assert files(tmp_path, "wal-*") == [] and after == sorted(set(seen))
    assert after == list(range(len(after)))  # nothing skipped: every written record is a whole line


def test_a_tailer_returns_each_record_once_across_tails_seals_and_pushes(tmp_path: Path) -> None:
    tailer = LogTailer(tmp_path)
    assert tailer.poll() == []
    log = EventLogWriter(tmp_path, "r0", seal_records=4)
    log.append([event_record("u", f"i{i}") for i in range(3)])
    assert [r["item_id"] for r in tailer.poll()] == ["i0", "i1", "i2"]  # from the open segment
    assert tailer.seen("r0", 3) and not tailer.seen("r0", 3)  # record 3 pushed to the reader directly
    log.append([event_record("u", "i3"), event_record("u", "i4")])  # 5 records >= 4: sealed
    log.close()
    assert [r["item_id"] for r in tailer.poll()] == ["i4"]  # 0..2 read, 3 pushed: only 4 is new
    assert tailer.poll() == []


def test_orphaned_segments_are_sealed_and_live_writers_left_alone(tmp_path: Path) -> None:
    live = EventLogWriter(tmp_path, "alive")
    live.append([event_record("u", "a")])
    (tmp_path / "wal-dead-00000000.jsonl").write_text(
        json.dumps({**event_record("u", "b"), "writer": "dead", "seq": 0}) + "\n"
    )
    assert seal_orphans(tmp_path) == ["dead"]
    assert files(tmp_path, "*.jsonl") == ["wal-alive-00000000.jsonl"]
    assert files(tmp_path, "seg-*") == ["seg-dead-00000000.parquet"]
    live.close()
    assert sorted(read_log(tmp_path)["item_id"].to_pylist()) == ["a", "b"]


def test_a_reader_racing_a_seal_reads_the_sealed_segment(tmp_path: Path, monkeypatch) -> None:
    """A live log: the writer seals its open segment between a reader's listing and its read (found by
    `raysys update` reading a served log): the reader takes the records from the sealed segment."""
    from raysys.data import event_log

    log = EventLogWriter(tmp_path, "w")
    log.append([event_record("u", "a"), event_record("u", "b")])
    wal = tmp_path / "wal-w-00000000.jsonl"
    listing = event_log._log_files

    def list_then_seal(root: Path, writer: str | None = None) -> list:
        listed = listing(root, writer)
        log.close()  # sealed: segment written, write-ahead file removed
        return listed

    monkeypatch.setattr(event_log, "_log_files", list_then_seal)
    assert read_log(tmp_path)["item_id"].to_pylist() == ["a", "b"]
    assert not wal.exists() and event_log.read_events_file(wal)["item_id"].to_pylist() == ["a", "b"]


def test_ray_data_reads_the_log_as_interactions_without_negative_events(ray_session, tmp_path) -> None:
    from raysys.config import DataConfig
    from raysys.data.event_log import read_events_file, readable_files
    from raysys.data.prepare import load_or_prepare

    log = tmp_path / "log"
    kinds = ["click", "purchase", "skip"]
    records = [event_record(f"u{n % 7}", f"i{n % 11}", kinds[n % 3], timestamp=1000.0 + n) for n in range(90)]
    # u0 clicks i0 twice within one second, through two replicas: a repeat, kept (not a duplicate row)
    twice = [event_record("u0", "i0", "click", timestamp=2000.25), event_record("u0", "i0", "click", timestamp=2000.75)]
    with EventLogWriter(log, "a", seal_records=20) as sealed:  # sealed segments
        sealed.append([*records[:40], twice[0]])
    open_writer = EventLogWriter(log, "b")  # an open segment: its write-ahead file is read
    open_writer.append([*records[40:], twice[1]])
    records += twice
    files = readable_files(log)
    assert any(f.name.startswith("wal-b-") for f in files) and all(
        f.name.startswith(("seg-a-", "wal-b-")) for f in files
    )
    assert sum(read_events_file(f).num_rows for f in files) == 92

    ds = load_or_prepare(DataConfig(path=str(log), cache_dir=str(tmp_path / "cache")), progress=False)
    expected: dict[str, list[str]] = {}
    for r in sorted(records, key=lambda r: r["timestamp"]):
        if r["event"] != "skip":
            expected.setdefault(r["user_id"], []).append(r["item_id"])
    sequences = ds.sequences().to_pylist()
    items = {i["item_index"]: i["item_id"] for i in ds.item_vocab().to_pylist()}
    assert {s["user_id"]: [items[i] for i in s["items"]] for s in sequences} == expected
    assert {e for s in sequences for e in s["events"]} == {"click", "purchase"}
    assert ds.manifest["num_dropped"]["duplicate"] == 0

    wal = next(f for f in files if f.name.startswith("wal-b-"))
    open_writer.close()  # seals the open segment: its write-ahead file is gone
    assert not wal.exists() and read_events_file(wal).num_rows == 51  # read from the sealed segment instead
