"""Benchmark durable `POST /events` over HTTP; run it for a commit before the event log too, back to back.

    python jobs/bench/events_http.py --out runs/bench_events
    python jobs/bench/events_http.py --replicas 1,2 --connections 32 --duration 15
    # the in-memory store of a commit before the log (Serve's replicas import the *installed* raysys,
    # so install that checkout into the venv for the run, then this one again):
    git worktree add ../raysys-parent 2e3130d && pip install -q --no-deps -e ../raysys-parent
    python jobs/bench/events_http.py --label parent --out runs/bench_events_parent && pip install -q --no-deps -e .

For each replica count in --replicas, one `raysys serve` (HAProxy ingress, its own Ray cluster, a
random student over 1,682 items) takes
`wrk -t2 -cN` for --duration seconds of `POST /events {user_id, item_ids: [3 ids]}`, 1,000 bodies over
1,000 users cycled, after a 3 s warm-up; wrk is pinned to the last CPU (as in jobs/bench/serving.py).
Reported per point: req/s, p50/p99 ms, status codes, socket errors, the log's records afterwards
(this checkout: every 2xx answer's 3 ids are in the log) and the load average. Writes
OUT/bench_events.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serving import WRK_TIMEOUT, catalog_ids, load_1min, model_dir, require_tools, run_wrk, served  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).resolve().parent / "serving_post.lua"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--label", default="this", help="what the installed raysys is (figures are labelled)")
    parser.add_argument("--replicas", default="1,2")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--duration", type=int, default=15)
    parser.add_argument("--items", type=int, default=1682)
    parser.add_argument("--client-cpu", type=int, default=(os.cpu_count() or 1) - 1)
    parser.add_argument("--out", default="runs/bench_events")
    return parser.parse_args()


def write_bodies(ids: list[str], path: Path) -> Path:
    rng = random.Random(0)
    lines = [json.dumps({"user_id": f"bench-{n}", "item_ids": rng.sample(ids, 3)}) for n in range(1000)]
    path.write_text("\n".join(lines) + "\n")
    return path


def point(label: str, replicas: int, model: Path, bodies: Path, args, out: Path) -> dict[str, Any]:
    run_dir = out / f"serve-{label}-{replicas}"
    with served("haproxy", model, run_dir, replicas, []) as (url, _):
        run_wrk(url, SCRIPT, 2, args.connections, 3, [str(bodies)], args.client_cpu, path="/events")  # warm-up
        raw = run_wrk(url, SCRIPT, 2, args.connections, args.duration, [str(bodies)], args.client_cpu, "/events")
    logged = logged_records(run_dir / "event_log")
    ok = sum(n for code, n in raw["statuses"].items() if code.startswith("2"))
    figures = {
        "checkout": label,
        "replicas": replicas,
        "rps": round(raw["requests_per_s"], 1),
        "p50_ms": raw["latency_ms"].get("p50"),
        "p99_ms": raw["latency_ms"].get("p99"),
        "statuses": raw["statuses"],
        "socket_errors": raw["socket_errors"],
        "ok_answers": ok,
        "logged_records": logged,
        "load_1min": load_1min(),
    }
    print(json.dumps(figures), flush=True)
    return figures


def logged_records(root: Path) -> int | None:
    """Records in a run's event log; None for a raysys without one (a commit before the log)."""
    try:
        from raysys.data.event_log import read_log
    except ImportError:
        return None
    return read_log(root).num_rows if root.is_dir() else None


def main() -> None:
    args = parse_args()
    require_tools()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    model = model_dir(argparse.Namespace(model=None, items=args.items), out)
    bodies = write_bodies(catalog_ids(model), out / "events_bodies.txt")
    import raysys

    points = [point(args.label, int(replicas), model, bodies, args, out) for replicas in args.replicas.split(",")]
    result = {"settings": vars(args), "raysys": raysys.__file__, "wrk_timeout": WRK_TIMEOUT, "points": points}
    (out / "bench_events.json").write_text(json.dumps(result, indent=2))
    print(f"{'checkout':>8} {'replicas':>8} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'non-2xx':>8} {'logged':>8}")
    for p in points:
        non_ok = sum(n for code, n in p["statuses"].items() if not code.startswith("2"))
        print(
            f"{p['checkout']:>8} {p['replicas']:>8} {p['rps']:>8} {p['p50_ms']!s:>8} {p['p99_ms']!s:>8}"
            f" {non_ok:>8} {p['logged_records']!s:>8}"
        )


if __name__ == "__main__":
    main()
