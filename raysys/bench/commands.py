"""Run a raysys stage as a real command and time it, watching its per-epoch history as it grows.

    timed = run_stage("finetune", "jobs/configs/ml100k.yaml", ["finetune.seed=1"], out_dir,
                      target=("valid_ndcg@10", 0.0751))
    timed.seconds, timed.seconds_to_target, timed.summary["metrics"]["test"]["ndcg@10"]

The clock starts before the process does, so Ray's start-up, data loading, DeepSpeed's set-up and
every validation pass count: it is the wall time a user waits for `raysys <stage>`. The history file
is polled (0.25 s), so "seconds to target" is when the first epoch at or above the target was written.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raysys.errors import RaysysError
from raysys.train.history import read_history

POLL_S = 0.25


@dataclass
class TimedRun:
    """What one timed command produced."""

    out_dir: Path
    seconds: float  # the whole command
    seconds_to_target: float | None  # None: the target was never reached
    epoch_at_target: int | None
    summary: dict[str, Any]
    history: list[dict[str, Any]]


def run_stage(
    stage: str,
    config: str,
    overrides: list[str],
    out_dir: Path,
    *,
    target: tuple[str, float] | None = None,
    stop_at_target: bool = False,
    log: Path | None = None,
) -> TimedRun:
    """`python -m raysys.cli <stage> --config <config> <overrides> --out <out_dir>`, timed.

    stop_at_target: stop the command (its whole process group, Ray included) once the target is
    reached; the summary is then {} and `seconds` is the time to the target.
    Raises RaysysError (naming the log) when the command fails.
    """
    command = [sys.executable, "-m", "raysys.cli", stage, "--config", config, *overrides, "--out", str(out_dir)]
    log = log or out_dir.with_name(out_dir.name + ".log")
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    reached: tuple[float, int] | None = None
    with open(log, "w") as sink:
        process = subprocess.Popen(
            command, stdout=sink, stderr=subprocess.STDOUT, env=os.environ.copy(), start_new_session=True
        )
        while process.poll() is None:
            time.sleep(POLL_S)
            if target is not None and reached is None:
                reached = _first_at_target(out_dir, target, time.perf_counter() - start)
                if reached and stop_at_target:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
                    return TimedRun(
                        out_dir,
                        round(reached[0], 1),
                        round(reached[0], 1),
                        reached[1],
                        {},
                        read_history(out_dir),
                    )
    seconds = time.perf_counter() - start
    if process.returncode != 0:
        raise RaysysError(f"`{' '.join(command)}` exited with {process.returncode}", where=str(log))
    history = read_history(out_dir)
    if target is not None and reached is None:  # reached in the last epoch, between two polls
        reached = _first_at_target(out_dir, target, seconds)
    summary = json.loads((out_dir / "summary.json").read_text())
    return TimedRun(
        out_dir=out_dir,
        seconds=round(seconds, 1),
        seconds_to_target=round(reached[0], 1) if reached else None,
        epoch_at_target=reached[1] if reached else None,
        summary=summary,
        history=history,
    )


def _first_at_target(run_dir: Path, target: tuple[str, float], now: float) -> tuple[float, int] | None:
    key, value = target
    for record in read_history(run_dir):
        if record.get(key, float("-inf")) >= value:
            return now, int(record["epoch"])
    return None
