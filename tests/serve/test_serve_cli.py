"""`raysys serve` (through jobs/serve.py) in the foreground: serves, then stops cleanly on Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.timeout(540)
def test_serve_stage_serves_until_ctrl_c(model_dirs: dict[str, Path], tmp_path: Path, unused_port: int) -> None:
    port, out = unused_port, tmp_path / "run"
    command = [
        sys.executable,
        str(ROOT / "jobs" / "serve.py"),
        "--model",
        str(model_dirs["text"]),
        "--port",
        str(port),
        "--out",
        str(out),
        "serve.num_cpus=0.5",
    ]
    # Its own session, like a terminal's foreground job: Ctrl-C reaches the whole process group.
    proc = subprocess.Popen(
        command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 420  # Ray + Serve start-up: minutes on a loaded 2-core machine
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(1)  # also after a 503 while the app starts: a tight loop would starve it of CPU
        assert proc.poll() is None, proc.stdout.read()
        # /healthz counts Serve's proxy as a route, so it can pass while HAProxy is not yet routing to the
        # new replica; meanwhile /recommend answers 503 + Retry-After, and a client retries after it.
        answer = httpx.post(f"http://127.0.0.1:{port}/recommend", json={"user_id": "u1", "k": 3}, timeout=10)
        while answer.status_code == 503 and time.monotonic() < deadline:
            assert answer.headers.get("retry-after") == "1", answer.text
            time.sleep(1)
            answer = httpx.post(f"http://127.0.0.1:{port}/recommend", json={"user_id": "u1", "k": 3}, timeout=10)
        assert answer.status_code == 200 and len(answer.json()["items"]) == 3, answer.text
        os.killpg(proc.pid, signal.SIGINT)
        output, _ = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, output
    assert "raysys serve: stopping" in output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model_version"] == "text-v1" and summary["url"] == f"http://127.0.0.1:{port}"
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
