"""Benchmark the Serve endpoint: latency percentiles and the highest sustained request rate.

    python jobs/bench/serving.py --out runs/bench_serve                        # 1.7 k, 10 k, 100 k items
    python jobs/bench/serving.py --catalogs 10000 --rates 200,400,600 --duration 5 --out runs/bench_10k

For each catalog size a randomly initialised student is exported once (latency does not depend on
what the weights learned; raysys.bench.model_dirs). One local Serve application serves them in turn:
switching catalog or batching is a hot reload (user_config), exactly what production does.

At each offered rate an open-loop generator (asyncio + httpx on 127.0.0.1, one process) sends
`POST /recommend {"user_id": <random user>, "k": 10}` on a fixed schedule for --duration seconds, so
queueing shows up in the latency instead of slowing the sender. A rate is *sustained* when every
request answered 200, the achieved rate is at least 95 % of the offered one and p99 stays
within 250 ms (beyond that the queue grows during the run). Rates are tried in
ascending order until one is not sustained. Two floors: the same model called in-process
(ServingModel.predict, fp32 and int8) without Serve, HTTP or the live store, and the same ladder on
`GET /healthz`, which is the Serve HTTP path (proxy, replica, generator) without any model work.

Targets (2-core machine, load generator included): p99 <= 50 ms at 200 req/s and >= 400 req/s
sustained at 10 k items. Writes bench_serve.json and bench_serve.md into --out.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from raysys.config import ServeConfig, StudentConfig
from raysys.files import free_port, write_json_atomic
from raysys.run import utc_now

TARGET_P99_MS, TARGET_P99_RATE, TARGET_RATE, TARGET_ITEMS = 50.0, 200, 400, 10_000
SUSTAINED_P99_MS = 250.0  # above it the queue is growing within the run: the rate is not sustainable
NUM_USERS = 2000
MODEL = StudentConfig(hidden_size=64, num_layers=2, num_heads=2, dropout=0.0)  # the default student shape
MAX_LEN = 50
ML100K = Path(__file__).resolve().parents[3] / "shared" / "data" / "ml-100k"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--catalogs", default="1682,10000,100000", help="item counts (ml-100k has 1682)")
    parser.add_argument("--rates", default="50,100,150,200,300,400,600", help="offered requests/s, ascending")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per rate")
    parser.add_argument("--batching", default="on,off", help="on, off or both")
    parser.add_argument("--replicas", type=int, default=1)
    parser.add_argument("--no-access-log", action="store_true", help="turn Serve's per-request log lines off")
    parser.add_argument("--port", type=int, default=0, help="HTTP port (0: a free one)")
    parser.add_argument(
        "--int8-quality",
        action="store_true",
        help="also train a student on ml-100k and compare test NDCG@10 in fp32 and int8",
    )
    parser.add_argument("--ml100k", default=str(ML100K), help="ml-100k in RecBole atomic format")
    parser.add_argument("--epochs", type=int, default=10, help="training epochs for --int8-quality")
    parser.add_argument("--out", default="runs/bench_serve")
    return parser.parse_args()


# ------------------------------------------------------------------------------------ load generator


MAX_IN_FLIGHT = 64  # the client's connection cap: httpx's pool slows down badly with hundreds open


async def offered_load(
    url: str, rate: float, duration: float, users: list[str], seed: int = 0, path: str = "/recommend"
) -> dict[str, Any]:
    """Send `rate` requests/s for `duration` s on a fixed schedule; latency and error figures.

    Latency runs from the scheduled send time, so waiting for one of the MAX_IN_FLIGHT connections
    counts (open loop). `path` "/recommend" posts a random user; "/healthz" is a bodiless GET: the
    same HTTP stack without any model work."""
    rng = random.Random(seed)
    n = int(rate * duration)
    latencies: list[float] = []
    errors: dict[str, int] = {}
    slots = asyncio.Semaphore(MAX_IN_FLIGHT)

    async def one(client: httpx.AsyncClient, body: dict) -> None:
        start = time.perf_counter()
        try:
            async with slots:
                if path == "/healthz":
                    response = await client.get(path)
                else:
                    response = await client.post(path, json=body)
            key = None if response.status_code == 200 else str(response.status_code)
        except httpx.HTTPError as exc:
            key = type(exc).__name__
        if key is None:
            latencies.append(1000 * (time.perf_counter() - start))
        else:
            errors[key] = errors.get(key, 0) + 1

    limits = httpx.Limits(max_connections=MAX_IN_FLIGHT, max_keepalive_connections=MAX_IN_FLIGHT)
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:
        loop = asyncio.get_running_loop()
        start = loop.time()
        tasks = []
        for i in range(n):
            delay = start + i / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(client, {"user_id": rng.choice(users), "k": 10})))
        sent_s = loop.time() - start
        await asyncio.gather(*tasks)
        total_s = loop.time() - start
    return summarize(rate, n, latencies, errors, sent_s, total_s)


def summarize(
    rate: float, n: int, latencies: list[float], errors: dict[str, int], sent_s: float, total_s: float
) -> dict[str, Any]:
    ok = len(latencies)
    achieved = ok / total_s if total_s else 0.0
    p50, p95, p99 = np.percentile(latencies, [50, 95, 99]).tolist() if ok else (None, None, None)
    return {
        "offered_rps": rate,
        "requests": n,
        "ok": ok,
        "errors": errors,
        "achieved_rps": round(achieved, 1),
        "send_rps": round(n / sent_s, 1) if sent_s else None,
        "p50_ms": _round(p50),
        "p95_ms": _round(p95),
        "p99_ms": _round(p99),
        "sustained": not errors and achieved >= 0.95 * rate and ok > 0 and p99 <= SUSTAINED_P99_MS,
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def tree_cpu_s() -> float:
    """CPU seconds used so far by this process and its descendants (the local Ray cluster: GCS,
    raylet, proxy, replicas, live store), the load generator included."""
    import psutil

    me, total = psutil.Process(), 0.0
    for process in [me, *me.children(recursive=True)]:
        try:
            times = process.cpu_times()
            total += times.user + times.system + times.children_user + times.children_system
        except psutil.Error:
            pass  # exited meanwhile
    return total


def rate_ladder(
    url: str, rates: list[float], duration: float, users: list[str], path: str = "/recommend"
) -> list[dict[str, Any]]:
    """Offered rates in ascending order until one is not sustained (that one is reported too).

    Each point also carries the CPU time the whole stack spent per answered request: on a shared
    machine it is steadier than the rates, and 2000 / cpu_ms estimates what 2 idle cores sustain."""
    asyncio.run(offered_load(url, 50, 2.0, users, seed=99, path=path))  # warm-up: connections, first batches
    points = []
    for rate in rates:
        cpu_before = tree_cpu_s()
        point = asyncio.run(offered_load(url, rate, duration, users, seed=int(rate), path=path))
        cpu_ms = 1000 * (tree_cpu_s() - cpu_before) / max(point["ok"], 1)
        point["cpu_ms_per_request"] = round(cpu_ms, 2)
        point["load_avg_1min"] = round(os.getloadavg()[0], 2)
        print(
            f"    {rate:>5.0f} req/s offered: {point['achieved_rps']:>6.1f} achieved, p50 {point['p50_ms']} "
            f"p95 {point['p95_ms']} p99 {point['p99_ms']} ms, errors {point['errors'] or 0}, "
            f"{cpu_ms:.2f} CPU ms/request, load {point['load_avg_1min']}",
            flush=True,
        )
        points.append(point)
        if not point["sustained"]:
            break
    return points


def store_read_means(wait_s: float = 12.0) -> dict[str, float]:
    """Mean live-store read per batch (ms) by model version, from the replicas' Prometheus histogram
    on the Ray metrics endpoint (waits one export interval so the last runs are included)."""
    import re

    import ray

    time.sleep(wait_s)
    port = ray.nodes()[0]["MetricsExportPort"]
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    totals: dict[str, dict[str, float]] = {}
    for line in text.splitlines():
        match = re.match(r'ray_raysys_serve_live_store_read_ms_(sum|count)\{.*model_version="([^"]+)".*\} (\S+)$', line)
        if match:
            kind, version, value = match.groups()
            totals.setdefault(version, {"sum": 0.0, "count": 0.0})[kind] += float(value)
    return {v: round(t["sum"] / t["count"], 3) for v, t in totals.items() if t["count"]}


# ------------------------------------------------------------------------------------ in-process floor


def in_process_floor(model_dir: Path, users: list[str], int8: bool = False, calls: int = 300) -> dict[str, Any]:
    """ServingModel.predict alone: latency of one query, and queries/s in batches of 32."""
    import torch

    from raysys.serve.scoring import Query, ServingModel

    torch.set_num_threads(1)  # as in a replica
    model = ServingModel.load(str(model_dir), int8=int8)
    rng = random.Random(0)
    queries = [Query(model.user_histories.get(rng.choice(users), []), 10) for _ in range(calls)]
    model.predict(queries[:32])  # warm-up
    single = []
    for query in queries:
        start = time.perf_counter()
        model.predict([query])
        single.append(1000 * (time.perf_counter() - start))
    start = time.perf_counter()
    for i in range(0, calls, 32):
        model.predict(queries[i : i + 32])
    batched_qps = calls / (time.perf_counter() - start)
    p50, p99 = np.percentile(single, [50, 99]).tolist()
    return {
        "int8": int8,
        "single_p50_ms": round(p50, 2),
        "single_p99_ms": round(p99, 2),
        "single_qps": round(1000 / p50, 1),
        "batch32_qps": round(batched_qps, 1),
    }


def int8_quality(ml100k: str, epochs: int, root: Path) -> dict[str, Any]:
    """Train the default student on ml-100k (next-item objective), then test NDCG@10 and in-process
    latency of the same weights in fp32 and with dynamic int8 Linear layers."""
    import torch

    from raysys.config import Config, DataConfig, DistillConfig, EvalConfig
    from raysys.data.prepare import load_or_prepare
    from raysys.eval.evaluator import evaluate_split
    from raysys.serve.scoring import quantize_int8
    from raysys.train.local import train_local
    from raysys.train.tasks import task_for

    data = DataConfig(path=ml100k, format="recbole", max_len=MAX_LEN)
    dataset = load_or_prepare(data, progress=False)
    distill = DistillConfig(epochs=epochs, batch_size=256, lr=2e-3, lambda_kd=0.0, lambda_ssl=0.0)  # next item alone
    cfg = Config(data=data, student=StudentConfig(), distill=distill, eval=EvalConfig(ks=[10]))
    result = train_local(cfg, "distill", dataset)
    model = result.model
    model_dir = task_for(cfg, "distill").export(model, root / "ml100k-student", dataset, result.metrics)["model_dir"]
    test, eval_cfg = dataset.split("test"), EvalConfig(ks=[10])
    torch.set_num_threads(1)
    with torch.inference_mode():
        fp32 = evaluate_split(model.eval().next_item_scores, test, dataset.num_items, eval_cfg, MAX_LEN)
        int8 = evaluate_split(quantize_int8(model).next_item_scores, test, dataset.num_items, eval_cfg, MAX_LEN)
    users = [str(u) for u in dataset.user_vocab()["user_id"].to_pylist()]
    return {
        "epochs_trained": len(result.history),
        "test_ndcg@10_fp32": round(fp32["ndcg@10"], 4),
        "test_ndcg@10_int8": round(int8["ndcg@10"], 4),
        "latency_fp32": in_process_floor(model_dir, users, int8=False),
        "latency_int8": in_process_floor(model_dir, users, int8=True),
    }


# ------------------------------------------------------------------------------------ driver


def model_dirs(catalogs: list[int], root: Path) -> dict[int, Path]:
    """One exported random student per catalog size (reused when already there)."""
    from raysys.bench.model_dirs import random_model_dir
    from raysys.models.export import CONFIG_FILE

    out = {}
    for n in catalogs:
        path = root / f"items-{n}"
        if not (path / CONFIG_FILE).is_file():
            random_model_dir(
                path, num_items=n, num_users=NUM_USERS, model_cfg=MODEL, max_len=MAX_LEN, model_version=f"random-{n}"
            )
        out[n] = path
    return out


def main() -> None:
    args = parse_args()
    out = Path(args.out)
    catalogs = [int(float(c)) for c in args.catalogs.split(",")]
    rates = [float(r) for r in args.rates.split(",")]
    batching = {"on": [True], "off": [False], "on,off": [True, False], "both": [True, False]}[args.batching]
    dirs = model_dirs(catalogs, out / "models")
    users = [f"u{u}" for u in range(NUM_USERS)]

    import ray

    from raysys.serve.deploy import deploy, serve_config

    ray.init(log_to_driver=False)
    port = args.port or free_port()
    url = f"http://127.0.0.1:{port}"
    # Production limits (ServeConfig defaults): past capacity the proxy answers 503 at once.
    base = ServeConfig(port=port, num_replicas=args.replicas, access_log=not args.no_access_log)
    results: dict[str, Any] = {
        "started_at": utc_now(),
        "load_avg_at_start": os.getloadavg(),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "settings": {
            "duration_s": args.duration,
            "replicas": args.replicas,
            "access_log": not args.no_access_log,
            "model": MODEL.model_dump(),
            "max_len": MAX_LEN,
            "users": NUM_USERS,
            "request": '{"user_id": <random>, "k": 10}',
        },
        "served": [],
        "floor": [],
    }
    try:
        deploy(serve_config(base, str(dirs[catalogs[0]])))
        print(f"HTTP floor: GET /healthz ({url})", flush=True)
        results["http_floor"] = rate_ladder(url, rates, args.duration, users, path="/healthz")
        for n in catalogs:
            for int8 in (False, True):
                results["floor"].append({"items": n, **in_process_floor(dirs[n], users, int8=int8)})
                print(f"items {n}: in-process floor {results['floor'][-1]}", flush=True)
            for on in batching:
                deploy(serve_config(base.model_copy(update={"batching": on}), str(dirs[n])))
                print(f"  batching {'on' if on else 'off'} ({url})", flush=True)
                points = rate_ladder(url, rates, args.duration, users)
                results["served"].append({"items": n, "batching": on, "points": points})
        results["live_store_read_mean_ms"] = store_read_means()
    finally:
        from ray import serve

        serve.shutdown()
        ray.shutdown()
    results["load_avg_at_end"] = os.getloadavg()  # other work on the machine skews every figure
    results["targets"] = check_targets(results["served"])
    if args.int8_quality:
        results["int8_quality"] = int8_quality(args.ml100k, args.epochs, out / "models")
    write_json_atomic(out / "bench_serve.json", results)
    (out / "bench_serve.md").write_text(markdown(results))
    print(markdown(results))


def check_targets(served: list[dict[str, Any]]) -> dict[str, Any]:
    """The two targets, at 10 k items with batching on (None when that configuration was not run)."""
    runs = [r for r in served if r["items"] == TARGET_ITEMS and r["batching"]]
    if not runs:
        return {"p99_ms_at_200": None, "p99_target_met": False, "max_sustained_rps": None, "rate_target_met": False}
    points = runs[0]["points"]
    at_200 = next((p for p in points if p["offered_rps"] == TARGET_P99_RATE), None)
    best = max((p["offered_rps"] for p in points if p["sustained"]), default=0)
    return {
        "p99_ms_at_200": at_200 and at_200["p99_ms"],
        "p99_target_met": bool(at_200 and at_200["sustained"] and at_200["p99_ms"] <= TARGET_P99_MS),
        "max_sustained_rps": best,
        "rate_target_met": best >= TARGET_RATE,
    }


def markdown(results: dict[str, Any]) -> str:
    header = (
        "| items | batching | max sustained req/s | p50 / p95 / p99 ms at 200 req/s | at max: p99 ms | CPU ms/req |"
    )
    lines = [header, "|---:|:---:|---:|---|---:|---:|"]
    for run in results["served"]:
        sustained = [p for p in run["points"] if p["sustained"]]
        best = max(sustained, key=lambda p: p["offered_rps"]) if sustained else None
        at_200 = next((p for p in run["points"] if p["offered_rps"] == 200), None)
        figures = f"{at_200['p50_ms']} / {at_200['p95_ms']} / {at_200['p99_ms']}" if at_200 else "-"
        top = f"{best['offered_rps']:.0f} | {figures} | {best['p99_ms']}" if best else f"0 | {figures} | -"
        cpu = min(p["cpu_ms_per_request"] for p in run["points"])
        lines.append(f"| {run['items']} | {'on' if run['batching'] else 'off'} | {top} | {cpu} |")
    floor = [p for p in results.get("http_floor", []) if p["sustained"]]
    if floor:
        best = max(floor, key=lambda p: p["offered_rps"])
        lines += [
            "",
            f"HTTP floor (GET /healthz, no model): {best['offered_rps']:.0f} req/s sustained, p99 "
            f"{best['p99_ms']} ms, {best['cpu_ms_per_request']} CPU ms/request",
        ]
    lines += [
        "",
        "| items | precision | in-process 1 query p50 / p99 ms | 1 query/s | batch-32 queries/s |",
        "|---:|:---:|---|---:|---:|",
    ]
    for f in results["floor"]:
        precision = "int8" if f["int8"] else "fp32"
        latency = f"{f['single_p50_ms']} / {f['single_p99_ms']}"
        lines.append(f"| {f['items']} | {precision} | {latency} | {f['single_qps']} | {f['batch32_qps']} |")
    lines += ["", f"live store read per batch, mean ms by model: {json.dumps(results.get('live_store_read_mean_ms'))}"]
    load = f"at start {results['load_avg_at_start']}, at end {results['load_avg_at_end']}"
    lines += ["", f"load average (1, 5, 15 min) {load}"]
    lines += ["", f"targets: {json.dumps(results['targets'])}"]
    if "int8_quality" in results:
        lines += ["", f"int8 on a trained ml-100k student: {json.dumps(results['int8_quality'])}"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
