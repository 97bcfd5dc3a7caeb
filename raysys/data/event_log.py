"""The durable event log: what the endpoint acknowledges is on disk before the acknowledgement.

Each writer (one per serving replica; the name is in every file it writes) appends records to its
open segment, a write-ahead file of JSON lines, and `append` returns only once they are fsynced. One
flusher thread per writer does the fsyncs (group commit): appends that arrive while it syncs wait for
the next sync together, so a busy writer pays one fsync per group, not per record. Every
`seal_records` records or `seal_seconds` seconds the flusher seals the segment into Parquet (written
to a temporary name, fsynced, renamed) and only then removes the write-ahead file. Layout of the log
directory:

    wal-<writer>-<segment>.jsonl      a writer's open segment (one record per line)
    seg-<writer>-<segment>.parquet    a sealed segment (RECORD_SCHEMA, sorted by user in 1,024-row groups), never
                                      changed again
    writer-<writer>.lock              held (flock) by the live writer of that name

A writer that starts finds what its previous incarnation left: a write-ahead file whose segment was
sealed is removed, any other is sealed (a torn last line, a write the crash cut short, was never
acknowledged and is dropped), and numbering continues after the last record. Records are keyed by
(writer, seq): `read_log` returns every sealed record and every complete line of the open segments,
each once.

    with EventLogWriter(root, "replica-a") as log:
        log.append([event_record("u1", "i42"), item_record("new-1", embedding)])   # durable on return
    table = read_log(root)               # RECORD_SCHEMA, in (writer, seq) order
    interactions(table)                  # user_id, item_id, timestamp, event: what training reads
    readable_files(root), read_events_file(path)   # the same, one file at a time (Ray Data's read tasks)
    tailer = LogTailer(root, index := UserIndex()); tailer.poll(); index.events("u1")   # one user, no scan
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
import threading
import time
from array import array
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from raysys.errors import RaysysError

logger = logging.getLogger(__name__)

RECORD_SCHEMA = pa.schema(
    [
        ("writer", pa.string()),
        ("seq", pa.int64()),  # the record's number within its writer: (writer, seq) is unique
        ("kind", pa.string()),  # "event" | "item"
        ("user_id", pa.string()),  # events only
        ("item_id", pa.string()),
        ("event", pa.string()),  # events only: "click", "skip", ...
        ("timestamp", pa.float64()),  # seconds since the epoch
        ("text_embedding", pa.list_(pa.float32())),  # items only
    ]
)
INTERACTION_COLUMNS = ("user_id", "item_id", "timestamp", "event")
SEGMENT_ROW_GROUP = 1024  # rows per row group of a sealed segment
TAIL_CHUNK_BYTES = 1 << 20  # what a tailer parses of one write-ahead file per poll (bounds its memory)
CHUNK_RECORDS = 5_000  # a poll returns about this many records at most (bounds a reader's memory)
WRITER_NAME = re.compile(r"^[A-Za-z0-9_.]+$")  # no "-": file names split on it
FILE_NAME = re.compile(r"^(wal|seg)-([A-Za-z0-9_.]+)-(\d{8})\.(jsonl|parquet)$")


def event_record(user_id: str, item_id: str, event: str = "click", timestamp: float | None = None) -> dict[str, Any]:
    """One interaction as a log record (timestamp: now when None)."""
    return {"kind": "event", "user_id": user_id, "item_id": item_id, "event": event, "timestamp": _now(timestamp)}


def item_record(item_id: str, text_embedding: np.ndarray, timestamp: float | None = None) -> dict[str, Any]:
    """One item added to the catalog, with its [text_dim] text embedding, as a log record."""
    vector = [float(x) for x in np.asarray(text_embedding, dtype=np.float32)]
    return {"kind": "item", "item_id": item_id, "text_embedding": vector, "timestamp": _now(timestamp)}


def _now(timestamp: float | None) -> float:
    return time.time() if timestamp is None else float(timestamp)


class EventLogWriter:
    """One writer's appends to the log directory `root` (see the module docstring); thread-safe."""

    def __init__(
        self,
        root: str | Path,
        writer: str,
        *,
        seal_records: int = 10_000,
        seal_seconds: float = 60.0,
        remote: str | None = None,
        schema: pa.Schema = RECORD_SCHEMA,
    ) -> None:
        """remote: an s3:// or gs:// URI each sealed segment is uploaded to (remote_log.py); `root` is then
        the local stage, where appends are made durable before they return. schema: the sealed segments'
        (RECORD_SCHEMA; the A/B log's is ab_log.AB_SCHEMA); it must hold writer, seq and user_id."""
        if not WRITER_NAME.match(writer):
            raise RaysysError(f"event log writer name {writer!r} may hold only letters, digits, '_' and '.'")
        if seal_records < 1 or seal_seconds <= 0:
            raise RaysysError("seal_records must be >= 1 and seal_seconds > 0", where="event log")
        self.root, self.writer, self.remote = Path(root), writer, remote
        self.seal_records, self.seal_seconds, self.schema = seal_records, seal_seconds, schema
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock_fd = _take_writer_lock(self.root / f"writer-{writer}.lock")
        self.segment, self.next_seq = recover(self.root, writer, schema)
        self.uploader = None
        if remote is not None:  # lazily: remote_log builds on this module
            from raysys.data.remote_log import SegmentUploader, remote_resume

            try:  # a stage that lost this writer's files continues after the uploaded ones
                self.segment, self.next_seq = max((self.segment, self.next_seq), remote_resume(remote, writer))
            except RaysysError as exc:  # the store is down: appends stay local until it is back
                logger.warning("event log: %s not reachable at start, numbering from the stage: %s", remote, exc)
            self.uploader = SegmentUploader(self.root, remote, writer)
        self.fsyncs = 0  # fsyncs of write-ahead files so far (the group commit's count)
        self._cond = threading.Condition()
        self._records: list[dict[str, Any]] = []  # the open segment's records, kept for sealing
        self._written = self._durable = 0  # records written to the open file / known fsynced, this process
        self._opened_at = time.monotonic()
        self._closed = False
        self._error: BaseException | None = None
        self._fd = self._open_segment()
        self._flusher = threading.Thread(target=self._flush_loop, name=f"event-log-{writer}", daemon=True)
        self._flusher.start()

    # ------------------------------------------------------------------------------------- writing

    def append(self, records: Sequence[dict[str, Any]]) -> list[int]:
        """Write `records` (see `event_record`, `item_record`) and return their seqs once they are
        durable (fsynced). Raises RaysysError if the log cannot be written; nothing was acknowledged then."""
        with self._cond:
            self._check_open()
            stamped = [{**r, "writer": self.writer, "seq": self.next_seq + i} for i, r in enumerate(records)]
            data = b"".join(json.dumps(r, separators=(",", ":")).encode() + b"\n" for r in stamped)
            _write_all(self._fd, data)
            self.next_seq += len(stamped)
            self._records.extend(stamped)
            self._written += len(stamped)
            mark = self._written
            self._cond.notify_all()
            self._cond.wait_for(lambda: self._durable >= mark or self._error is not None)
            if self._durable < mark:
                raise RaysysError(f"the event log could not be written ({self._error})", where=str(self.root))
        return [r["seq"] for r in stamped]

    def close(self) -> None:
        """Seal the open segment (if it holds records) and stop; the writer cannot append after."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()
        self._flusher.join()
        with self._cond:
            if self._error is None and self._records:
                self._seal()
            os.close(self._fd)
            if not self._records:
                self._wal(self.segment).unlink(missing_ok=True)  # an empty open segment leaves no file
        if self.uploader is not None:
            self.uploader.close()  # a last upload; what fails stays in the stage for the next try
        os.close(self._lock_fd)

    def __enter__(self) -> EventLogWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise RaysysError("the event log writer is closed", where=str(self.root))
        if self._error is not None:
            raise RaysysError(f"the event log could not be written ({self._error})", where=str(self.root))

    # --------------------------------------------------------------------------------- the flusher

    def _flush_loop(self) -> None:
        """Fsync what appends wrote (one fsync per group), seal a full or old segment; on an error
        wake every waiter with it (their appends raise)."""
        try:
            while True:
                with self._cond:
                    self._cond.wait_for(self._work_due, timeout=self._seconds_to_seal())
                    if self._closed and self._durable == self._written:
                        return
                    target, fd = self._written, self._fd
                if target > self._durable:
                    os.fsync(fd)  # outside the lock: appends keep writing the next group meanwhile
                    with self._cond:
                        self.fsyncs += 1
                        self._durable = target
                        self._cond.notify_all()
                with self._cond:
                    if self._records and self._durable == self._written and self._seal_due():
                        self._seal()
        except BaseException as exc:  # noqa: BLE001 - handed to every waiting append
            with self._cond:
                self._error = exc
                self._cond.notify_all()

    def _work_due(self) -> bool:
        return self._closed or self._written > self._durable or (bool(self._records) and self._seal_due())

    def _seal_due(self) -> bool:
        return len(self._records) >= self.seal_records or time.monotonic() - self._opened_at >= self.seal_seconds

    def _seconds_to_seal(self) -> float | None:
        return max(0.01, self.seal_seconds - (time.monotonic() - self._opened_at)) if self._records else None

    # ---------------------------------------------------------------------------------- segments

    def _wal(self, segment: int) -> Path:
        return self.root / f"wal-{self.writer}-{segment:08d}.jsonl"

    def _open_segment(self) -> int:
        fd = os.open(self._wal(self.segment), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        _fsync_dir(self.root)
        self._opened_at = time.monotonic()
        return fd

    def _seal(self) -> None:
        """Write the open segment as Parquet, remove its write-ahead file, open the next (lock held)."""
        seal_segment(self.root, self.writer, self.segment, self._records, self.schema)
        os.close(self._fd)
        self._wal(self.segment).unlink()
        self._records = []
        self.segment += 1
        self._fd = self._open_segment()
        if self.uploader is not None:
            self.uploader.kick()


# ------------------------------------------------------------------------------------- reading on


class AppliedKeys:
    """Which (writer, seq) a reader has taken in: per writer, everything up to a watermark plus the
    seqs above it (few: a writer's records arrive nearly in order)."""

    def __init__(self) -> None:
        self._upto: dict[str, int] = {}  # writer -> every seq < this is in
        self._above: dict[str, set[int]] = {}

    def add(self, writer: str, seq: int) -> bool:
        """Mark (writer, seq) as taken in; False if it already was."""
        upto, above = self._upto.get(writer, 0), self._above.setdefault(writer, set())
        if seq < upto or seq in above:
            return False
        above.add(seq)
        while upto in above:
            above.remove(upto)
            upto += 1
        self._upto[writer] = upto
        return True


class LogTailer:
    """Reads a log directory on: each `poll` returns the records not returned before (and not marked
    with `seen`), sealed segments read once each, open segments from where the last poll stopped."""

    def __init__(self, root: str | Path, index: UserIndex | None = None) -> None:
        self.root = Path(root)
        self.index = index  # fed every record read, also records already seen
        self.keys = AppliedKeys()
        self._sealed: set[str] = set()  # segment files read
        self._offsets: dict[str, int] = {}  # write-ahead file -> bytes read (complete lines)
        self._lock = threading.Lock()
        self.behind = False  # the last poll stopped at TAIL_CHUNK_BYTES in some file: poll again

    def seen(self, writer: str, seq: int) -> bool:
        """Mark a record taken in some other way (pushed by its writer); False if already seen."""
        return self.keys.add(writer, seq)

    def poll(self) -> list[dict[str, Any]]:
        """The new records, in (writer, seq) order within each file, files by segment (thread-safe)."""
        with self._lock:
            return self._poll()

    def _poll(self) -> list[dict[str, Any]]:
        self.behind = False
        if not self.root.is_dir():
            return []
        out = []
        for kind, _, path in _log_files(self.root):
            if len(out) >= CHUNK_RECORDS:  # enough for one poll: the rest next time
                self.behind = True
                break
            if kind == "seg" and path.name not in self._sealed:
                self._sealed.add(path.name)
                out += self._read_sealed(path)
            elif kind == "wal":
                out += self._read_tail(path)
        self._offsets = {name: at for name, at in self._offsets.items() if (self.root / name).exists()}
        return out

    def _read_sealed(self, path: Path) -> list[dict[str, Any]]:
        """Index a sealed segment and return its records not seen yet (reading the rest only if any)."""
        keys = pq.read_table(path, columns=["writer", "seq", "user_id"])
        if self.index is not None:
            self.index.add_sealed(path, keys["user_id"])
        writers, seqs = keys["writer"].to_pylist(), keys["seq"].to_pylist()
        new = [self.keys.add(w, s) for w, s in zip(writers, seqs, strict=True)]
        if not any(new):
            return []
        return pq.read_table(path, schema=RECORD_SCHEMA).filter(pa.array(new)).to_pylist()

    def _read_tail(self, path: Path) -> list[dict[str, Any]]:
        """The complete lines after the last read (at most TAIL_CHUNK_BYTES a poll; `behind` says more
        is waiting), indexed by byte offset, returned when not seen yet."""
        start = self._offsets.get(path.name, 0)
        try:
            with open(path, "rb") as f:
                f.seek(start)
                data = f.read(TAIL_CHUNK_BYTES)
        except FileNotFoundError:  # sealed meanwhile: its segment file is read next poll
            return []
        end = data.rfind(b"\n") + 1
        self.behind |= len(data) == TAIL_CHUNK_BYTES
        records, offset = [], start
        for line in data[:end].split(b"\n")[:-1]:
            record = json.loads(line)
            if self.index is not None and record.get("kind") == "event":
                self.index.add_open(path, record["user_id"], offset, len(line))
            if self.keys.add(record["writer"], record["seq"]):
                records.append(record)
            offset += len(line) + 1
        self._offsets[path.name] = start + end
        return records


class UserIndex:
    """Where each user's event records are, so one user's records are read without a scan.

    Per sealed segment (sorted by user, SEGMENT_ROW_GROUP rows a group): the sorted 64-bit hashes of
    its users and the row group of each; a lookup is a binary search per segment and the read is the
    groups found. Per open segment (at most a writer's `seal_records`): each user's lines, as byte offset
    and length in its write-ahead file. Fed by a `LogTailer`; memory: 12 bytes per (user, row group) of
    the sealed log, 16 per record of the open segments.
    """

    def __init__(self) -> None:
        self._sealed: dict[Path, tuple[np.ndarray, np.ndarray]] = {}  # segment -> (hashes [n] u64, groups [n] i32)
        self._open: dict[Path, dict[str, array]] = {}  # write-ahead file -> user -> [offset, length, ...]

    def add_sealed(self, path: Path, users: pa.ChunkedArray) -> None:
        """Index a sealed segment from its user_id column (in file order)."""
        valid = pc.is_valid(users).to_numpy(zero_copy_only=False)
        hashes = user_hashes(users.filter(pa.array(valid)))
        meta = pq.ParquetFile(path).metadata
        ends = np.cumsum([meta.row_group(g).num_rows for g in range(meta.num_row_groups)])
        groups = np.searchsorted(ends, np.flatnonzero(valid), side="right").astype(np.int32)
        pairs = np.unique(np.stack([hashes, groups.astype(np.uint64)]), axis=1)  # sorted by hash, then group
        self._sealed[path] = (pairs[0], pairs[1].astype(np.int32))
        self._open.pop(_wal_of(path), None)

    def add_open(self, path: Path, user_id: str, offset: int, length: int) -> None:
        """Note an event line of an open segment's write-ahead file: its user, byte offset and length."""
        self._open.setdefault(path, {}).setdefault(user_id, array("q")).extend((offset, length))

    def events(self, user_id: str) -> list[dict[str, Any]]:
        """Every event record of `user_id` in the indexed log, by (timestamp, writer, seq)."""
        out: list[dict[str, Any]] = []
        key = user_hashes(pa.array([user_id]))[0]
        for path, (hashes, groups) in list(self._sealed.items()):
            lo, hi = np.searchsorted(hashes, key, "left"), np.searchsorted(hashes, key, "right")
            if lo == hi:
                continue
            try:
                table = pq.ParquetFile(path).read_row_groups(sorted(set(groups[lo:hi].tolist())), columns=EVENT_COLUMNS)
            except FileNotFoundError:  # the directory was cleaned up under us: nothing to read there
                continue
            out += table.filter(pc.equal(table["user_id"], user_id)).to_pylist()
        for wal, users in list(self._open.items()):
            if user_id in users:
                out += _read_lines(wal, users[user_id], user_id)
        return sorted(out, key=lambda r: (r["timestamp"], r["writer"], r["seq"]))

    def stats(self) -> dict[str, int]:
        return {
            "sealed_segments": len(self._sealed),
            "index_bytes": sum(h.nbytes + g.nbytes for h, g in self._sealed.values()),
            "open_records": sum(len(lines) // 2 for users in self._open.values() for lines in users.values()),
        }


def _wal_of(segment: Path) -> Path:
    return segment.with_name("wal-" + segment.name.removeprefix("seg-")).with_suffix(".jsonl")


def _segment_of(wal: Path) -> Path:
    return wal.with_name("seg-" + wal.name.removeprefix("wal-")).with_suffix(".parquet")


def _read_lines(wal: Path, spans: array, user_id: str) -> list[dict[str, Any]]:
    """A user's records from a write-ahead file at (offset, length) spans; from its sealed segment when
    it was sealed meanwhile."""
    try:
        with open(wal, "rb") as f:
            lines = []
            for i in range(0, len(spans), 2):
                f.seek(spans[i])
                lines.append(json.loads(f.read(spans[i + 1])))
            return lines
    except FileNotFoundError:
        table = pq.read_table(_segment_of(wal), columns=EVENT_COLUMNS, filters=[("user_id", "=", user_id)])
        return table.filter(pc.equal(table["kind"], "event")).to_pylist()


EVENT_COLUMNS = ["writer", "seq", "kind", "user_id", "item_id", "event", "timestamp"]


def user_hashes(users: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """[n] uint64 hashes of user ids (stable across processes: not Python's salted hash)."""
    if isinstance(users, pa.ChunkedArray):
        users = users.combine_chunks()
    digest = [hashlib.blake2b(u.encode(), digest_size=8).digest() for u in users.to_pylist()]
    return np.frombuffer(b"".join(digest), dtype="<u8").copy() if digest else np.zeros(0, np.uint64)


def seal_orphans(root: str | Path, schema: pa.Schema = RECORD_SCHEMA) -> list[str]:
    """Seal the open segments of writers that are gone (their lock is free: the process died or closed
    without sealing); returns their names. A live writer's files are left alone."""
    root = Path(root)
    if not root.is_dir():
        return []
    sealed = []
    for writer in sorted({_writer_of(path) for kind, _, path in _log_files(root) if kind == "wal"}):
        try:
            fd = _take_writer_lock(root / f"writer-{writer}.lock")
        except RaysysError:
            continue  # alive
        try:
            recover(root, writer, schema)
            sealed.append(writer)
        finally:
            os.close(fd)
    return sealed


# ------------------------------------------------------------------------------ segments on disk


def seal_segment(
    root: Path, writer: str, segment: int, records: list[dict[str, Any]], schema: pa.Schema = RECORD_SCHEMA
) -> Path:
    """Write `records` as the sealed segment file (temporary name, fsync, rename, fsync of the directory)."""
    path = root / f"seg-{writer}-{segment:08d}.parquet"
    tmp = root / f".{path.name}.tmp"
    # By user (items, without one, last), in small row groups: a user's records are one or two groups (UserIndex)
    table = records_table(records, schema).sort_by([("user_id", "ascending"), ("seq", "ascending")])
    pq.write_table(table, tmp, row_group_size=SEGMENT_ROW_GROUP)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(root)
    return path


def records_table(records: Sequence[dict[str, Any]], schema: pa.Schema = RECORD_SCHEMA) -> pa.Table:
    """Records (dicts) -> a table of `schema` (RECORD_SCHEMA)."""
    return pa.Table.from_pylist([{name: r.get(name) for name in schema.names} for r in records], schema)


def recover(root: Path, writer: str, schema: pa.Schema = RECORD_SCHEMA) -> tuple[int, int]:
    """Seal what a previous incarnation of `writer` left open; returns (next segment, next seq)."""
    for tmp in root.glob(f".seg-{writer}-*.parquet.tmp"):  # a seal the crash cut short: its WAL is still there
        tmp.unlink()
    files = _log_files(root, writer)
    sealed = {seg for kind, seg, _ in files if kind == "seg"}
    for kind, segment, path in files:
        if kind != "wal":
            continue
        if segment not in sealed:
            records = read_wal(path)
            if records:
                seal_segment(root, writer, segment, records, schema)
                sealed.add(segment)
        path.unlink()
    _fsync_dir(root)
    if not sealed:
        return 0, 0
    last = max(sealed)
    seqs = pq.read_table(root / f"seg-{writer}-{last:08d}.parquet", columns=["seq"])["seq"]
    return last + 1, int(pc.max(seqs).as_py()) + 1 if len(seqs) else 0


def read_wal(path: Path) -> list[dict[str, Any]]:
    """The complete records of a write-ahead file; a torn last line (cut short by a crash, so never
    acknowledged) is left out."""
    lines = path.read_bytes().split(b"\n")
    records = []
    for number, line in enumerate(lines[:-1]):  # the part after the last newline is torn or empty
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            raise RaysysError(f"line {number + 1} of the write-ahead file is corrupt", where=str(path)) from None
    return records


def read_log(root: str | Path, schema: pa.Schema = RECORD_SCHEMA) -> pa.Table:
    """Every record in the log directory: sealed segments plus the complete lines of open ones, each
    (writer, seq) once, ordered by writer then seq. An empty table when there is no log yet."""
    root = Path(root)
    if not root.is_dir():
        return schema.empty_table()
    files = _log_files(root)
    sealed = {(_writer_of(path), segment) for kind, segment, path in files if kind == "seg"}
    tables = []
    for kind, segment, path in files:
        if kind == "seg":
            tables.append(pq.read_table(path, schema=schema))
        elif (_writer_of(path), segment) not in sealed:
            tables.append(_read_open(path, schema))
    if not tables:
        return schema.empty_table()
    table = pa.concat_tables(tables).sort_by([("writer", "ascending"), ("seq", "ascending")])
    return _drop_repeats(table)


def readable_files(root: str | Path) -> list[Path]:
    """One file per (writer, segment), the sealed Parquet where it exists, else the write-ahead file:
    read together (`read_events_file` each), they hold every record of the log once."""
    files = _log_files(Path(root))
    sealed = {(_writer_of(path), segment) for kind, segment, path in files if kind == "seg"}
    return [path for kind, segment, path in files if kind == "seg" or (_writer_of(path), segment) not in sealed]


def read_events_file(path: str | Path) -> pa.Table:
    """The interactions (user_id, item_id, timestamp, event) of one log file from `readable_files`. A
    write-ahead file sealed since it was listed is read from its sealed segment instead."""
    path = Path(path)
    table = pq.read_table(path, schema=RECORD_SCHEMA) if path.suffix == ".parquet" else _read_open(path, RECORD_SCHEMA)
    return interactions(table)


def _read_open(wal: Path, schema: pa.Schema) -> pa.Table:
    """An open segment's complete records; its sealed segment's when the writer sealed it since it was
    listed (a live log: the segment file exists before the write-ahead file is removed)."""
    try:
        return records_table(read_wal(wal), schema)
    except FileNotFoundError:
        return pq.read_table(_segment_of(wal), schema=schema)


def interactions(table: pa.Table) -> pa.Table:
    """The event records of a log table as interactions (user_id, item_id, timestamp, event), in time order."""
    events = table.filter(pc.equal(table["kind"], "event")).select(list(INTERACTION_COLUMNS))
    return events.sort_by([("timestamp", "ascending")])


def _drop_repeats(table: pa.Table) -> pa.Table:
    """Keep the first row of each (writer, seq) in a table sorted by them."""
    if table.num_rows < 2:
        return table
    writer, seq = table["writer"].to_numpy(zero_copy_only=False), table["seq"].to_numpy()
    first = np.ones(table.num_rows, dtype=bool)
    first[1:] = (writer[1:] != writer[:-1]) | (seq[1:] != seq[:-1])
    return table if first.all() else table.filter(pa.array(first))


def sealed_segments(root: str | Path, writer: str | None = None) -> list[Path]:
    """The sealed segment files in the log directory `root` (of one writer), by segment."""
    root = Path(root)
    return [path for kind, _, path in _log_files(root, writer) if kind == "seg"] if root.is_dir() else []


def segment_name(name: str) -> tuple[str, int] | None:
    """(writer, segment) of a sealed segment's file name; None for any other name."""
    match = FILE_NAME.match(name)
    return (match.group(2), int(match.group(3))) if match and match.group(1) == "seg" else None


def _log_files(root: Path, writer: str | None = None) -> list[tuple[str, int, Path]]:
    """(kind "wal" | "seg", segment, path) of the log's files (of one writer), by segment."""
    out = []
    for path in root.iterdir():
        match = FILE_NAME.match(path.name)
        if match and (writer is None or match.group(2) == writer):
            out.append((match.group(1), int(match.group(3)), path))
    return sorted(out, key=lambda f: (f[1], f[0], f[2].name))


def _writer_of(path: Path) -> str:
    return FILE_NAME.match(path.name).group(2)  # type: ignore[union-attr]


def _take_writer_lock(path: Path) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise RaysysError("another process is writing the event log under this writer name", where=str(path)) from None
    return fd


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
