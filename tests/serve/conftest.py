"""Serve fixtures: tiny random model directories and one real Serve application for the session.

The application runs on the session's local Ray cluster (`ray_session`) behind a real HTTP proxy
on 127.0.0.1. Tests state the deployment they need through `served.configure(...)`, which
redeploys the Serve config declaratively (user_config and scaling changes reconfigure the running
replicas; nothing restarts unless the replica count grows).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from raysys.config import ServeConfig, StudentConfig
from raysys.files import free_port

TEXT_MODEL = StudentConfig(hidden_size=32, num_layers=1, num_heads=2, dropout=0.0, use_text=True)
PLAIN_MODEL = StudentConfig(hidden_size=32, num_layers=1, num_heads=2, dropout=0.0, use_text=False)
NUM_ITEMS, NUM_USERS, MAX_LEN = 200, 40, 20
APP = "raysys"  # the Serve application name (its HAProxy backend is http-<APP>)


@pytest.fixture
def unused_port() -> int:
    return free_port()


def brute_force_top_k(
    loaded, history: list[str], k: int, exclude_seen: bool = True, exclude: tuple[str, ...] = ()
) -> tuple[list[tuple[str, float]], bool]:
    """The reference ranking, written out here without the serving code: score every item with the
    model's `next_item_scores` on the known part of `history` (its last max_len items), drop pad and
    mask, the excluded ids and (with exclude_seen) every known history id, sort, keep k. A history with
    no known id falls back to the most popular allowed items. Returns (items with scores, fell back)."""
    import torch

    known = [loaded.item_index[i] for i in history if i in loaded.item_index]
    banned = {loaded.item_index[i] for i in exclude if i in loaded.item_index} | (set(known) if exclude_seen else set())
    if not known:
        ids, counts = loaded.popularity["item_id"].to_pylist(), loaded.popularity["count"].to_pylist()
        ranked = [(i, float(c)) for i, c in zip(ids, counts, strict=True) if loaded.item_index[i] not in banned]
        return ranked[:k], True
    with torch.no_grad():
        scores = loaded.model.next_item_scores(torch.tensor([known[-loaded.max_len :]]))[0].tolist()
    allowed = [(loaded.item_ids[i], s) for i, s in enumerate(scores) if i >= 2 and i not in banned]
    return sorted(allowed, key=lambda pair: -pair[1])[:k], False


@pytest.fixture(scope="session")
def brute_force():
    """`brute_force_top_k`, for the tests that check the served ranking against it."""
    return brute_force_top_k


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """'text': a student with a text tower (version text-v1); 'plain': one without (plain-v2)."""
    from raysys.bench.model_dirs import random_model_dir

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

    def wait_routed(self, replicas: int, timeout_s: float = 60, stable_s: float = 2.0) -> None:
        """Until HAProxy routes to exactly `replicas` replicas that its health checks see UP, the same ones
        for `stable_s` (Serve reports a replica running, or reconfigured, a moment before HAProxy has it
        back in its list, and a replica being stopped can still count UP a moment after; meanwhile
        requests go to the fallback). Read from HAProxy's stats page as CSV."""
        import csv
        import os
        import time

        import httpx

        url = f"http://127.0.0.1:{os.environ['RAY_SERVE_HAPROXY_STATS_PORT']}/stats;csv"
        deadline = time.monotonic() + timeout_s
        seen, since = None, time.monotonic()
        while True:
            rows = list(csv.DictReader(httpx.get(url, timeout=5).text.lstrip("# ").splitlines()))
            up = sorted(
                r["svname"]
                for r in rows
                if r["pxname"] == f"http-{APP}"
                and r["svname"] not in ("FRONTEND", "BACKEND")
                and r["bck"] == "0"
                and r["status"].startswith("UP")
            )
            if up != seen:
                seen, since = up, time.monotonic()
            if len(up) == replicas and time.monotonic() - since >= stable_s:
                return
            assert time.monotonic() < deadline, f"HAProxy routes to {len(up)} replicas, not {replicas}: {rows}"
            time.sleep(0.2)


@pytest.fixture(scope="session")
def served(ray_session, model_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):
    """Two replicas of the text model; 3 s request timeout (cluster-wide, fixed at Serve start); the
    session's own event log."""
    from ray import serve

    port = free_port()
    log = str(tmp_path_factory.mktemp("event-log"))
    base = ServeConfig(
        port=port, num_replicas=2, num_cpus=0.5, request_timeout_s=3.0, max_ongoing_requests=16, event_log=log
    )
    app = ServedApp(url=f"http://127.0.0.1:{port}", base=base, model_dirs=model_dirs)
    app.configure()
    yield app
    serve.shutdown()
