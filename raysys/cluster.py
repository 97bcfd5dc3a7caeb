"""Which Ray cluster a `raysys` command runs on: the one every stage joins or starts, decided in one place.

In order: the cluster named by RAY_ADDRESS (as inside `ray job submit`; `local` means "start one of my
own"); else the cluster last started with `ray start` on this machine, when its GCS still answers; else a
new local instance. Plain `ray.init()` would also follow a `ray start` record whose head has since crashed
or been killed, and wait minutes for a GCS that is gone; here that record is skipped with a warning.
"""

from __future__ import annotations

import os
import socket
from typing import Any

from raysys.console import console

GCS_PROBE_TIMEOUT_S = 2.0


def init_ray(*, log_to_driver: bool = True, configure_logging: bool = True, **start: Any) -> bool:
    """Join or start Ray in this process; `start` (num_cpus, include_dashboard, ...) applies only to a
    local instance started here. True when this call initialised Ray (the caller disconnects at its end,
    which stops an instance it started and leaves a joined cluster running); False when it already was."""
    import ray

    if ray.is_initialized():
        return False
    common = {"log_to_driver": log_to_driver, "configure_logging": configure_logging}
    address = os.environ.get("RAY_ADDRESS", "").strip()
    if address and address != "local":
        ray.init(address=address, **common)
        return True
    recorded = None if address == "local" else _recorded_address()
    if recorded is not None:
        if gcs_answers(recorded):
            ray.init(address=recorded, **common)
            return True
        console.warn(
            f"the `ray start` cluster recorded at {recorded} does not answer (its head has stopped); "
            "starting a local Ray instance instead"
        )
    ray.init(address="local", **common, **start)
    return True


def gcs_answers(address: str, timeout_s: float = GCS_PROBE_TIMEOUT_S) -> bool:
    """Whether something accepts TCP connections at `address` (host:port)."""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            return True
    except (OSError, ValueError):
        return False


def _recorded_address() -> str | None:
    """The GCS address `ray start` recorded on this machine (Ray's own record file), if any."""
    from ray._common.utils import get_ray_address_file

    try:
        with open(get_ray_address_file(None)) as record:
            return record.read().strip() or None
    except OSError:
        return None
