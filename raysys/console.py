"""What raysys says on the terminal: one line when a stage starts and ends, one line per epoch, a
results table at the end; Ray's own output goes to the run directory's log instead.

    with quiet(run_dir / LOG_FILE, verbose=args.verbose):   # fds 1 and 2 -> the log; `console` keeps the terminal
        console.say(stage_line("▶", "teacher", "", ""))
        with follow_history(run_dir, "teacher", epochs=12):   # epoch lines from history.jsonl as rank 0 writes it
            fit(...)
        console.say(stage_line("✓", "teacher", duration(71.2), "best epoch 11, valid ndcg@10 0.547"))

Redirecting the file descriptors (not only `sys.stdout`) is what silences Ray: its driver-side logs,
the worker output it streams to the driver, Ray Data's progress rows, Tune's tables and the
warnings of every library all write to fds 1 and 2, and the processes the driver starts inherit
them. raysys's own warnings (the `raysys` logger) still reach the terminal. On a terminal a training
stage also shows a progress bar of its epochs (rich), with the epoch lines printed above it; elsewhere
(a log, `ray job logs`) only the lines print.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

LOG_FILE = "raysys.log"  # in the run directory: everything Ray and the libraries printed
HISTORY_FILE = "history.jsonl"  # (raysys.train.history.HISTORY_FILE; not imported: keeps this module light)


class Console:
    """The terminal as raysys uses it: `sys.stdout` / `sys.stderr` as they are when it writes, or the
    saved terminal while `quiet` sends fds 1 and 2 to the log."""

    def __init__(self) -> None:
        self.terminal: tuple[TextIO, TextIO] | None = None
        self.live: Any = None  # the rich Progress being drawn (lines then print above it)

    @property
    def out(self) -> TextIO:
        return self.terminal[0] if self.terminal else sys.stdout

    @property
    def err(self) -> TextIO:
        return self.terminal[1] if self.terminal else sys.stderr

    @property
    def interactive(self) -> bool:
        return bool(getattr(self.out, "isatty", lambda: False)())

    def say(self, text: str = "") -> None:
        if self.live is not None:
            self.live.console.print(text, markup=False, highlight=False, soft_wrap=True)
            return
        print(text, file=self.out, flush=True)

    @contextmanager
    def progress(self, label: str, total: int) -> Iterator[Callable[[int], None]]:
        """A progress bar (spinner, bar, done/total, elapsed) on a terminal, none elsewhere; yields
        `update(done)`. Lines said meanwhile print above it; it disappears when the block ends."""
        if not self.interactive:
            yield lambda done: None
            return
        from rich.console import Console as Rich
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        columns = (SpinnerColumn(), TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        bar = Progress(*columns, console=Rich(file=self.out), transient=True)
        task = bar.add_task(label, total=total)
        with bar:
            self.live = bar
            try:
                yield lambda done: bar.update(task, completed=done)
            finally:
                self.live = None

    def warn(self, text: str) -> None:
        print(f"warning: {text}", file=self.err, flush=True)

    def error(self, text: str) -> None:
        print(text, file=self.err, flush=True)

    def epoch(self, stage: str, record: dict[str, Any], epochs: int, started: float) -> None:
        """One line per epoch: loss, the selection metric, seconds, the time left at this pace."""
        epoch = int(record["epoch"])
        metric = next((k for k in ("valid_ndcg@10", "valid_auc") if k in record), None)
        shown = f"{metric[len('valid_') :]} {record[metric]:.4f}" if metric else ""
        elapsed = time.perf_counter() - started
        left = elapsed / max(epoch, 1) * (epochs - epoch)
        self.say(
            f"  {stage:<10} epoch {epoch:>3}/{epochs:<3} loss {record.get('loss', float('nan')):.4f}  "
            f"valid {shown}  {record.get('seconds', 0):.1f} s  ETA {duration(left)}"
        )

    def table(self, title: str, header: list[str], rows: list[list[str]]) -> None:
        """A plain aligned table (rich draws it on a terminal)."""
        if self.interactive:
            from rich.console import Console as Rich
            from rich.table import Table

            table = Table(title=title, title_justify="left")
            for i, name in enumerate(header):
                table.add_column(name, justify="left" if i == 0 else "right")
            for row in rows:
                table.add_row(*row)
            Rich(file=self.out).print(table)
            return
        widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
        self.say(title)
        for row in [header, *rows]:
            cells = [
                str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
            ]
            self.say("  " + "  ".join(cells))


console = Console()


class _ToConsole(logging.Handler):
    """raysys's own warnings and errors, on the terminal."""

    def emit(self, record: logging.LogRecord) -> None:
        console.warn(record.getMessage())


@contextmanager
def quiet(log_path: Path, *, verbose: bool = False) -> Iterator[None]:
    """Inside: file descriptors 1 and 2 (and so everything Ray, its processes and the libraries print)
    write to `log_path`; `console` writes to the terminal they were. `verbose`: change nothing."""
    if verbose:
        yield
        return
    log_path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    previous = console.terminal
    console.terminal = tuple(os.fdopen(os.dup(fd), "w", buffering=1, encoding="utf-8") for fd in saved)
    handler = _ToConsole(logging.WARNING)
    logging.getLogger("raysys").addHandler(handler)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        logging.getLogger("raysys").removeHandler(handler)
        for stream in console.terminal:
            stream.close()
        console.terminal = previous
        for fd in (*saved, log_fd):
            os.close(fd)


@contextmanager
def follow_history(run_dir: Path, stage: str, epochs: int, interval: float = 0.5) -> Iterator[None]:
    """Print an epoch line for each record that appears in `run_dir/history.jsonl` while the block
    runs (the Ray Train workers' rank 0 writes it; a resumed run's earlier epochs print once)."""
    stop = threading.Event()
    started = time.perf_counter()
    shown: set[int] = set()

    def poll() -> None:
        for record in _records(run_dir / HISTORY_FILE):
            if record["epoch"] not in shown:
                shown.add(record["epoch"])
                console.epoch(stage, record, epochs, started)
                update(max(shown))

    def loop() -> None:
        while not stop.wait(interval):
            poll()

    with console.progress(f"{stage} epochs", epochs) as update:
        thread = threading.Thread(target=loop, name=f"raysys-{stage}-history", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
            poll()


def _records(path: Path) -> list[dict[str, Any]]:
    try:
        text = path.read_text()
    except OSError:
        return []
    records = []
    for line in text.splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            break  # (written atomically; a partial line would only come from another writer)
    return records


def duration(seconds: float) -> str:
    """`42 s`, or `3:07` from a minute on."""
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 60}:{seconds % 60:02d}" if seconds >= 60 else f"{seconds} s"


def stage_line(mark: str, stage: str, when: str, detail: str) -> str:
    """`✓ teacher      1:11  best epoch 11, valid ndcg@10 0.5470` (▶ started, ✓ done, · skipped)."""
    return f"{mark} {stage:<12} {when:>7}  {detail}".rstrip()
