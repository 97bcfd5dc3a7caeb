"""Per-epoch history of a training run: `history.jsonl` (the report plots it) and TensorBoard events.

Rank 0 writes both into the run directory. `history.jsonl` is rewritten whole from the records
carried in the checkpoint, so an epoch redone after a resume appears once; TensorBoard drops the
events past the resumed step (`purge_step`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from raysys.files import read_jsonl, write_jsonl_atomic

HISTORY_FILE = "history.jsonl"
TENSORBOARD_DIR = "tensorboard"


def write_history(run_dir: Path, records: list[dict[str, Any]]) -> Path:
    """Write one JSON object per epoch to `run_dir/history.jsonl` (atomically)."""
    return write_jsonl_atomic(run_dir / HISTORY_FILE, records)


def read_history(run_dir: Path) -> list[dict[str, Any]]:
    """The records of `run_dir/history.jsonl` (empty when there is none)."""
    return read_jsonl(run_dir / HISTORY_FILE)


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
