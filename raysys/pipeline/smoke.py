"""The pipeline's serve smoke query: deploy the exported student, ask it for one user, take it down.

    result = serve_smoke(cfg.serve, Path("runs/x/student/model"))
    result["top_items"], result["latency_ms"]["p50"]

The application is the production one (`raysys.serve.app`, deployed through `raysys.serve.deploy`
like `raysys serve` does), on a free port of 127.0.0.1 and under its own route prefix, so it can sit
beside an application that is already being served on the same cluster. Afterwards it is deleted,
and Serve itself is shut down when this call started it: the pipeline leaves nothing running.
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from raysys.config import ServeConfig
from raysys.errors import RaysysError
from raysys.files import free_port

SMOKE_APP = "raysys-pipeline-smoke"
SMOKE_ROUTE = "/pipeline-smoke"
SMOKE_REQUESTS = 20  # sequential queries after the first: enough for a stable p50 on a quiet machine
SMOKE_K = 10


def serve_smoke(cfg: ServeConfig, model_dir: Path, *, user_id: str | None = None) -> dict[str, Any]:
    """Deploy `model_dir`, POST /recommend {user_id, k: 10} SMOKE_REQUESTS + 1 times, clean up.

    Returns {"url", "user_id", "model_version", "top_items": [item ids], "fallback",
    "latency_ms": {"first", "p50", "p90", "max", "requests"}} (client-side wall time per request).
    """
    import ray
    from ray import serve
    from ray.serve.context import _get_global_client

    from raysys.serve.deploy import deploy, serve_config

    user_id = user_id or _first_user(model_dir)
    if not ray.is_initialized():
        from raysys.cluster import init_ray
        from raysys.serve.ingress import apply_ingress_env

        apply_ingress_env(cfg)
        init_ray(log_to_driver=False)
    serve_was_running = _get_global_client(raise_if_no_controller_running=False) is not None
    log = tempfile.mkdtemp(prefix="raysys-smoke-event-log-")  # the smoke posts no events: a throwaway log
    serve_cfg = _smoke_serve_cfg(cfg).model_copy(update={"event_log": log})
    config = _smoke_config(serve_config(serve_cfg, str(model_dir.resolve())))
    try:
        deploy(config)
        port = _get_global_client().http_config.port  # an already running Serve keeps its own port
        url = f"http://127.0.0.1:{port}{SMOKE_ROUTE}"
        return {"url": url, "user_id": user_id, **_query(url, user_id, _auth_headers(cfg))}
    finally:
        if serve_was_running:
            serve.delete(SMOKE_APP)
        else:
            serve.shutdown()
        shutil.rmtree(log, ignore_errors=True)


def _first_user(model_dir: Path) -> str:
    """A user the model directory knows (the first of its stored histories)."""
    import pyarrow.parquet as pq

    from raysys.models.export import USER_HISTORY_FILE

    users = pq.read_table(model_dir / USER_HISTORY_FILE, columns=["user_id"])["user_id"]
    if len(users) == 0:
        raise RaysysError("the model directory stores no user histories", where=str(model_dir))
    return str(users[0])


def _smoke_serve_cfg(cfg: ServeConfig) -> ServeConfig:
    """One replica of the configured serving settings, on a free local port."""
    return cfg.model_copy(
        update={
            "host": "127.0.0.1",
            "port": free_port(),
            "num_replicas": 1,
            "max_replicas": None,
            "app_name": SMOKE_APP,
        }
    )


def _smoke_config(config: dict[str, Any]) -> dict[str, Any]:
    """The Serve config under SMOKE_ROUTE instead of "/" (another app may already own "/")."""
    config["applications"][0]["route_prefix"] = SMOKE_ROUTE
    return config


def _auth_headers(cfg: ServeConfig) -> dict[str, str]:
    """The API-key header when the serving config asks for a key."""
    from raysys.serve.app import API_KEY_HEADER
    from raysys.serve.settings import resolve_api_key

    key = resolve_api_key(cfg)
    return {API_KEY_HEADER: key} if key else {}


def _query(url: str, user_id: str, headers: dict[str, str]) -> dict[str, Any]:
    """POST /recommend SMOKE_REQUESTS + 1 times; the first answer's items and every latency."""
    latencies: list[float] = []
    body: dict[str, Any] = {}
    with httpx.Client(timeout=30.0) as client:
        for _ in range(SMOKE_REQUESTS + 1):
            start = time.perf_counter()
            response = client.post(f"{url}/recommend", json={"user_id": user_id, "k": SMOKE_K}, headers=headers)
            latencies.append((time.perf_counter() - start) * 1000.0)
            if response.status_code != 200:
                raise RaysysError(f"POST /recommend answered {response.status_code}: {response.text[:200]}", where=url)
            body = body or response.json()
    steady = sorted(latencies[1:])
    return {
        "model_version": body["model_version"],
        "top_items": [item["item_id"] for item in body["items"]],
        "fallback": body.get("fallback"),
        "latency_ms": {
            "first": round(latencies[0], 2),
            "p50": round(statistics.median(steady), 2),
            "p90": round(steady[int(0.9 * (len(steady) - 1))], 2),
            "max": round(steady[-1], 2),
            "requests": len(latencies),
        },
    }
