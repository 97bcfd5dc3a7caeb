"""`raysys serve` (through jobs/serve.py) in the foreground: serves, stops cleanly on Ctrl-C, and the same
command started again serves the events the first run acknowledged (the run's event log)."""

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
from test_durable_events import read_back_with_ray_data

from raysys.data.event_log import interactions, read_log

ROOT = Path(__file__).resolve().parents[2]


def start_serve(model_dir: Path, port: int, out: Path, cwd: Path) -> subprocess.Popen:
    command = [sys.executable, str(ROOT / "jobs" / "serve.py"), "--model", str(model_dir)]
    command += ["--port", str(port), "--out", str(out), "serve.num_cpus=0.5"]
    # Its own session, like a terminal's foreground job: Ctrl-C reaches the whole process group.
    return subprocess.Popen(
        command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )


def post_when_routed(proc: subprocess.Popen, url: str, path: str, body: dict) -> httpx.Response:
    """POST once the app answers: /healthz first (Ray + Serve start-up: minutes on a loaded 2-core
    machine), then retrying after 503 + Retry-After as a client does (/healthz counts Serve's proxy as a
    route, so it can pass while HAProxy does not yet route to the new replica)."""
    deadline = time.monotonic() + 420
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        time.sleep(1)  # also after a 503 while the app starts: a tight loop would starve it of CPU
    assert proc.poll() is None, proc.stdout.read()
    answer = httpx.post(url + path, json=body, timeout=10)
    while answer.status_code == 503 and time.monotonic() < deadline:
        assert answer.headers.get("retry-after") == "1", answer.text
        time.sleep(1)
        answer = httpx.post(url + path, json=body, timeout=10)
    assert answer.status_code == 200, answer.text
    return answer


def stop(proc: subprocess.Popen) -> str:
    """Ctrl-C, then the output; SIGKILL if it does not stop."""
    try:
        os.killpg(proc.pid, signal.SIGINT)
        output, _ = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, output
    return output


def top(answer: httpx.Response) -> list[str]:
    return [item["item_id"] for item in answer.json()["items"]]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_serve_stage_serves_until_ctrl_c_and_a_restart_keeps_acknowledged_events(
    model_dirs: dict[str, Path], tmp_path: Path, unused_port: int, ray_session
) -> None:
    port, out, url = unused_port, tmp_path / "run", f"http://127.0.0.1:{unused_port}"
    proc = start_serve(model_dirs["text"], port, out, tmp_path)
    before = top(post_when_routed(proc, url, "/recommend", {"user_id": "u1", "k": 5}))
    events = before[:2]  # the user takes the first two: a model that reflects them ranks them no more
    answer = post_when_routed(proc, url, "/events", {"user_id": "u1", "item_ids": events})
    assert answer.json()["appended"] == 2
    reflected = top(post_when_routed(proc, url, "/recommend", {"user_id": "u1", "k": 5}))
    assert not set(events) & set(reflected)
    output = stop(proc)
    assert "raysys serve: stopping" in output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model_version"] == "text-v1" and summary["url"] == url
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{url}/healthz", timeout=2)
    logged = interactions(read_log(out / "event_log"))
    assert logged["user_id"].to_pylist() == ["u1", "u1"] and logged["item_id"].to_pylist() == events

    # The same command again: a new Ray cluster and a new live store, rebuilt from the run's event log.
    proc = start_serve(model_dirs["text"], port, out, tmp_path)
    assert top(post_when_routed(proc, url, "/recommend", {"user_id": "u1", "k": 5})) == reflected
    stop(proc)
    assert interactions(read_log(out / "event_log")).num_rows == 2  # read back once each
    read_back = read_back_with_ray_data(out / "event_log", tmp_path / "cache", lambda user: True)
    assert read_back == [("u1", events[0]), ("u1", events[1])]  # and so by Ray Data (the session's cluster)
