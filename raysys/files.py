"""Files that readers never see half-written, and free local ports: small helpers every stage shares.

with atomic_path(path) as tmp: pq.write_table(table, tmp)   # renamed onto `path` when the block ends
write_json_atomic(path, payload); write_jsonl_atomic(path, records)
port = free_port()                                          # a TCP port free on 127.0.0.1 now
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary sibling of `path` to write; renamed onto `path` when the block ends without error
    (a rename within one folder is atomic), removed when it raises."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_json_atomic(path: str | Path, payload: Any) -> Path:
    """Write JSON (indented; unknown types as strings) through a temporary file and a rename."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return Path(path)


def write_jsonl_atomic(path: str | Path, records: Iterable[dict[str, Any]]) -> Path:
    """One JSON object per line, written through a temporary file and a rename."""
    with atomic_path(path) as tmp:
        tmp.write_text("".join(json.dumps(record) + "\n" for record in records))
    return Path(path)


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """The records of a JSON-lines file ([] when it does not exist yet)."""
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def free_ports(count: int) -> list[int]:
    """`count` distinct TCP ports that nothing listens on at 127.0.0.1 right now."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def free_port() -> int:
    """A TCP port that nothing listens on at 127.0.0.1 right now."""
    return free_ports(1)[0]


def free_port_block(size: int, low: int = 20_000, high: int = 30_000, tries: int = 200) -> int:
    """The first of `size` consecutive TCP ports in [low, high) that can all be bound on every address
    right now, the block chosen at random (so two callers rarely pick the same one)."""
    import random

    for _ in range(tries):
        first = random.randrange(low, high - size)
        if all(_bindable(port) for port in range(first, first + size)):
            return first
    raise OSError(f"no {size} consecutive free ports in [{low}, {high})")


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("", port))
        except OSError:
            return False
    return True
