"""A probe of how often, and for how long, a run resolves its dataset, in every process it starts.

    env = probe_env(tmp_dir, log_file)                    # run a raysys command with this environment
    records = read_probe(log_file)                        # [{"pid", "event", "seconds", "path"}]

The probe is a `sitecustomize.py` put first on PYTHONPATH: every Python process the command starts
(the driver, Ray's workers and actors, Tune trials, restarts) loads it before anything else. It
wraps, as their modules are imported, `raysys.data.prepare.prepare_or_reuse` (resolving a data config:
finding, hashing and checking the inputs and the cached outputs), `PreparedDataset.open` (outside a
resolution) and `raysys.data.sequences.file_sha256` (each file hashed), and appends one JSON line
per call to the log. It works on any raysys commit that has those functions, so a benchmark can
compare commits. Nothing in the product loads it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

LOG_VARIABLE = "RAYSYS_PROBE_LOG"

SITECUSTOMIZE = """
import importlib.abc, importlib.machinery, json, os, sys, threading, time

_LOG = os.environ.get("RAYSYS_PROBE_LOG")
_depth = threading.local()


def _write(event, seconds, path=None):
    with open(_LOG, "a") as f:
        f.write(json.dumps({"pid": os.getpid(), "event": event, "seconds": seconds, "path": path}) + "\\n")


def _timed(event, fn, only_outside=False):
    def wrapper(*args, **kwargs):
        level = getattr(_depth, "level", 0)
        if only_outside and level:
            return fn(*args, **kwargs)
        _depth.level = level + 1
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            _depth.level = level
            _write(event, time.perf_counter() - start)
    return wrapper


def _patch_prepare(module):
    module.prepare_or_reuse = _timed("resolve", module.prepare_or_reuse)


def _patch_dataset(module):
    opened = module.PreparedDataset.open.__func__
    module.PreparedDataset.open = classmethod(_timed("open", opened, only_outside=True))


def _patch_sequences(module):
    digest = module.file_sha256

    def file_sha256(path):
        _write("sha256", 0.0, str(path))
        return digest(path)
    module.file_sha256 = file_sha256


_TARGETS = {
    "raysys.data.prepare": _patch_prepare,
    "raysys.data.dataset": _patch_dataset,
    "raysys.data.sequences": _patch_sequences,
}


class _Hook(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name not in _TARGETS:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return None
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            _TARGETS[name](module)
        spec.loader.exec_module = exec_module
        return spec


if _LOG:
    sys.meta_path.insert(0, _Hook())
"""


def probe_env(folder: Path, log: Path, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment that loads the probe (written into `folder`) and logs to `log`."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = dict(os.environ if base is None else base)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(folder), env.get("PYTHONPATH", "")) if p)
    env[LOG_VARIABLE] = str(log)
    return env


def read_probe(log: Path) -> list[dict[str, Any]]:
    """The probe's records ([] when nothing was logged)."""
    if not log.is_file():
        return []
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
