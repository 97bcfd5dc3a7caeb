"""Serve fixtures: tiny random model directories and one real Serve application for the session.

The application runs on the session's local Ray cluster (`ray_session`) behind a real HTTP proxy
on 127.0.0.1. Tests state the deployment they need through `served.configure(...)`, which
redeploys the Serve config declaratively (user_config and scaling changes reconfigure the running
replicas; nothing restarts unless the replica count grows).
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from raysys.config import ServeConfig, StudentConfig

TEXT_MODEL = StudentConfig(hidden_size=32, num_layers=1, num_heads=2, dropout=0.0, use_text=True)
PLAIN_MODEL = StudentConfig(hidden_size=32, num_layers=1, num_heads=2, dropout=0.0, use_text=False)
NUM_ITEMS, NUM_USERS, MAX_LEN = 200, 40, 20


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def unused_port() -> int:
    return free_port()


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """'text': a student with a text tower (version text-v1); 'plain': one without (plain-v2)."""
    from raysys.serve.synthetic import random_model_dir

    root = tmp_path_factory.mktemp("serve-models")
    common = dict(num_items=NUM_ITEMS, num_users=NUM_USERS, max_len=MAX_LEN)
    return {
        "text": random_model_dir(root / "text", model_cfg=TEXT_MODEL, model_version="text-v1", seed=0, **common),
        "plain": random_model_dir(root / "plain", model_cfg=PLAIN_MODEL, model_version="plain-v2", seed=1, **common),
    }


@dataclass
class ServedApp:
    """The session's Serve application and how to change it."""

    url: str
    base: ServeConfig
    model_dirs: dict[str, Path]
    deployed: dict[str, Any] = field(default_factory=dict)

    def configure(self, model: str = "text", **changes: Any) -> None:
        """Deploy `base` with `changes` serving `model_dirs[model]`; a no-op when already so."""
        from raysys.serve.deploy import deploy, serve_config

        config = serve_config(self.base.model_copy(update=changes), str(self.model_dirs[model]))
        if config != self.deployed:
            deploy(config)
            self.deployed = config


@pytest.fixture(scope="session")
def served(ray_session, model_dirs: dict[str, Path]):
    """Two replicas of the text model; 3 s request timeout (cluster-wide, fixed at Serve start)."""
    from ray import serve

    port = free_port()
    base = ServeConfig(port=port, num_replicas=2, num_cpus=0.5, request_timeout_s=3.0, max_ongoing_requests=16)
    app = ServedApp(url=f"http://127.0.0.1:{port}", base=base, model_dirs=model_dirs)
    app.configure()
    yield app
    serve.shutdown()
