"""Benchmark `raysys serve` over HTTP: Serve's default Python proxy and the shipped HAProxy ingress, side by side.

    python jobs/bench/serving.py                                    # both modes, 1682 items: about 6 min
    python jobs/bench/serving.py --duration 8 --rates 100,200,400,600 --connections 16,32 --out runs/bench_quick
    python jobs/bench/serving.py --model runs/x/export/student --modes haproxy --set serve.batching=false

Needs `wrk` and `taskset` (`make wrk` installs Debian's wrk; taskset comes with util-linux). Without --model a randomly
initialised student over --items items is exported once into OUT/models (latency depends on the catalog
size and the model shape, not on what the weights learned: raysys.bench.model_dirs).

Each mode in --modes (default proxy, then haproxy) is one `raysys serve ... serve.ingress=MODE
serve.access_log=false` subprocess with its own local Ray cluster, stopped with Ctrl-C (SIGINT) before
the next starts. Every request is `POST /recommend {"history": [3 item ids], "k": 10}`; 1,000 distinct
bodies drawn from the catalog are cycled (bodies.txt). The client (wrk) is pinned to one CPU with
taskset (--client-cpu, default the last one); the server is not pinned, so on a small machine both
share that CPU, as they would on a single host. Per mode:

1. closed loop, for the maximum: after a 3 s warm-up, `wrk -t2 -cN --latency` for N in --connections
   (16, 32, 64) with serving_post.lua, which counts status codes; req/s, p50/p90/p99 (wrk's latency,
   from the actual send), status codes and socket errors per point. The mode's maximum is the best
   *clean* point: every answer 2xx and no socket error (the raw best is reported too).
2. paced ladder, for latency at a given load: serving_paced.lua sends --rates req/s (ascending) on a
   fixed schedule over --paced-connections connections (one per wrk thread), latency counted from each
   request's scheduled send time, so waiting for a busy connection counts (no coordinated omission).
   A point is *sustained* when every answer is 2xx, achieved >= 95 % of offered and p99 <= 250 ms;
   the ladder stops after the first point that is not.
3. the in-process floor: ServingModel.predict alone on the same 3-item histories (one torch thread, as a
   replica): latency of one query, and queries/s in batches of 32. No HTTP, Serve or live store.

Every point records the 1-minute load average at its end; the run records it at start and end, the CPU
count, the wrk version and the client CPU: other work on the machine skews every figure.

Targets (reported, not enforced; on the 2-core machine with the client on the same cores):
  (a) shipped-mode (haproxy) maximum >= 8 x the default proxy's maximum, in the same run;
  (b) `wrk -t2 -c32` against haproxy: >= 600 req/s, p99 <= 100 ms, zero non-2xx (nor socket errors);
  (c) paced 400 req/s against haproxy: sustained with p99 <= 50 ms (from the scheduled send time).

Writes OUT/bench_serve.json (settings, machine, modes.{proxy,haproxy}.{closed_loop, paced, max_rps},
floor, ratios, targets, load averages) and OUT/bench_serve.md; each server's output is in OUT/serve-MODE/.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from raysys.config import ServeConfig, StudentConfig
from raysys.files import free_port, write_json_atomic
from raysys.run import utc_now

HERE = Path(__file__).resolve().parent
POST_SCRIPT = HERE / "serving_post.lua"
PACED_SCRIPT = HERE / "serving_paced.lua"
SHIPPED, DEFAULT = "haproxy", "proxy"
NUM_USERS = 2000
MODEL = StudentConfig(hidden_size=64, num_layers=2, num_heads=2, dropout=0.0)  # the default student shape
MAX_LEN = 50
HISTORY_ITEMS, K, NUM_BODIES = 3, 10, 1000
WARMUP_S, PAUSE_S = 3, 2.0  # warm-up before the closed loop; settling time between points
WRK_TIMEOUT = "10s"  # serve.request_timeout_s: slower answers are the server's timeouts, not wrk's
READY_TIMEOUT_S, STOP_TIMEOUT_S = 180.0, 60.0
SUSTAINED_SHARE, SUSTAINED_P99_MS = 0.95, 250.0  # above 250 ms the queue is growing within the point
TARGET_RATIO = 8.0  # (a)
TARGET_CONNECTIONS, TARGET_RPS, TARGET_CLOSED_P99_MS = 32, 600.0, 100.0  # (b)
TARGET_RATE, TARGET_PACED_P99_MS = 400.0, 50.0  # (c)


class BenchError(RuntimeError):
    """A benchmark step that cannot go on (server not ready, wrk failed); main prints it and exits."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="model directory to serve (default: a random student over --items items)")
    parser.add_argument("--items", type=int, default=1682, help="catalog size of the random student (ml-100k: 1682)")
    parser.add_argument("--modes", type=csv, default=f"{DEFAULT},{SHIPPED}", help="ingress modes, in this order")
    parser.add_argument("--connections", type=int_list, default="16,32,64", help="closed-loop wrk connection counts")
    parser.add_argument("--threads", type=int, default=2, help="closed-loop wrk threads")
    parser.add_argument("--rates", type=rate_list, default="100,200,300,400,500,600,800", help="paced req/s")
    parser.add_argument("--paced-connections", type=int, default=16, help="paced connections (one per wrk thread)")
    parser.add_argument("--duration", type=int, default=15, help="seconds per point (wrk takes whole seconds)")
    parser.add_argument(
        "--replicas", type=int, default=ServeConfig().num_replicas, help="serve.num_replicas (default: the shipped one)"
    )
    parser.add_argument("--client-cpu", type=int, default=(os.cpu_count() or 1) - 1, help="CPU wrk is pinned to")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="dotted override for both servers, e.g. --set serve.batching=false (repeatable)",
    )
    parser.add_argument("--out", default="runs/bench_serve")
    args = parser.parse_args(argv)
    check_args(parser, args)
    return args


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Reject what would make the run meaningless before any server starts."""
    for override in args.overrides:
        key = override.split("=", 1)[0]
        if "=" not in override:
            parser.error(f"--set {override}: expected KEY=VALUE, e.g. serve.batching=false")
        if key in ("serve.ingress", "serve.num_replicas", "serve.port"):
            parser.error(f"--set {key}: set by the benchmark (use --modes / --replicas)")
    unknown = set(args.modes) - {DEFAULT, SHIPPED}
    if unknown:
        parser.error(f"--modes: unknown {sorted(unknown)}; choose from {DEFAULT},{SHIPPED}")


def csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def int_list(text: str) -> list[int]:
    return [int(part) for part in csv(text)]


def rate_list(text: str) -> list[float]:
    """Ascending: the ladder climbs."""
    return sorted(float(part) for part in csv(text))


def require_tools() -> str:
    """wrk's version string; exits with an install hint when wrk or taskset is missing."""
    missing = [tool for tool in ("wrk", "taskset") if shutil.which(tool) is None]
    if missing:
        sys.exit(f"serving.py needs {' and '.join(missing)}: apt-get install wrk (taskset is in util-linux)")
    banner = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout
    match = re.search(r"wrk (\S+)", banner)
    return match.group(1) if match else banner.strip()


# ------------------------------------------------------------------------------------ model and bodies


def model_dir(args: argparse.Namespace, out: Path) -> Path:
    """--model, or a random student over --items items exported once into OUT/models (reused)."""
    if args.model:
        return Path(args.model).expanduser().resolve()
    from raysys.bench.model_dirs import random_model_dir
    from raysys.models.export import CONFIG_FILE

    path = (out / "models" / f"items-{args.items}").resolve()
    if not (path / CONFIG_FILE).is_file():
        version = f"random-{args.items}"
        random_model_dir(
            path, num_items=args.items, num_users=NUM_USERS, model_cfg=MODEL, max_len=MAX_LEN, model_version=version
        )
    return path


def catalog_ids(path: Path) -> list[str]:
    """The model's item ids (pad and mask, the first two, left out)."""
    from raysys.data.dataset import FIRST_ITEM_INDEX
    from raysys.models.export import load_model_dir

    return load_model_dir(path).item_ids[FIRST_ITEM_INDEX:]


def request_histories(ids: list[str], count: int = NUM_BODIES, seed: int = 0) -> list[list[str]]:
    """`count` distinct histories of HISTORY_ITEMS distinct catalog ids (fewer if the catalog is tiny)."""
    if len(ids) < HISTORY_ITEMS:
        raise BenchError(f"the catalog has {len(ids)} items; a request history needs {HISTORY_ITEMS}")
    rng = random.Random(seed)
    seen: dict[tuple[str, ...], None] = {}
    for _ in range(20 * count):
        seen.setdefault(tuple(rng.sample(ids, HISTORY_ITEMS)), None)
        if len(seen) == count:
            break
    return [list(history) for history in seen]


def write_bodies(histories: list[list[str]], path: Path) -> Path:
    """One JSON request body per line: what both Lua scripts read in init()."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"history": h, "k": K}) + "\n" for h in histories))
    return path


# ------------------------------------------------------------------------------------ the server


@contextlib.contextmanager
def served(mode: str, model: Path, run_dir: Path, replicas: int, overrides: list[str]) -> Iterator[tuple[str, int]]:
    """`raysys serve` with ingress `mode` in its own process and Ray cluster; yields its URL and pid
    once /healthz answers 200, and stops it with SIGINT (as Ctrl-C) on the way out."""
    port = free_port()
    cmd = [
        *[sys.executable, "-m", "raysys.cli", "serve", "--model", str(model), "--out", str(run_dir)],
        *["--port", str(port), f"serve.ingress={mode}", "serve.access_log=false", f"serve.num_replicas={replicas}"],
        *overrides,
    ]
    env = {**os.environ, "RAY_ADDRESS": "local"}  # never someone else's cluster (raysys.cluster)
    run_dir.mkdir(parents=True, exist_ok=True)
    log = run_dir / "serve.out"
    with log.open("w") as sink:
        process = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, process, log)
        yield url, process.pid
    finally:
        stop_server(process)


def wait_ready(url: str, process: subprocess.Popen, log: Path) -> None:
    start = time.monotonic()
    while time.monotonic() - start < READY_TIMEOUT_S:
        if process.poll() is not None:
            raise BenchError(f"raysys serve exited with code {process.returncode}; see {log}:\n{tail(log)}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                print(f"  ready at {url} after {time.monotonic() - start:.0f} s", flush=True)
                return
        time.sleep(1.0)
    raise BenchError(f"{url}/healthz did not answer 200 within {READY_TIMEOUT_S:.0f} s; see {log}:\n{tail(log)}")


def stop_server(process: subprocess.Popen) -> None:
    """SIGINT (a clean stop: Serve and Ray shut down), then the process group if it hangs."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
    try:
        process.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        print(f"  raysys serve did not stop within {STOP_TIMEOUT_S:.0f} s: killing its process group", flush=True)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def tail(path: Path, lines: int = 20) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


# ------------------------------------------------------------------------------------ wrk


def run_wrk(
    url: str,
    script: Path,
    threads: int,
    connections: int,
    duration: int,
    script_args: list[str],
    cpu: int,
    path: str = "/recommend",
) -> dict[str, Any]:
    """Run wrk pinned to `cpu` against POST URL+path; the figures its script's done() printed."""
    cmd = [
        *["taskset", "-c", str(cpu), "wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s"],
        *["--latency", "--timeout", WRK_TIMEOUT, "-s", str(script), f"{url}{path}", "--", *script_args],
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60)
    if done.returncode != 0:
        raise BenchError(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return parse_wrk(done.stdout)


def parse_wrk(text: str) -> dict[str, Any]:
    """wrk's output -> the JSON of the script's `RAYSYS_WRK {...}` line, plus `wrk_rps` (wrk's own
    Requests/sec line), `non_2xx` and `socket_errors` (connect + read + write + timeout)."""
    line = next((ln for ln in text.splitlines() if ln.startswith("RAYSYS_WRK ")), None)
    if line is None:
        raise BenchError(f"no RAYSYS_WRK line in wrk's output:\n{text[-2000:]}")
    figures = json.loads(line.removeprefix("RAYSYS_WRK "))
    rate = re.search(r"^Requests/sec:\s+([\d.]+)", text, re.MULTILINE)
    figures["wrk_rps"] = float(rate.group(1)) if rate else None
    figures["non_2xx"] = sum(n for code, n in figures["statuses"].items() if not code.startswith("2"))
    figures["socket_errors"] = sum(figures["errors"][kind] for kind in ("connect", "read", "write", "timeout"))
    return figures


def load_1min() -> float:
    return round(os.getloadavg()[0], 2)


def load_avgs() -> list[float]:
    """The 1, 5 and 15-minute load averages."""
    return [round(x, 2) for x in os.getloadavg()]


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


# ------------------------------------------------------------------------------------ closed loop


def closed_loop(url: str, bodies: Path, args: argparse.Namespace, server_pid: int) -> list[dict[str, Any]]:
    """wrk -t{threads} -cN for each N in --connections, after a warm-up; one point per N, each with
    the server's CPU per request by process role (the per-request CPU profile)."""
    run_wrk(url, POST_SCRIPT, args.threads, args.connections[0], WARMUP_S, [str(bodies)], args.client_cpu)
    points = []
    for n in args.connections:
        time.sleep(PAUSE_S)
        before = cpu_by_role(server_pid)
        raw = run_wrk(url, POST_SCRIPT, args.threads, n, args.duration, [str(bodies)], args.client_cpu)
        point = closed_point(n, raw)
        point["cpu_ms_per_request"] = cpu_per_request(before, cpu_by_role(server_pid), raw["requests"])
        print(
            f"    closed -c{n:<3} {point['rps']:>7.1f} req/s  p50 {point['p50_ms']}  p90 {point['p90_ms']}  "
            f"p99 {point['p99_ms']} ms  statuses {point['statuses']}  socket errors {point['socket_errors']}  "
            f"load {point['load_avg_1min']}",
            flush=True,
        )
        points.append(point)
    return points


ROLES = {  # process title fragment -> role, first match wins
    "ServeReplica": "replica",
    "LiveStore": "live store",
    "ProxyActor": "serve proxy",
    "HAProxyMan": "haproxy manager",
    "ServeController": "serve controller",
    "raylet": "raylet",
    "gcs_server": "gcs",
}


def cpu_by_role(root_pid: int) -> dict[str, float]:
    """CPU seconds used so far by the server's process tree (raysys serve and its Ray cluster), by role."""
    import psutil

    totals: dict[str, float] = {}
    root = psutil.Process(root_pid)
    for process in [root, *root.children(recursive=True)]:
        try:
            title = " ".join(process.cmdline()) or process.name()
            role = "haproxy" if process.name() == "haproxy" else "other"
            role = next((r for fragment, r in ROLES.items() if fragment in title), role)
            times = process.cpu_times()
            totals[role] = totals.get(role, 0.0) + times.user + times.system
        except psutil.Error:
            pass  # exited meanwhile
    return totals


def cpu_per_request(before: dict[str, float], after: dict[str, float], requests: int) -> dict[str, float]:
    """Milliseconds of CPU per answered request, by role, and their total."""
    per = {role: 1000 * (after[role] - before.get(role, 0.0)) / max(requests, 1) for role in after}
    per = {role: round(ms, 3) for role, ms in sorted(per.items(), key=lambda kv: -kv[1]) if ms > 0.0005}
    return {**per, "total": round(sum(per.values()), 3)}


def closed_point(connections: int, raw: dict[str, Any]) -> dict[str, Any]:
    """One closed-loop point from parse_wrk's figures."""
    latency = raw["latency_ms"]
    return {
        "connections": connections,
        "threads": raw["threads"],
        "duration_s": round(raw["duration_s"], 2),
        "requests": raw["requests"],
        "rps": raw["wrk_rps"] if raw["wrk_rps"] is not None else round(raw["requests_per_s"], 2),
        **{f"{p}_ms": _ms(latency[p]) for p in ("p50", "p90", "p99", "max")},
        "statuses": raw["statuses"],
        "non_2xx": raw["non_2xx"],
        "socket_errors": raw["socket_errors"],
        "errors": raw["errors"],
        "clean": raw["non_2xx"] == 0 and raw["socket_errors"] == 0 and raw["requests"] > 0,
        "load_avg_1min": load_1min(),
    }


def max_rps(points: list[dict[str, Any]]) -> dict[str, Any]:
    """The mode's maximum: the best clean closed-loop point (all 2xx, no socket error), and the raw best."""
    clean = [p for p in points if p["clean"]]
    best = max(clean, key=lambda p: p["rps"], default=None)
    raw = max(points, key=lambda p: p["rps"], default=None)
    return {
        "rps": best["rps"] if best else 0.0,
        "connections": best["connections"] if best else None,
        "raw_rps": raw["rps"] if raw else 0.0,
        "raw_connections": raw["connections"] if raw else None,
    }


# ------------------------------------------------------------------------------------ paced ladder


def paced_ladder(url: str, bodies: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    """--rates in ascending order until the first point that is not sustained (reported too)."""
    c = args.paced_connections
    points = []
    for rate in args.rates:
        time.sleep(PAUSE_S)
        raw = run_wrk(url, PACED_SCRIPT, c, c, args.duration, [str(bodies), f"{rate:g}", str(c)], args.client_cpu)
        point = paced_point(rate, c, raw)
        print(
            f"    paced {rate:>5.0f} req/s: sent {point['sent_rps']}  achieved {point['achieved_rps']}  "
            f"p50 {point['p50_ms']}  p95 {point['p95_ms']}  p99 {point['p99_ms']} ms  statuses {point['statuses']}  "
            f"socket errors {point['socket_errors']}  load {point['load_avg_1min']}"
            f"{'' if point['sustained'] else '  (not sustained: ladder stops)'}",
            flush=True,
        )
        points.append(point)
        if not point["sustained"]:
            break
    return points


def paced_point(rate: float, connections: int, raw: dict[str, Any]) -> dict[str, Any]:
    """One ladder point from parse_wrk's figures (latency from the scheduled send time)."""
    paced = raw["paced"]
    point = {
        "offered_rps": rate,
        "connections": connections,
        "duration_s": round(raw["duration_s"], 2),
        "sent": paced["sent"],
        "answered": paced["answered"],
        "sent_rps": round(paced["sent_rps"], 1),
        "achieved_rps": round(paced["achieved_rps"], 1),
        **{f"{p}_ms": _ms(paced.get(f"{p}_ms")) for p in ("p50", "p95", "p99", "max")},
        "statuses": raw["statuses"],
        "non_2xx": raw["non_2xx"],
        "socket_errors": raw["socket_errors"],
        "errors": raw["errors"],
        "load_avg_1min": load_1min(),
    }
    point["sustained"] = is_sustained(point)
    return point


def is_sustained(point: dict[str, Any]) -> bool:
    """Every answer 2xx (no socket error either), achieved >= 95 % of offered, p99 <= 250 ms."""
    return (
        point["non_2xx"] == 0
        and point["socket_errors"] == 0
        and point["achieved_rps"] >= SUSTAINED_SHARE * point["offered_rps"]
        and point["p99_ms"] is not None
        and point["p99_ms"] <= SUSTAINED_P99_MS
    )


# ------------------------------------------------------------------------------------ in-process floor


def in_process_floor(model: Path, histories: list[list[str]], int8: bool = False, calls: int = 320) -> dict[str, Any]:
    """ServingModel.predict alone on the request histories: latency of one query, queries/s in batches of 32."""
    import torch

    from raysys.serve.scoring import Query, ServingModel

    torch.set_num_threads(1)  # as in a replica
    serving = ServingModel.load(str(model), int8=int8)
    queries = [Query(histories[i % len(histories)], K) for i in range(calls)]
    serving.predict(queries[:32])  # warm-up
    single = []
    for query in queries:
        start = time.perf_counter()
        serving.predict([query])
        single.append(1000 * (time.perf_counter() - start))
    start = time.perf_counter()
    for i in range(0, calls, 32):
        serving.predict(queries[i : i + 32])
    batched_qps = calls / (time.perf_counter() - start)
    p50, p99 = np.percentile(single, [50, 99]).tolist()
    return {
        "int8": int8,
        "single_p50_ms": round(p50, 3),
        "single_p99_ms": round(p99, 3),
        "single_qps": round(1000 / p50, 1),
        "batch32_qps": round(batched_qps, 1),
    }


def int8_override(overrides: list[str]) -> bool:
    """Whether --set serve.int8=true: the floor then runs the same quantised model the replicas serve."""
    values = dict(o.split("=", 1) for o in overrides)
    return values.get("serve.int8", "false").strip().lower() in ("true", "1", "yes")


# ------------------------------------------------------------------------------------ ratios and targets


def ratios(modes: dict[str, dict[str, Any]], floor: dict[str, Any]) -> dict[str, Any]:
    """haproxy / proxy: the maxima and the closed-loop req/s at each connection count; each mode's
    maximum as a share of the in-process batch-32 floor."""
    out: dict[str, Any] = {
        "max_rps_over_floor_batch32": {m: _ratio(r["max_rps"]["rps"], floor["batch32_qps"]) for m, r in modes.items()}
    }
    if SHIPPED in modes and DEFAULT in modes:
        shipped, default = modes[SHIPPED], modes[DEFAULT]
        out["ratio_max_rps"] = _ratio(shipped["max_rps"]["rps"], default["max_rps"]["rps"])
        out["ratio_raw_max_rps"] = _ratio(shipped["max_rps"]["raw_rps"], default["max_rps"]["raw_rps"])
        default_by_n = {p["connections"]: p["rps"] for p in default["closed_loop"]}
        out["ratio_by_connections"] = {
            str(p["connections"]): _ratio(p["rps"], default_by_n.get(p["connections"])) for p in shipped["closed_loop"]
        }
    return out


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a is not None and b else None


def targets(modes: dict[str, dict[str, Any]], ratio: dict[str, Any]) -> dict[str, Any]:
    """The three targets, each with its figures and `met` (False when not measured in this run)."""
    shipped = modes.get(SHIPPED, {"closed_loop": [], "paced": []})
    return {
        "a_max_rps_ratio": ratio_target(ratio.get("ratio_max_rps")),
        "b_closed_c32": closed_target(shipped["closed_loop"]),
        "c_paced_400": paced_target(shipped["paced"]),
    }


def ratio_target(value: float | None) -> dict[str, Any]:
    """(a) haproxy's maximum over the proxy's."""
    met = value is not None and value >= TARGET_RATIO
    return {"target": f"{SHIPPED} max req/s >= {TARGET_RATIO:g} x {DEFAULT} max req/s", "value": value, "met": met}


def closed_target(points: list[dict[str, Any]]) -> dict[str, Any]:
    """(b) the shipped mode's closed-loop point at TARGET_CONNECTIONS."""
    point = next((p for p in points if p["connections"] == TARGET_CONNECTIONS), None)
    target = (
        f"wrk -t2 -c{TARGET_CONNECTIONS}: >= {TARGET_RPS:g} req/s, p99 <= {TARGET_CLOSED_P99_MS:g} ms, "
        "zero non-2xx and socket errors"
    )
    if point is None:
        return {"target": target, "met": False}
    met = (
        point["rps"] >= TARGET_RPS
        and point["p99_ms"] is not None
        and point["p99_ms"] <= TARGET_CLOSED_P99_MS
        and point["clean"]
    )
    return {"target": target, **{k: point[k] for k in ("rps", "p99_ms", "non_2xx", "socket_errors")}, "met": met}


def paced_target(points: list[dict[str, Any]]) -> dict[str, Any]:
    """(c) the shipped mode's ladder point at TARGET_RATE."""
    point = next((p for p in points if p["offered_rps"] == TARGET_RATE), None)
    target = f"paced {TARGET_RATE:g} req/s: sustained, p99 <= {TARGET_PACED_P99_MS:g} ms from the scheduled send"
    if point is None:
        return {"target": target, "met": False}
    met = point["sustained"] and point["p99_ms"] <= TARGET_PACED_P99_MS
    return {"target": target, **{k: point[k] for k in ("achieved_rps", "p99_ms", "sustained")}, "met": met}


# ------------------------------------------------------------------------------------ report


def markdown(results: dict[str, Any]) -> str:
    """bench_serve.md: the closed-loop and paced tables, maxima, ratios, floor, targets, load."""
    s = results["settings"]
    lines = [
        f"Serving benchmark {results['started_at']}: {s['items']} items, {s['replicas']} replica(s), "
        f"{results['machine']['cpus']} CPUs, wrk {results['machine']['wrk']} pinned to CPU {s['client_cpu']}, "
        f"{s['duration_s']} s per point",
        "",
        "| mode | connections | req/s | p50 ms | p90 ms | p99 ms | statuses | socket errors | load |",
        "|---|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for mode, run in results["modes"].items():
        for p in run["closed_loop"]:
            lines.append(
                f"| {mode} | {p['connections']} | {p['rps']:.1f} | {p['p50_ms']} | {p['p90_ms']} | {p['p99_ms']} "
                f"| {_statuses(p)} | {p['socket_errors']} | {p['load_avg_1min']} |"
            )
    lines += [
        "",
        "| mode | offered req/s | sent | achieved | p50 ms | p95 ms | p99 ms | statuses | sustained | load |",
        "|---|---:|---:|---:|---:|---:|---:|---|:---:|---:|",
    ]
    for mode, run in results["modes"].items():
        for p in run["paced"]:
            lines.append(
                f"| {mode} | {p['offered_rps']:g} | {p['sent_rps']} | {p['achieved_rps']} | {p['p50_ms']} "
                f"| {p['p95_ms']} | {p['p99_ms']} | {_statuses(p)} | {'yes' if p['sustained'] else 'no'} "
                f"| {p['load_avg_1min']} |"
            )
    lines += ["", "server CPU per request (ms, by process role, closed loop):"]
    for mode, run in results["modes"].items():
        for p in run["closed_loop"]:
            lines.append(f"- {mode} -c{p['connections']}: {json.dumps(p.get('cpu_ms_per_request'))}")
    return "\n".join(lines + ["", *summary_lines(results)]) + "\n"


def _statuses(point: dict[str, Any]) -> str:
    return ", ".join(f"{code}: {n}" for code, n in sorted(point["statuses"].items())) or "-"


def summary_lines(results: dict[str, Any]) -> list[str]:
    maxima = ", ".join(
        f"{mode} {run['max_rps']['rps']:.1f} (raw {run['max_rps']['raw_rps']:.1f})"
        for mode, run in results["modes"].items()
    )
    floor = results["floor"]
    return [
        f"max req/s (clean closed-loop point): {maxima}",
        ratio_line(results["ratios"]),
        f"in-process floor ({'int8' if floor['int8'] else 'fp32'}): one query p50 {floor['single_p50_ms']} ms, "
        f"p99 {floor['single_p99_ms']} ms; {floor['batch32_qps']} queries/s in batches of 32",
        "targets:",
        *(target_line(name, t) for name, t in results["targets"].items()),
        f"load average (1, 5, 15 min): at start {results['load_avg_at_start']}, at end {results['load_avg_at_end']}",
    ]


def target_line(name: str, target: dict[str, Any]) -> str:
    figures = ", ".join(f"{k} {v}" for k, v in target.items() if k not in ("target", "met")) or "not measured"
    return f"- {name} ({target['target']}): {'met' if target['met'] else 'NOT met'} ({figures})"


def ratio_line(ratio: dict[str, Any]) -> str:
    floor = ", ".join(f"{mode} {r}" for mode, r in ratio["max_rps_over_floor_batch32"].items())
    line = f"max req/s over the in-process batch-32 floor: {floor}"
    if "ratio_max_rps" not in ratio:
        return line
    by_n = ", ".join(f"c{n} {r}" for n, r in ratio["ratio_by_connections"].items())
    return (
        f"{SHIPPED} / {DEFAULT}: max req/s {ratio['ratio_max_rps']} (raw {ratio['ratio_raw_max_rps']}), "
        f"by connections {by_n}; {line}"
    )


# ------------------------------------------------------------------------------------ driver


def bench_mode(mode: str, model: Path, bodies: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Start `raysys serve` in `mode`, run the closed loop then the paced ladder, stop it."""
    start = time.monotonic()
    print(f"{mode}: starting raysys serve serve.ingress={mode}", flush=True)
    with served(mode, model, Path(args.out) / f"serve-{mode}", args.replicas, args.overrides) as (url, pid):
        closed = closed_loop(url, bodies, args, pid)
        paced = paced_ladder(url, bodies, args)
    run = {"closed_loop": closed, "paced": paced, "max_rps": max_rps(closed)}
    run["wall_s"] = round(time.monotonic() - start, 1)
    print(f"{mode}: max {run['max_rps']['rps']:.1f} req/s; {run['wall_s']} s", flush=True)
    return run


def settings(args: argparse.Namespace, model: Path, items: int) -> dict[str, Any]:
    return {
        "model_dir": str(model),
        "items": items,
        "random_model": None if args.model else MODEL.model_dump(),
        "replicas": args.replicas,
        "overrides": args.overrides,
        "modes": args.modes,
        "connections": args.connections,
        "threads": args.threads,
        "rates": args.rates,
        "paced_connections": args.paced_connections,
        "duration_s": args.duration,
        "warmup_s": WARMUP_S,
        "client_cpu": args.client_cpu,
        "request": f'POST /recommend {{"history": [{HISTORY_ITEMS} random catalog ids], "k": {K}}}',
        "sustained": f"all 2xx, achieved >= {SUSTAINED_SHARE:.0%} of offered, p99 <= {SUSTAINED_P99_MS:g} ms",
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    wrk_version = require_tools()
    out = Path(args.out)
    start = time.monotonic()
    results: dict[str, Any] = {"started_at": utc_now(), "load_avg_at_start": load_avgs()}
    model = model_dir(args, out)
    ids = catalog_ids(model)
    histories = request_histories(ids)
    bodies = write_bodies(histories, out / "bodies.txt")
    results["settings"] = settings(args, model, len(ids))
    results["machine"] = {"cpus": os.cpu_count(), "platform": platform.platform(), "wrk": wrk_version}
    results["floor"] = in_process_floor(model, histories, int8=int8_override(args.overrides))
    print(f"in-process floor: {results['floor']}", flush=True)
    results["modes"] = {mode: bench_mode(mode, model, bodies, args) for mode in args.modes}
    results["ratios"] = ratios(results["modes"], results["floor"])
    results["targets"] = targets(results["modes"], results["ratios"])
    results["load_avg_at_end"] = load_avgs()
    results["wall_s"] = round(time.monotonic() - start, 1)
    return results


def main() -> None:
    args = parse_args()
    try:
        results = run(args)
    except BenchError as exc:
        sys.exit(f"serving.py: {exc}")
    out = Path(args.out)
    write_json_atomic(out / "bench_serve.json", results)
    (out / "bench_serve.md").write_text(markdown(results))
    print(markdown(results))
    print(f"wrote {out / 'bench_serve.json'} and {out / 'bench_serve.md'} ({results['wall_s']} s)")


if __name__ == "__main__":
    main()
