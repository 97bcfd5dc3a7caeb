"""Benchmark what impression logging costs `POST /recommend` (issue 19), on and off back to back.

    python jobs/bench/impressions_http.py --out runs/bench_impressions
    python jobs/bench/impressions_http.py --connections 32 --duration 15 --rounds 2 --variants 2

Each point is one `raysys serve` (HAProxy ingress, its own Ray cluster, 2 replicas, a random student over
1,682 items) taking `wrk -t2 -cN` for --duration seconds of `POST /recommend {user_id, history (3 ids),
k: 10}` (1,000 bodies, each a different user: every answer is an impression) after a 3 s warm-up; wrk is
pinned to the last CPU. serve.log_impressions alternates off/on/on/off... over --rounds, so drift in the
machine's load hits both alike. With --variants 2 the app runs an A/B split (two variants on the same
model). Reported per point: req/s, p50/p99 ms, statuses, the impressions logged (on: one per 2xx answer)
and the load average; then, per setting, the means and the on/off ratios. Writes
OUT/bench_impressions.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serving import HISTORY_ITEMS, K, catalog_ids, load_1min, model_dir, require_tools, run_wrk, served  # noqa: E402

SCRIPT = Path(__file__).resolve().parent / "serving_post.lua"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--duration", type=int, default=15)
    parser.add_argument("--rounds", type=int, default=2, help="each round runs off then on (alternating order)")
    parser.add_argument("--variants", type=int, default=1, choices=(1, 2))
    parser.add_argument("--items", type=int, default=1682)
    parser.add_argument("--client-cpu", type=int, default=(os.cpu_count() or 1) - 1)
    parser.add_argument("--out", default="runs/bench_impressions")
    return parser.parse_args()


def write_bodies(ids: list[str], path: Path) -> Path:
    rng = random.Random(0)
    bodies = [{"user_id": f"bench-{n}", "history": rng.sample(ids, HISTORY_ITEMS), "k": K} for n in range(1000)]
    path.write_text("".join(json.dumps(b) + "\n" for b in bodies))
    return path


def point(logging: bool, n: int, model: Path, bodies: Path, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    run_dir = out / f"serve-{'on' if logging else 'off'}-{n}"
    overrides = [f"serve.log_impressions={str(logging).lower()}"]
    if args.variants == 2:
        overrides.append("serve.variants=[{name: a}, {name: b}]")
    with served("haproxy", model, run_dir, args.replicas, overrides) as (url, _):
        run_wrk(url, SCRIPT, 2, args.connections, 3, [str(bodies)], args.client_cpu)  # warm-up
        before = impressions(run_dir)
        raw = run_wrk(url, SCRIPT, 2, args.connections, args.duration, [str(bodies)], args.client_cpu)
        load = load_1min()
    ok = sum(n for code, n in raw["statuses"].items() if code.startswith("2"))
    figures = {
        "log_impressions": logging,
        "rps": round(raw["requests_per_s"], 1),
        "p50_ms": raw["latency_ms"].get("p50"),
        "p99_ms": raw["latency_ms"].get("p99"),
        "statuses": raw["statuses"],
        "socket_errors": raw["socket_errors"],
        "ok_answers": ok,
        "impressions_logged": impressions(run_dir) - before,
        "load_1min": load,
    }
    print(json.dumps(figures), flush=True)
    return figures


def impressions(run_dir: Path) -> int:
    """Impression records in the run's A/B log so far (its write-ahead files included)."""
    from raysys.data.ab_log import AB_DIR, AB_SCHEMA
    from raysys.data.event_log import read_log

    return read_log(run_dir / "event_log" / AB_DIR, AB_SCHEMA).num_rows


def summary(points: list[dict[str, Any]]) -> dict[str, Any]:
    """Per setting the means; on / off ratios of req/s and p99."""
    means = {}
    for setting in (False, True):
        mine = [p for p in points if p["log_impressions"] is setting]
        means["on" if setting else "off"] = {
            key: round(statistics.mean(p[key] for p in mine), 2) for key in ("rps", "p50_ms", "p99_ms", "load_1min")
        }
    on, off = means["on"], means["off"]
    return {**means, "rps_ratio": round(on["rps"] / off["rps"], 3), "p99_ratio": round(on["p99_ms"] / off["p99_ms"], 3)}


def main() -> None:
    args = parse_args()
    require_tools()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    model = model_dir(argparse.Namespace(model=None, items=args.items), out)
    bodies = write_bodies(catalog_ids(model), out / "impression_bodies.txt")
    order = [setting for r in range(args.rounds) for setting in ((False, True) if r % 2 == 0 else (True, False))]
    points = [point(setting, n, model, bodies, args, out) for n, setting in enumerate(order)]
    result = {"settings": vars(args), "points": points, "summary": summary(points)}
    (out / "bench_impressions.json").write_text(json.dumps(result, indent=2))
    print(f"{'impressions':>11} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'non-2xx':>8} {'logged':>8} {'load':>6}")
    for p in points:
        non_ok = sum(n for code, n in p["statuses"].items() if not code.startswith("2"))
        print(
            f"{'on' if p['log_impressions'] else 'off':>11} {p['rps']:>8} {p['p50_ms']!s:>8} {p['p99_ms']!s:>8}"
            f" {non_ok:>8} {p['impressions_logged']:>8} {p['load_1min']:>6}"
        )
    print(json.dumps(result["summary"]))


if __name__ == "__main__":
    main()
