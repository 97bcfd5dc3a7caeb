"""Deploy the app the way `serve deploy CONFIG` does, from a `ServeConfig`.

`serve_config(cfg)` is the Serve config (the same shape as jobs/configs/serve.yaml); `deploy(config)`
starts Serve with its HTTP options and applies it declaratively, like `serve run CONFIG`. Declarative
is what makes hot reload cheap: Serve keys the code version on the import path, so deploying again
with only `user_config.model_dir` changed reconfigures the running replicas in place (each loads the
new model beside the old one and swaps) instead of replacing them.
"""

from __future__ import annotations

import time
from typing import Any

from raysys.config import ServeConfig
from raysys.errors import RaysysError
from raysys.serve.settings import DEPLOYMENT_NAME, ReplicaSettings

IMPORT_PATH = "raysys.serve.app:app"


def serve_config(cfg: ServeConfig, model_dir: str | None = None) -> dict[str, Any]:
    """A Serve deploy config (ServeDeploySchema as a dict) for the recommender application."""
    model_dir = model_dir or cfg.model_dir
    if not model_dir:
        raise RaysysError("no model directory given", where="serve.model_dir", hint="pass --model MODEL_DIR")
    deployment: dict[str, Any] = {
        "name": DEPLOYMENT_NAME,
        "max_ongoing_requests": cfg.max_ongoing_requests,
        "max_queued_requests": cfg.max_queued_requests,
        "ray_actor_options": {"num_cpus": cfg.num_cpus},
        "user_config": ReplicaSettings.from_config(cfg, str(model_dir)).model_dump(),
    }
    if cfg.max_replicas is not None and cfg.max_replicas > cfg.num_replicas:
        deployment["autoscaling_config"] = {
            "min_replicas": cfg.num_replicas,
            "max_replicas": cfg.max_replicas,
            "target_ongoing_requests": cfg.target_ongoing_requests,
        }
    else:
        deployment["num_replicas"] = cfg.num_replicas
    return {
        "proxy_location": "HeadOnly",
        "logging_config": {"enable_access_log": cfg.access_log},
        "http_options": {"host": cfg.host, "port": cfg.port, "request_timeout_s": cfg.request_timeout_s},
        "applications": [
            {"name": cfg.app_name, "route_prefix": "/", "import_path": IMPORT_PATH, "deployments": [deployment]}
        ],
    }


def deploy(config: dict[str, Any], timeout_s: float = 180.0) -> None:
    """Start Serve (HTTP options from `config`) if needed, apply `config`, wait until it runs.

    Deploying again with a different `user_config` is a hot reload. Raises RaysysError when the
    application fails to deploy or is not running within `timeout_s`.
    """
    from ray.serve._private import api as serve_private_api
    from ray.serve.schema import ServeDeploySchema

    schema = ServeDeploySchema.model_validate(config)
    # serve_start is what `serve run CONFIG` calls: it starts the controller and proxy with these
    # cluster-wide HTTP options, or returns the running controller's client.
    client = serve_private_api.serve_start(
        http_options=schema.http_options.model_dump(),
        proxy_location=schema.proxy_location,
        global_logging_config=schema.logging_config,
    )
    client.deploy_apps(schema)
    deadline = time.monotonic() + timeout_s
    for app in schema.applications:
        wait_running(app.name, deadline - time.monotonic())
    http = client.http_config  # a Serve that was already running keeps its own host and port
    host = "127.0.0.1" if http.host in (None, "0.0.0.0", "::") else http.host
    wait_routed(f"http://{host}:{http.port}", deadline)


def wait_routed(url: str, deadline: float) -> None:
    """Block until the HTTP ingress routes to a live replica (its `/-/healthz` answers 200): HAProxy
    learns of new replicas a moment after Serve reports the application running."""
    import urllib.error
    import urllib.request

    while True:
        try:
            with urllib.request.urlopen(f"{url}/-/healthz", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            raise RaysysError("the HTTP ingress routes to no replica", where=url)
        time.sleep(0.1)


def wait_running(app_name: str, timeout_s: float) -> None:
    """Block until the application is RUNNING; RaysysError if it fails or the time runs out."""
    from ray import serve

    deadline = time.monotonic() + timeout_s
    while True:
        status = serve.status().applications.get(app_name)
        state = status.status if status is not None else "NOT_STARTED"
        if state == "RUNNING":
            return
        if state == "DEPLOY_FAILED":
            raise RaysysError(f"deploying failed: {status.message}", where=f"serve application {app_name!r}")
        if time.monotonic() > deadline:
            message = status.message if status is not None else ""
            raise RaysysError(
                f"not running after {timeout_s:.0f} s (status {state}) {message}".strip(),
                where=f"serve application {app_name!r}",
            )
        time.sleep(0.2)


def swap_model(app_name: str, model_dir: str, timeout_s: float = 180.0, variant: str | None = None) -> dict[str, Any]:
    """Point the running application `app_name` (its A/B `variant`, when given) at `model_dir`: its deployed
    config again, with only the recommender's `user_config.model_dir` (or that variant's model_dir) changed,
    so the replicas reload in place (a hot reload: each loads the new model beside the old and swaps, no
    request fails). The cluster's other applications are deployed as they are. Returns {"app", "variant",
    "model_dir", "previous"}; RaysysError when the application (or variant) is not running here or does
    not come back RUNNING."""
    from ray.serve._private.constants import SERVE_NAMESPACE
    from ray.serve.context import _get_global_client
    from ray.serve.exceptions import RayServeException
    from ray.serve.schema import ServeDeploySchema

    try:
        client = _get_global_client()
    except RayServeException:
        raise RaysysError("Serve is not running on this Ray cluster", where=f"serve application {app_name!r}") from None
    details = client.get_serve_details()
    apps = {name: app.get("deployed_app_config") for name, app in details.get("applications", {}).items()}
    config = apps.get(app_name)
    if config is None:
        raise RaysysError(
            f"no running application {app_name!r} deployed from a config (running: {sorted(apps) or 'none'})",
            where="update.serve_app",
            hint=f"serve.app_name of the running endpoint (Serve namespace {SERVE_NAMESPACE!r})",
        )
    deployment = next((d for d in config.get("deployments", []) if d.get("name") == DEPLOYMENT_NAME), None)
    if deployment is None or "user_config" not in deployment:
        raise RaysysError(f"application {app_name!r} has no {DEPLOYMENT_NAME} deployment", where="update.serve_app")
    user_config = deployment["user_config"]
    if variant is None:
        previous = user_config.get("model_dir")
        deployment["user_config"] = {**user_config, "model_dir": str(model_dir)}
    else:
        variants = [dict(v) for v in user_config.get("variants") or []]
        target = next((v for v in variants if v.get("name") == variant), None)
        if target is None:
            names = [v.get("name") for v in variants]
            raise RaysysError(f"application {app_name!r} has no variant {variant!r} (its variants: {names or 'none'})",
                              where="update.variant")  # fmt: skip
        previous = target.get("model_dir") or user_config.get("model_dir")
        target["model_dir"] = str(model_dir)
        deployment["user_config"] = {**user_config, "variants": variants}
    schema = {key: details[key] for key in ("proxy_location", "http_options") if details.get(key) is not None}
    schema["applications"] = [app for app in apps.values() if app is not None]
    client.deploy_apps(ServeDeploySchema.model_validate(schema))
    wait_running(app_name, timeout_s)
    return {"app": app_name, "variant": variant, "model_dir": str(model_dir), "previous": previous}
