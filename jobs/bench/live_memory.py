"""Benchmark the live store's memory bound and its reload of evicted users from the event log, in process.

    python jobs/bench/live_memory.py --out runs/bench_live_memory
    python jobs/bench/live_memory.py --events 1000000 --users 100000 --flood 50000 --budget-mib 256

- `reload`: a log of --events event records over --users users from two writers (sealed every 10,000
  records, as served), opened by a `LiveStore` (every user starts evicted: the rebuild only indexes the
  log), then --samples random users read one at a time, each reloaded through the per-segment user index.
  Reported: the rebuild's seconds and index bytes, reload p50/p99 ms, and one user read by a full scan of
  the log (`read_log`) for comparison.
- `flood`: a child process writes --flood /events requests of 1000 ids of 128 characters (one new user
  each) to the log and hands each to the store in this process, as a replica pushes it; the store holds
  --budget-mib (`serve.live_store_max_bytes`). Reported: RSS of this process after --warmup requests
  (every code path run once), its peak and final growth over that, and the store's counted bytes. Runs in
  a fresh interpreter with the live store actor's allocator settings (`raysys.serve.state.STORE_ENV`).
Writes OUT/bench_live_memory.json and prints the figures; load averages recorded.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import random
import shutil
import string
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/bench_live_memory")
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--samples", type=int, default=1000, help="users reloaded (timed one by one)")
    parser.add_argument("--flood", type=int, default=2000, help="flood requests (1000 ids of 128 characters)")
    parser.add_argument("--warmup", type=int, default=50, help="flood requests before the RSS baseline")
    parser.add_argument("--budget-mib", type=int, default=2, help="serve.live_store_max_bytes in MiB")
    parser.add_argument("--dir", help="where the logs are written (default: under --out)")
    parser.add_argument("--part", choices=["reload", "flood", "both"], default="both")
    return parser.parse_args()


def write_log(root: Path, events: int, users: int) -> float:
    """`events` click records, users drawn uniformly, from two writers; returns seconds taken."""
    from raysys.data.event_log import EventLogWriter, event_record

    rng = np.random.default_rng(0)
    start = time.perf_counter()
    writers = [EventLogWriter(root, f"r{i}") for i in range(2)]
    batch = 10_000
    for first in range(0, events, batch):
        user_ids = rng.integers(0, users, min(batch, events - first))
        records = [
            event_record(f"user-{u}", f"item-{rng.integers(0, 20_000)}", timestamp=first + n)
            for n, u in enumerate(user_ids)
        ]
        writers[(first // batch) % 2].append(records)
    for writer in writers:
        writer.close()
    return time.perf_counter() - start


def reload_part(root: Path, args: argparse.Namespace) -> dict[str, Any]:
    from raysys.data.event_log import interactions, read_log
    from raysys.serve.state import Limits, LiveStore

    written = write_log(root, args.events, args.users)

    async def run() -> dict[str, Any]:
        store = LiveStore(Limits())
        start = time.perf_counter()
        await store.open_log(str(root))
        rebuild = time.perf_counter() - start
        rng = random.Random(1)
        latencies, lengths = [], []
        for user in rng.sample(range(args.users), args.samples):
            start = time.perf_counter()
            snapshot = await store.read([f"user-{user}"], 0)
            latencies.append(1000 * (time.perf_counter() - start))
            lengths.append(len(snapshot.events.get(f"user-{user}", [])))
        store._tail_task.cancel()
        return {"rebuild_s": round(rebuild, 2), "latencies": latencies, "lengths": lengths, "store": store.stats()}

    figures = asyncio.run(run())
    start = time.perf_counter()
    table = interactions(read_log(root))
    one = table.filter(np.asarray(table["user_id"].to_numpy(zero_copy_only=False) == "user-7"))
    scan = time.perf_counter() - start
    latencies = figures.pop("latencies")
    return {
        "events": args.events,
        "users": args.users,
        "write_s": round(written, 1),
        "reload_p50_ms": round(float(np.percentile(latencies, 50)), 2),
        "reload_p99_ms": round(float(np.percentile(latencies, 99)), 2),
        "reload_max_ms": round(max(latencies), 2),
        "events_per_reloaded_user": round(float(np.mean(figures.pop("lengths"))), 1),
        "full_scan_one_user_ms": round(1000 * scan, 1),
        "full_scan_found": one.num_rows,
        **figures,
    }


def flood_writer(root: str, queue: Any, requests: int) -> None:
    """The replica's part: write each request's records durably, then hand them to the store."""
    from raysys.data.event_log import EventLogWriter, event_record

    writers = [EventLogWriter(root, f"r{i}") for i in range(2)]
    for n in range(requests):
        ids = ["".join(random.choices(string.ascii_letters, k=128)) for _ in range(1000)]
        writer = writers[n % 2]
        seqs = writer.append([event_record(f"flood-{n}", i) for i in ids])
        queue.put((f"flood-{n}", ids, (writer.writer, seqs[0])))
    queue.put(None)
    for writer in writers:
        writer.close()


def flood_part(root: Path, args: argparse.Namespace) -> dict[str, Any]:
    import psutil

    from raysys.serve.state import Limits, LiveStore

    budget = args.budget_mib << 20

    async def run() -> dict[str, Any]:
        store = LiveStore(Limits(max_bytes=budget))
        await store.open_log(str(root))
        context = multiprocessing.get_context("spawn")
        queue = context.Queue(maxsize=8)
        child = context.Process(target=flood_writer, args=(str(root), queue, args.flood))
        child.start()
        proc, baseline, peak, count, start = psutil.Process(), 0, 0, 0, time.perf_counter()
        while (item := await asyncio.get_running_loop().run_in_executor(None, queue.get)) is not None:
            await store.append_events(*item)
            count += 1
            rss = proc.memory_info().rss
            if count == args.warmup:
                baseline = rss
            peak = max(peak, rss)
        child.join()
        await asyncio.sleep(2 * 1.0)  # the tail catches up
        final = proc.memory_info().rss
        store._tail_task.cancel()
        return {
            "requests": count,
            "ids_posted": count * 1000,
            "seconds": round(time.perf_counter() - start, 1),
            "budget_mib": args.budget_mib,
            "rss_baseline_mib": round(baseline / 2**20, 1),
            "rss_peak_growth_mib": round((peak - baseline) / 2**20, 1),
            "rss_final_growth_mib": round((final - baseline) / 2**20, 1),
            "bound_mib": args.budget_mib + 50,
            "store": store.stats(),
        }

    return asyncio.run(run())


def main() -> None:
    args = parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.part == "flood" and os.environ.get("RAYSYS_BENCH_CHILD") != "1":
        sys.exit(rerun_with_store_env())
    Path(args.dir or out).mkdir(parents=True, exist_ok=True)
    base = Path(tempfile.mkdtemp(prefix="live-", dir=args.dir or out))
    result: dict[str, Any] = {"settings": vars(args), "load_start": os.getloadavg()[0], "cpus": os.cpu_count()}
    try:
        if args.part in ("reload", "both"):
            result["reload"] = reload_part(base / "reload", args)
            print(json.dumps(result["reload"], indent=2), flush=True)
        if args.part == "flood":
            result["flood"] = flood_part(base / "flood", args)
            print(json.dumps(result["flood"], indent=2), flush=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    if args.part == "both":  # the flood in a fresh interpreter with the store's allocator settings
        done = subprocess.run([sys.executable, *sys.argv, "--part", "flood", "--out", str(out / "flood")], check=True)
        result["flood"] = json.loads((out / "flood" / "bench_live_memory.json").read_text())["flood"] if done else None
    result["load_end"] = os.getloadavg()[0]
    (out / "bench_live_memory.json").write_text(json.dumps(result, indent=2))


def rerun_with_store_env() -> int:
    from raysys.serve.state import STORE_ENV

    env = {**os.environ, **STORE_ENV, "RAYSYS_BENCH_CHILD": "1"}
    return subprocess.run([sys.executable, *sys.argv], env=env).returncode


if __name__ == "__main__":
    main()
