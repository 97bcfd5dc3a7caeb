"""`ray job submit` of the pipeline against a real local Ray head with token authentication.

The head is our own (`ray start --head --block` on 127.0.0.1, free ports, its own temp dir and HOME,
RAY_AUTH_MODE=token with a fresh token in RAY_AUTH_TOKEN), so neither the session's cluster nor the
user's ~/.ray/auth_token is touched; teardown ends only the processes of that head. The test submits
the pipeline on tiny synthetic data, polls the Jobs API until SUCCEEDED, checks the run directory,
serves the exported student on the same cluster (`raysys serve`), queries it, and checks that the
Jobs API refuses calls without the token (401) or with a wrong one (403).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from raysys.files import free_ports

ROOT = Path(__file__).resolve().parents[2]
TINY = "jobs/configs/tiny.yaml"
RAY = str(Path(sys.executable).with_name("ray"))
RAYSYS = str(Path(sys.executable).with_name("raysys"))
JOB_TIMEOUT_S = 900
UPLOAD_EXCLUDES = [
    ".venv",
    "venv",
    "runs",
    ".cache",
    ".git",
    "**/__pycache__",
    "*.egg-info",
    ".pytest_cache",
    ".ruff_cache",
]


class Head:
    """Our Ray head: its addresses, the environment that reaches it with the token, the process."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.token = secrets.token_hex(32)
        gcs, dash, agent, agent_grpc, metrics, runtime_env, client = free_ports(7)
        self.gcs = f"127.0.0.1:{gcs}"
        self.dashboard = f"http://127.0.0.1:{dash}"
        (root / "home").mkdir()
        self.env = {
            **os.environ,
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": self.token,
            "HOME": str(root / "home"),
            "RAY_ADDRESS": self.gcs,
        }
        self.env.pop("RAY_AUTH_TOKEN_PATH", None)
        command = [
            RAY,
            "start",
            "--head",
            "--block",
            "--node-ip-address=127.0.0.1",
            f"--port={gcs}",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dash}",
            "--include-dashboard=true",
            f"--dashboard-agent-listen-port={agent}",
            f"--dashboard-agent-grpc-port={agent_grpc}",
            f"--metrics-export-port={metrics}",
            f"--runtime-env-agent-port={runtime_env}",
            f"--ray-client-server-port={client}",
            "--num-cpus=4",
            f"--temp-dir={root / 'ray'}",
        ]
        start_env = {k: v for k, v in self.env.items() if k != "RAY_ADDRESS"}
        log = open(root / "head.log", "w")  # noqa: SIM115 - closed with the process
        # A session of its own: teardown signals exactly this head's process group.
        self.process = subprocess.Popen(
            command, env=start_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=root
        )

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def wait_ready(self, timeout_s: float = 180.0) -> None:
        """Until the Jobs API answers with our token."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ray start exited: {(self.root / 'head.log').read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.dashboard}/api/jobs/", headers=self.auth, timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(2)
        raise TimeoutError(f"the head's Jobs API did not answer in {timeout_s:.0f} s")

    def stop(self) -> None:
        """SIGTERM the head's process group, then SIGKILL whatever of it (or of its temp dir) is left."""
        for sig, wait_s in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.process.wait(timeout=wait_s)
            except subprocess.TimeoutExpired:
                continue
        for pid in self._leftover_pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def _leftover_pids(self) -> list[int]:
        """Processes whose command line names this head's temp dir (workers started in their own session)."""
        marker = str(self.root / "ray").encode()
        pids = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    if marker in (entry / "cmdline").read_bytes():
                        pids.append(int(entry.name))
                except OSError:
                    continue
        return pids


@pytest.fixture
def head() -> Iterator[Head]:
    # Short root: Ray's unix socket paths under --temp-dir must stay under ~107 characters.
    root = Path(tempfile.mkdtemp(prefix="rjs", dir="/tmp"))
    head = Head(root)
    try:
        head.wait_ready()
        yield head
    finally:
        head.stop()
        shutil.rmtree(root, ignore_errors=True)


def submit(head: Head, run_dir: Path, submission_id: str) -> None:
    """`ray job submit --working-dir . -- python jobs/pipeline.py ...` without waiting."""
    runtime_env = {
        "excludes": UPLOAD_EXCLUDES,
        # The DeepSpeed C++ op built once for this checkout (the uploaded copy has no .cache).
        "env_vars": {"TORCH_EXTENSIONS_DIR": str(ROOT / ".cache" / "torch_extensions"), "DS_ACCELERATOR": "cpu"},
    }
    command = [
        RAY,
        "job",
        "submit",
        "--address",
        head.dashboard,
        "--working-dir",
        ".",
        "--no-wait",
        "--submission-id",
        submission_id,
        "--runtime-env-json",
        json.dumps(runtime_env),
        "--",
        sys.executable,
        "jobs/pipeline.py",
        "--config",
        TINY,
        "--out",
        str(run_dir),
    ]
    # A fresh head's dashboard answers before its job agent has registered ("No available agent to
    # submit job, please try again later"): retry that one answer, as a user would.
    deadline = time.monotonic() + 180
    while True:
        result = subprocess.run(command, env=head.env, cwd=ROOT, capture_output=True, text=True, timeout=300)
        if result.returncode == 0 or "No available agent" not in result.stderr or time.monotonic() > deadline:
            break
        time.sleep(5)
    assert result.returncode == 0, result.stdout + result.stderr


def wait_for_job(head: Head, submission_id: str) -> dict:
    """Poll GET /api/jobs/<id> until the job is finished; its final record."""
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while time.monotonic() < deadline:
        job = httpx.get(f"{head.dashboard}/api/jobs/{submission_id}", headers=head.auth, timeout=10).json()
        if job["status"] in ("SUCCEEDED", "FAILED", "STOPPED"):
            return job
        time.sleep(5)
    raise TimeoutError(f"job {submission_id} not finished after {JOB_TIMEOUT_S} s")


def job_logs(head: Head, submission_id: str, tail: int = 4000) -> str:
    response = httpx.get(f"{head.dashboard}/api/jobs/{submission_id}/logs", headers=head.auth, timeout=10)
    return response.json().get("logs", "")[-tail:]


def serve_and_query(head: Head, model_dir: Path, user_id: str) -> dict:
    """`raysys serve --model DIR` on the head's cluster; one POST /recommend; Ctrl-C."""
    (port,) = free_ports(1)
    out = head.root / "serve-run"
    serve = subprocess.Popen(
        [RAYSYS, "serve", "--model", str(model_dir), "--port", str(port), "--out", str(out)],
        env=head.env,
        cwd=head.root,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            assert serve.poll() is None, serve.stdout.read()[-3000:]
            try:
                if httpx.get(f"{url}/healthz", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(2)
        response = httpx.post(f"{url}/recommend", json={"user_id": user_id, "k": 5}, timeout=30)
        assert response.status_code == 200, response.text
        return response.json()
    finally:
        serve.send_signal(signal.SIGINT)
        try:
            serve.wait(timeout=90)
        except subprocess.TimeoutExpired:
            serve.kill()


@pytest.mark.slow
@pytest.mark.timeout(JOB_TIMEOUT_S + 600)
def test_pipeline_as_a_ray_job_with_token_auth(head: Head) -> None:
    unauthenticated = httpx.get(f"{head.dashboard}/api/jobs/", timeout=10)
    wrong_token = httpx.get(f"{head.dashboard}/api/jobs/", headers={"Authorization": "Bearer nope"}, timeout=10)
    assert unauthenticated.status_code == 401 and wrong_token.status_code == 403

    run_dir = head.root / "run"
    submit(head, run_dir, "raysys-pipeline-test")
    job = wait_for_job(head, "raysys-pipeline-test")
    assert job["status"] == "SUCCEEDED", job_logs(head, "raysys-pipeline-test")

    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["stage"] == "pipeline" and set(summary["models"]) == {"teacher", "student", "popularity", "itemknn"}
    assert summary["models"]["student"]["path"] == str(run_dir / "export" / "student")
    assert (run_dir / "report.html").read_text().count("data:image/png;base64,") >= 2
    assert (run_dir / "student" / "model" / "model.safetensors").is_file()
    assert (run_dir / "student" / "tensorboard").is_dir()
    # What `ray job logs` shows is raysys's console: stage and epoch lines, the results, no Ray internals
    # (those are in the run's raysys.log).
    logs = job_logs(head, "raysys-pipeline-test", tail=100_000)
    assert "✓ finetune" in logs and "  student    epoch   1/" in logs and "Results (test" in logs, logs[-3000:]
    # The job supervisor's own header ("job_manager.py -- Runtime env is setting up.") precedes the driver.
    driver_lines = [line for line in logs.splitlines() if "job_manager.py" not in line]
    noise = ("TrainController", "streaming_executor", "TrainingReport", "INFO")
    noisy = [line for line in driver_lines if any(n in line for n in noise)]
    assert not noisy, "\n".join(noisy[:20])
    assert "TrainController" in (run_dir / "raysys.log").read_text()

    user_id = summary["serve_smoke"]["user_id"]
    answer = serve_and_query(head, run_dir / "student" / "model", user_id)
    assert len(answer["items"]) == 5 and answer["model_version"] == summary["serve_smoke"]["model_version"]
