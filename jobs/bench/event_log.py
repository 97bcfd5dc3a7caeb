"""Benchmark the durable event log in process: acknowledged (fsynced) appends per second against the live
store's in-memory state, side by side in one run.

    python jobs/bench/event_log.py --out runs/bench_event_log
    python jobs/bench/event_log.py --threads 1,8,32 --seconds 5 --dir /mnt/fast/tmp

Each point appends one /events request's records (--ids item ids of one user) per call for --seconds:
- `memory`: `LiveState.append_events` (what the store did before the log: nothing durable), one thread;
- `log-T`: `EventLogWriter.append` from T threads at once, each call returning once its records are
  fsynced (group commit: the appends that arrive during one fsync share the next). Reported: calls/s,
  records/s, fsyncs per call, call latency p50/p99 (ms).
Then the reload: `read_log` of everything written (sealed segments + tails), records/s.

The log lives in --dir (default: a temporary directory under OUT); fsync cost is the disk's, so the
figures are this machine's. Writes OUT/bench_event_log.json and prints a table; load averages recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from raysys.data.event_log import EventLogWriter, event_record, read_log
from raysys.serve.state import LiveState


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/bench_event_log")
    parser.add_argument("--threads", default="1,2,8,32", help="concurrent appenders per point")
    parser.add_argument("--seconds", type=float, default=4.0, help="per point")
    parser.add_argument("--ids", type=int, default=3, help="item ids per call (one /events request)")
    parser.add_argument("--dir", help="where the log is written (default: under --out)")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    base = Path(tempfile.mkdtemp(prefix="log-", dir=args.dir or out))
    result: dict[str, Any] = {"settings": vars(args), "load_start": os.getloadavg()[0], "cpus": os.cpu_count()}
    try:
        points = [memory_point(args.seconds, args.ids)]
        for threads in (int(t) for t in args.threads.split(",")):
            points.append(log_point(base / f"t{threads}", threads, args.seconds, args.ids))
        result["points"] = points
        result["reload"] = reload_point(base)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    result["load_end"] = os.getloadavg()[0]
    (out / "bench_event_log.json").write_text(json.dumps(result, indent=2))
    print(f"{'point':>10} {'calls/s':>10} {'records/s':>10} {'fsync/call':>10} {'p50 ms':>8} {'p99 ms':>8}")
    for p in points:
        print(
            f"{p['name']:>10} {p['calls_per_s']:>10,.0f} {p['records_per_s']:>10,.0f} {p['fsyncs_per_call']:>10.3f} "
            f"{p['latency_ms']['p50']:>8.3f} {p['latency_ms']['p99']:>8.3f}"
        )
    r = result["reload"]
    print(f"reload: {r['records']:,} records in {r['seconds']:.2f} s ({r['records_per_s']:,.0f}/s)")
    print(f"load average {result['load_start']:.2f} -> {result['load_end']:.2f}; -> {out / 'bench_event_log.json'}")


def memory_point(seconds: float, ids: int) -> dict[str, Any]:
    state, latencies, n = LiveState(), [], 0
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        start = time.perf_counter()
        state.append_events(f"u{n % 10_000}", [f"i{n}-{j}" for j in range(ids)])
        latencies.append(time.perf_counter() - start)
        n += 1
    return point("memory", n, ids, seconds, 0, latencies)


def log_point(root: Path, threads: int, seconds: float, ids: int) -> dict[str, Any]:
    latencies: list[float] = []
    calls = [0] * threads
    with EventLogWriter(root, "bench") as log:
        end = time.perf_counter() + seconds

        def appender(t: int) -> None:
            mine = []
            while time.perf_counter() < end:
                start = time.perf_counter()
                log.append([event_record(f"u{t}", f"i{calls[t]}-{j}") for j in range(ids)])
                mine.append(time.perf_counter() - start)
                calls[t] += 1
            latencies.extend(mine)

        workers = [threading.Thread(target=appender, args=(t,)) for t in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        fsyncs = log.fsyncs
    return point(f"log-{threads}", sum(calls), ids, seconds, fsyncs, latencies)


def point(name: str, calls: int, ids: int, seconds: float, fsyncs: int, latencies: list[float]) -> dict[str, Any]:
    ms = np.asarray(latencies) * 1000
    return {
        "name": name,
        "calls": calls,
        "calls_per_s": calls / seconds,
        "records_per_s": calls * ids / seconds,
        "fsyncs_per_call": fsyncs / max(calls, 1),
        "latency_ms": {"p50": float(np.percentile(ms, 50)), "p99": float(np.percentile(ms, 99))},
        "load": os.getloadavg()[0],
    }


def reload_point(base: Path) -> dict[str, Any]:
    start = time.perf_counter()
    records = sum(read_log(root).num_rows for root in sorted(base.iterdir()))
    seconds = time.perf_counter() - start
    return {"records": records, "seconds": seconds, "records_per_s": records / max(seconds, 1e-9)}


if __name__ == "__main__":
    main()
