"""The console: inside `quiet`, everything written to file descriptors 1 and 2 (by this process or a
child it starts, as Ray's are) lands in the log, while raysys's own lines and warnings reach the
terminal; `--verbose` changes nothing; epoch lines follow a history file as it is rewritten."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

from raysys.console import console, duration, follow_history, quiet, stage_line


def test_quiet_sends_fds_to_the_log_and_keeps_the_console_on_the_terminal(tmp_path: Path, capfd) -> None:
    log = tmp_path / "run" / "raysys.log"
    with quiet(log):
        os.write(1, b"ray internals on fd 1\n")
        print("a library print", file=sys.__stdout__, flush=True)  # (pytest swaps sys.stdout; fd 1 is what counts)
        subprocess.run([sys.executable, "-c", "import sys; print('a child process'); sys.stderr.write('child err\\n')"])
        console.say("raysys line")
        logging.getLogger("raysys.train.checkpoint").warning("skipping incomplete checkpoint x")
        logging.getLogger("ray.train").warning("a Ray warning")
    terminal = capfd.readouterr()
    logged = log.read_text()
    assert "raysys line" in terminal.out and "warning: skipping incomplete checkpoint x" in terminal.err
    for text in ("ray internals", "a library print", "a child process", "child err"):
        assert text in logged and text not in terminal.out + terminal.err
    console.say("after")  # the terminal is back
    assert capfd.readouterr().out == "after\n"


def test_verbose_leaves_the_output_alone(tmp_path: Path, capfd) -> None:
    with quiet(tmp_path / "raysys.log", verbose=True):
        os.write(1, b"ray internals\n")
    assert capfd.readouterr().out == "ray internals\n" and not (tmp_path / "raysys.log").exists()


def test_epoch_lines_follow_the_history_once_each(tmp_path: Path, capsys) -> None:
    def write(epochs: int) -> None:
        records = [
            {"epoch": e, "loss": 5.0 - e, "valid_ndcg@10": 0.1 * e, "seconds": 2.0} for e in range(1, epochs + 1)
        ]
        (tmp_path / "history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))

    with follow_history(tmp_path, "teacher", epochs=3, interval=0.05):
        write(1)
        time.sleep(0.3)
        write(2)  # rewritten whole, as rank 0 does after each epoch
        time.sleep(0.3)
        write(3)
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[2] for line in lines] == ["1/3", "2/3", "3/3"]
    assert "loss 4.0000" in lines[0] and "ndcg@10 0.3000" in lines[2] and "ETA 0 s" in lines[2]


def test_stage_lines_and_durations() -> None:
    assert stage_line("✓", "teacher", duration(71.2), "best epoch 11") == "✓ teacher         1:11  best epoch 11"
    assert duration(42.4) == "42 s" and stage_line("▶", "prepare", "", "") == "▶ prepare"


def test_on_a_terminal_a_training_stage_draws_an_epoch_bar_with_the_lines_above_it(tmp_path: Path) -> None:
    import pty
    import select

    leader, follower = pty.openpty()
    terminal = os.fdopen(follower, "w", buffering=1, encoding="utf-8")
    previous, console.terminal = console.terminal, (terminal, terminal)
    try:
        assert console.interactive
        with follow_history(tmp_path, "teacher", epochs=2, interval=0.05):
            time.sleep(0.3)
            record = {"epoch": 1, "loss": 4.0, "valid_ndcg@10": 0.2, "seconds": 2.0}
            (tmp_path / "history.jsonl").write_text(json.dumps(record) + "\n")
            time.sleep(0.5)
    finally:
        console.terminal = previous
        terminal.close()
    drawn = b""
    while select.select([leader], [], [], 0.2)[0]:
        try:
            drawn += os.read(leader, 65536)
        except OSError:
            break
    os.close(leader)
    text = drawn.decode("utf-8", "replace")
    assert "teacher epochs" in text and "0/2" in text and "1/2" in text  # the bar, before and after epoch 1
    assert "teacher    epoch   1/2" in text and console.live is None
