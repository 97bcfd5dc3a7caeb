"""`raysys serve`: serve a model directory over HTTP with Ray Serve, in the foreground.

    raysys serve --model runs/distill/model                      # http://127.0.0.1:8000/docs
    raysys serve --model runs/distill/model --port 8080 serve.num_replicas=2 serve.batching=false
    python jobs/serve.py --config jobs/configs/ml100k.yaml --model runs/distill/model

setup (check the model directory, connect to or start Ray) -> deploy the Serve config that
`serve_config` builds (the same one jobs/configs/serve.yaml spells out for `serve deploy`) -> wait
for Ctrl-C (or SIGTERM from `ray job stop`) -> delete the application, shut Serve down if this
process started Ray -> summary. Hot reload on a running cluster: `serve deploy` the config with the
new `model_dir`; nothing here needs restarting.
"""

from __future__ import annotations

import argparse
import signal
import time
from pathlib import Path
from typing import Any

from raysys.config import Config, ServeConfig
from raysys.console import console
from raysys.serve.deploy import serve_config

DESCRIPTION = "serve a model directory over HTTP with Ray Serve (foreground; Ctrl-C stops it)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", metavar="MODEL_DIR", help="model directory to serve (default: serve.model_dir)")
    parser.add_argument("--port", type=int, help="HTTP port (default: serve.port, 8000)")
    parser.add_argument("--host", help="HTTP host (default: serve.host, 127.0.0.1; 0.0.0.0 to listen on all)")


def run(cfg: Config, out_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Deploy, block until interrupted, clean up; returns the summary written to summary.json."""
    serve_cfg = _apply_flags(cfg, args)
    cfg.save(Path(out_dir) / "config.yaml")  # the flags are part of the resolved config
    model_dir = str(Path(serve_cfg.model_dir).expanduser().resolve()) if serve_cfg.model_dir else None
    config = serve_config(serve_cfg, model_dir)

    from raysys.models.export import read_model_config

    model_version = read_model_config(Path(model_dir))["model_version"]  # fails fast, before any replica does
    import ray
    from ray import serve

    from raysys.cluster import init_ray
    from raysys.serve.deploy import deploy
    from raysys.serve.ingress import apply_ingress_env

    started_ray = not ray.is_initialized()
    if started_ray:
        apply_ingress_env(serve_cfg)  # the HTTP ingress is chosen when Ray's processes start
        init_ray(log_to_driver=False)
    url = f"http://{serve_cfg.host}:{serve_cfg.port}"
    start = time.time()
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # `ray job stop`, `kill`: same as Ctrl-C
    try:
        deploy(config)
        console.say(f"raysys serve: model {model_version} at {url} (OpenAPI: {url}/docs); Ctrl-C to stop")
        while True:
            time.sleep(1.0)
    except KeyboardInterrupt:  # also while still deploying: stopping early is a clean stop too
        console.say("raysys serve: stopping")
    finally:
        _stop(serve, serve_cfg.app_name, shutdown=started_ray)
        if started_ray:
            ray.shutdown()
    served_s = round(time.time() - start, 1)
    return {"url": url, "model_dir": model_dir, "model_version": model_version, "served_s": served_s}


def _apply_flags(cfg: Config, args: argparse.Namespace) -> ServeConfig:
    if getattr(args, "model", None):
        cfg.serve.model_dir = args.model
    if getattr(args, "port", None):
        cfg.serve.port = args.port
    if getattr(args, "host", None):
        cfg.serve.host = args.host
    if cfg.serve.event_log is None:  # the run's own log: the same command, restarted, finds it again
        cfg.serve.event_log = str((Path(args.out) / "event_log").resolve())
    return cfg.serve


def _stop(serve, app_name: str, *, shutdown: bool) -> None:
    """Delete the application; shut Serve down too when this process owns the Ray cluster."""
    if shutdown:
        serve.shutdown()
    else:
        serve.delete(app_name)
