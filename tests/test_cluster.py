"""raysys.cluster.init_ray: which cluster a command joins or starts, and a stale `ray start` record that
no longer holds anyone up."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from raysys import cluster
from raysys.files import free_port

ROOT = Path(__file__).resolve().parents[1]


class FakeRay:
    """`ray.init` / `ray.is_initialized` as init_ray calls them, recorded."""

    def __init__(self, initialized: bool = False) -> None:
        self.initialized = initialized
        self.calls: list[dict] = []

    def is_initialized(self) -> bool:
        return self.initialized

    def init(self, **kwargs) -> None:
        self.calls.append(kwargs)


@pytest.fixture
def fake_ray(monkeypatch):
    import ray

    fake = FakeRay()
    monkeypatch.setattr(ray, "is_initialized", fake.is_initialized)
    monkeypatch.setattr(ray, "init", fake.init)
    return fake


def test_ray_address_is_joined_without_local_settings(fake_ray, monkeypatch) -> None:
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")
    assert cluster.init_ray(num_cpus=2, include_dashboard=True, log_to_driver=False) is True
    assert fake_ray.calls == [{"address": "10.0.0.5:6379", "log_to_driver": False, "configure_logging": True}]


def test_local_starts_its_own_even_with_a_live_record(fake_ray, monkeypatch) -> None:
    monkeypatch.setenv("RAY_ADDRESS", "local")
    monkeypatch.setattr(cluster, "_recorded_address", lambda: pytest.fail("a record must not be read"))
    cluster.init_ray(num_cpus=2)
    assert fake_ray.calls[0]["address"] == "local" and fake_ray.calls[0]["num_cpus"] == 2


def test_a_live_record_is_joined(fake_ray, monkeypatch) -> None:
    monkeypatch.delenv("RAY_ADDRESS")
    with socket.create_server(("127.0.0.1", 0)) as server:  # something that accepts connections
        address = f"127.0.0.1:{server.getsockname()[1]}"
        monkeypatch.setattr(cluster, "_recorded_address", lambda: address)
        cluster.init_ray(num_cpus=2)
    assert fake_ray.calls == [{"address": address, "log_to_driver": True, "configure_logging": True}]


def test_a_stale_record_is_skipped_with_a_warning(fake_ray, monkeypatch, capsys) -> None:
    monkeypatch.delenv("RAY_ADDRESS")
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    monkeypatch.setattr(cluster, "_recorded_address", lambda: address)
    cluster.init_ray(num_cpus=2, include_dashboard=False)
    assert fake_ray.calls == [
        {
            "address": "local",
            "log_to_driver": True,
            "configure_logging": True,
            "num_cpus": 2,
            "include_dashboard": False,
        }
    ]
    assert f"recorded at {address} does not answer" in capsys.readouterr().err


def test_no_record_starts_a_local_instance(fake_ray, monkeypatch) -> None:
    monkeypatch.delenv("RAY_ADDRESS")
    monkeypatch.setattr(cluster, "_recorded_address", lambda: None)
    assert cluster.init_ray(num_cpus=1) is True and fake_ray.calls[0]["address"] == "local"


def test_an_initialised_ray_is_left_alone(monkeypatch) -> None:
    import ray

    fake = FakeRay(initialized=True)
    monkeypatch.setattr(ray, "is_initialized", fake.is_initialized)
    monkeypatch.setattr(ray, "init", fake.init)
    assert cluster.init_ray() is False and fake.calls == []


@pytest.mark.slow
def test_a_real_stale_record_does_not_hold_ray_up() -> None:
    """A `ray_current_cluster` left by a head that died (plain `ray.init()` waits minutes on it): a real
    local instance starts, in a temp dir of its own."""
    temp = Path(tempfile.mkdtemp(prefix="rs-", dir="/tmp"))  # short: Ray's socket paths live under it
    (temp / "ray").mkdir()
    (temp / "ray" / "ray_current_cluster").write_text(f"127.0.0.1:{free_port()}")
    env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    env["RAY_TMPDIR"] = str(temp)
    script = (
        "import ray\nfrom raysys.cluster import init_ray\n"
        "init_ray(num_cpus=1, include_dashboard=False, log_to_driver=False)\n"
        "print('cpus', ray.cluster_resources()['CPU'])\nray.shutdown()\n"
    )
    try:
        done = subprocess.run(
            [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
        )
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "cpus 1.0" in done.stdout
    assert "does not answer" in done.stderr
