"""Run directories: where a stage writes its summary, resolved config and artifacts."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from raysys import __version__
from raysys.config import Config
from raysys.files import write_json_atomic


def utc_now() -> str:
    """ISO-8601 UTC timestamp with seconds, e.g. 2026-11-23T21:40:00Z."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def default_out_dir(stage: str) -> Path:
    """`runs/<stage>-<UTC time>` under the current directory."""
    return Path("runs") / f"{stage}-{datetime.now(timezone.utc).strftime('%Y%m%d-%H%M%S')}"


def start_run(out_dir: str | Path, cfg: Config) -> Path:
    """Create the run directory and save the resolved config in it (`config.yaml`)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg.save(out / "config.yaml")
    return out


def write_summary(out_dir: str | Path, stage: str, summary: dict[str, Any]) -> Path:
    """Write `summary.json`: the stage's products and figures, plus provenance."""
    payload = {"stage": stage, "raysys_version": __version__, "finished_at": utc_now(), **summary}
    return write_json_atomic(Path(out_dir) / "summary.json", payload)
