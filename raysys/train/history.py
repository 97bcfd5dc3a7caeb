"""Per-epoch history of a training run: `history.jsonl` (the report plots it) and TensorBoard events.

Rank 0 writes both into the run directory. `history.jsonl` is rewritten whole from the records
carried in the checkpoint, so an epoch redone after a resume appears once; TensorBoard drops the
events past the resumed step (`purge_step`).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

HISTORY_FILE = "history.jsonl"
TENSORBOARD_DIR = "tensorboard"


def write_history(run_dir: Path, records: list[dict[str, Any]]) -> Path:
    """Write one JSON object per epoch to `run_dir/history.jsonl` (atomically)."""
    path = run_dir / HISTORY_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")
    os.replace(tmp, path)
    return path


def read_history(run_dir: Path) -> list[dict[str, Any]]:
    """The records of `run_dir/history.jsonl` (empty when there is none)."""
    path = run_dir / HISTORY_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class TensorBoardLog:
    """Scalars of each epoch record under `run_dir/tensorboard`, keyed by the optimizer step."""

    def __init__(self, run_dir: Path, purge_step: int | None = None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(run_dir / TENSORBOARD_DIR), purge_step=purge_step)

    def log(self, record: dict[str, Any], step: int) -> None:
        """One scalar per numeric field: losses under train/, valid metrics under valid/."""
        for name, value in record.items():
            if name in ("epoch", "step") or not isinstance(value, (int, float)):
                continue
            tag = f"valid/{name[len('valid_') :]}" if name.startswith("valid_") else f"train/{name}"
            self.writer.add_scalar(tag, value, global_step=step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
