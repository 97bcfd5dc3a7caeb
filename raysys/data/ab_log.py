"""The A/B log: what the endpoint showed (impressions) and what users did with it (feedback).

A second event log (event_log.py: the same writers, group commit and sealed Parquet segments) in the
`ab/` directory of the event log (an s3:// or gs:// log: its `ab/` prefix, staged like it). It is kept
apart from the interactions so that neither training nor the live store reads impressions.

    impression_record(request_id, "u1", "b", ["i3", "i9"])     # one /recommend with a user_id
    feedback_record(request_id, "u1", "i3", "click", "b")       # one POST /feedback
    read_ab_log("runs/serve/event_log", cache_dir)             # AB_SCHEMA table, each record once
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pyarrow as pa

AB_DIR = "ab"  # beside the event log's segments
AB_SCHEMA = pa.schema(
    [
        ("writer", pa.string()),
        ("seq", pa.int64()),
        ("kind", pa.string()),  # "impression" | "feedback"
        ("request_id", pa.string()),  # the /recommend answer's; feedback: as the client sent it (or null)
        ("user_id", pa.string()),
        ("variant", pa.string()),  # impression: the variant that answered; feedback: the user's at the time
        ("item_ids", pa.list_(pa.string())),  # impression: the items shown, best first
        ("item_id", pa.string()),  # feedback: the item acted on
        ("event", pa.string()),  # feedback: click | purchase | skip
        ("timestamp", pa.float64()),
    ]
)


def impression_record(
    request_id: str, user_id: str, variant: str, item_ids: list[str], timestamp: float | None = None
) -> dict[str, Any]:
    return {
        "kind": "impression",
        "request_id": request_id,
        "user_id": user_id,
        "variant": variant,
        "item_ids": list(item_ids),
        "timestamp": time.time() if timestamp is None else float(timestamp),
    }


def feedback_record(
    request_id: str | None, user_id: str, item_id: str, event: str, variant: str, timestamp: float | None = None
) -> dict[str, Any]:
    return {
        "kind": "feedback",
        "request_id": request_id,
        "user_id": user_id,
        "variant": variant,
        "item_id": item_id,
        "event": event,
        "timestamp": time.time() if timestamp is None else float(timestamp),
    }


def ab_location(root: str | Path, remote: str | None) -> tuple[Path, str | None]:
    """The A/B log's local directory (or stage) and URI, given the event log's."""
    return Path(root) / AB_DIR, (remote.rstrip("/") + "/" + AB_DIR if remote else None)


def read_ab_log(event_log: str, cache_dir: str | None = None) -> pa.Table:
    """Every impression and feedback record of the event log `event_log` (a directory or an s3:// / gs://
    URI, copied into `cache_dir` first), each once."""
    from raysys.data.event_log import read_log
    from raysys.data.updates import local_log

    root = local_log(event_log, cache_dir)
    return read_log(Path(root) / AB_DIR, AB_SCHEMA)
