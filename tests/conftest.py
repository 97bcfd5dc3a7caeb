"""Shared fixtures: one real local Ray cluster per test session, tiny data, the shared ml-100k."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
ML100K = SHARED_DATA / "ml-100k"

os.environ.setdefault("RAY_DEDUP_LOGS", "0")
# Every Ray the tests start is their own: never a `ray start` cluster recorded on this machine (live, or
# stale after a crash, which plain `ray.init()` would wait minutes for), nor one named from outside.
# Tests that mean a cluster (`ray job submit`, Tune against the session's) name its address themselves.
os.environ["RAY_ADDRESS"] = "local"
os.environ.setdefault("DS_ACCELERATOR", "cpu")


@pytest.fixture(scope="session")
def ray_session(s3_server):
    """A real local Ray cluster shared by the whole session (4 logical CPUs on a 2-core machine,
    so a Ray Train worker and the Ray Data tasks feeding it never wait for each other). Started after
    the session's S3 server, so its workers (Serve replicas writing an s3:// event log) reach it too."""
    import ray

    if not ray.is_initialized():
        from raysys.config import ServeConfig
        from raysys.serve.ingress import apply_ingress_env

        # The shipped HTTP ingress (HAProxy); the served app's request timeout is 3 s (tests/serve).
        apply_ingress_env(ServeConfig(request_timeout_s=3.0))
        # The dashboard must be ours: Ray Train asks it (127.0.0.1:8265) whether a run is still alive.
        ray.init(num_cpus=4, include_dashboard=True, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> dict:
    """The `data:` section of the tiny training configs: 200 synthetic users over 60 items, max_len 10,
    prepared once per session into a shared cache."""
    return {
        "format": "synthetic",
        "max_len": 10,
        "cache_dir": str(tmp_path_factory.mktemp("tiny-data-cache")),
        "synthetic": {"num_users": 200, "num_items": 60, "num_interactions": 2000, "num_topics": 4},
    }


@pytest.fixture(scope="session")
def ml100k_path() -> Path:
    if not (ML100K / "ml-100k.inter").is_file():
        pytest.skip(f"shared MovieLens-100K not found at {ML100K}")
    return ML100K


@pytest.fixture(scope="session")
def s3_server():
    """A moto S3 server on a free 127.0.0.1 port for the session; the AWS variables point at it."""
    pytest.importorskip("boto3")
    server_mod = pytest.importorskip("moto.server")
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        patch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
        yield env["AWS_ENDPOINT_URL"]
    server.stop()
