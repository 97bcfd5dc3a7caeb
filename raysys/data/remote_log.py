"""An event log kept in an object store: `serve.event_log` set to an `s3://` or `gs://` URI.

Writers and readers work on a local directory, the *stage*, exactly as on a local log (event_log.py):
an `/events` answer follows the fsync of the replica's write-ahead file there. The URI holds the
sealed segments: a writer uploads each segment once it is sealed (one PUT of a file never changed
again); one that fails to upload stays in the stage and goes at the next try (the writer's next seal,
every RETRY_S while uploads fail, its close, and the live store's sweep, which also uploads what dead
writers left). So the URI trails the acknowledgements by at most a segment's age (`seal_seconds`),
and until then the write-ahead tail lives only on the replica's disk: keep the stage
(`serve.event_log_stage`) on a persistent volume to survive the loss of a node.

Readers: the live store downloads the segments its stage lacks (all of them on a fresh disk, other
nodes' writers' otherwise) before it rebuilds and at every sweep; training reads the URI as a log
directory (`data.path: s3://bucket/log`, copied to the data cache like any object-store input).

    local, remote = log_location("s3://bucket/log")   # ~/.cache/raysys/event_log_stage/<hash>/log, the URI
    push_segments(local, remote)                      # names uploaded: sealed segments the URI lacks
    pull_segments(remote, local)                      # names downloaded: segments the stage lacks
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import pyarrow.compute as pc

from raysys import storage
from raysys.data.event_log import sealed_segments, segment_name
from raysys.errors import RaysysError

logger = logging.getLogger(__name__)

DEFAULT_STAGE_ROOT = "~/.cache/raysys/event_log_stage"
RETRY_S = 30.0  # while uploads fail, a writer's uploader tries again this often
CLOSE_TIMEOUT_S = 30.0  # a closing writer waits this long for its last upload


def log_location(setting: str, stage_root: str | None = None) -> tuple[Path, str | None]:
    """`serve.event_log` -> (the local directory the log is written and read in, the URI or None).
    A URI's stage is a stable place under `stage_root` (the same URI always maps to it)."""
    if storage.is_uri(setting):
        uri = setting.rstrip("/")
        return storage.local_mirror(uri, stage_root or DEFAULT_STAGE_ROOT).resolve(), uri
    return Path(setting).expanduser().resolve(), None


def push_segments(local: str | Path, uri: str, writer: str | None = None) -> list[str]:
    """Upload the sealed segments (of `writer`) in `local` that `uri` lacks or holds cut short; returns
    their names. Raises RaysysError when the store cannot be reached (nothing is lost: retry later)."""
    remote = storage.list_files(uri)
    pushed = []
    for path in sealed_segments(local, writer):
        if remote.get(path.name) != path.stat().st_size:
            storage.upload_file(path, storage.join(uri, path.name))
            pushed.append(path.name)
    return pushed


def pull_segments(uri: str, local: str | Path) -> list[str]:
    """Download the sealed segments of `uri` that `local` lacks (to a temporary name, then renamed, so
    a reader never sees half a file); returns their names."""
    local = Path(local)
    local.mkdir(parents=True, exist_ok=True)
    have = {path.name for path in local.iterdir()}
    pulled = []
    for name in sorted(storage.list_files(uri)):
        if segment_name(name) is not None and name not in have:
            tmp = local / f".{name}.pull"
            storage.download(storage.join(uri, name), tmp)
            os.replace(tmp, local / name)
            pulled.append(name)
    return pulled


def remote_resume(uri: str, writer: str) -> tuple[int, int]:
    """(next segment, next seq) of `writer` as the URI knows it: a writer whose stage lost its files
    (a new disk) continues after its uploaded segments instead of writing over them."""
    segments = sorted(seg for w, seg in filter(None, map(segment_name, storage.list_files(uri))) if w == writer)
    if not segments:
        return 0, 0
    seqs = storage.read_parquet(storage.join(uri, f"seg-{writer}-{segments[-1]:08d}.parquet"), ["seq"])["seq"]
    return segments[-1] + 1, int(pc.max(seqs).as_py()) + 1 if len(seqs) else 0


class SegmentUploader:
    """Uploads one writer's sealed segments from the stage in the background: at start (what an
    earlier incarnation left), after each seal (`kick`), every RETRY_S while uploads fail, and once
    more at `close`."""

    def __init__(self, local: Path, uri: str, writer: str) -> None:
        self.local, self.uri, self.writer = local, uri, writer
        self.uploaded = 0  # segments uploaded so far
        self.failing = False  # the last try failed (logged once per outage)
        self._wake = threading.Event()
        self._closing = False
        self._thread = threading.Thread(target=self._run, name=f"event-log-upload-{writer}", daemon=True)
        self._thread.start()
        self.kick()

    def kick(self) -> None:
        """Upload what is sealed and not uploaded yet, soon."""
        self._wake.set()

    def close(self, timeout_s: float = CLOSE_TIMEOUT_S) -> bool:
        """A last upload, waited for at most `timeout_s`; True when it succeeded."""
        self._closing = True
        self._wake.set()
        self._thread.join(timeout_s)
        return not self._thread.is_alive() and not self.failing

    def _run(self) -> None:
        while True:
            self._wake.wait(RETRY_S if self.failing else None)
            self._wake.clear()
            closing = self._closing
            try:
                self.uploaded += len(push_segments(self.local, self.uri, self.writer))
                if self.failing:
                    logger.warning("event log: uploads to %s work again", self.uri)
                self.failing = False
            except (RaysysError, OSError) as exc:
                if not self.failing:
                    logger.warning("event log: uploading to %s failed (kept in %s): %s", self.uri, self.local, exc)
                self.failing = True
            if closing:
                return
