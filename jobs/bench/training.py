"""Training speed: time to the peer's quality, and throughput by worker count and ZeRO stage.

    python jobs/bench/training.py --out runs/bench_train                       # reach + throughput
    python jobs/bench/training.py --parts reach --seeds 0,1,2 --out runs/bench_train
    python jobs/bench/training.py --parts throughput --layouts 1:0,2:0,2:2,2:3 --out runs/bench_train
    python jobs/bench/training.py --parts reach --run-peer /tmp/recbole-venv/bin/python --out runs/bench_train

reach: wall time of the whole `raysys finetune --config jobs/configs/ml100k.yaml` command (Ray start,
data, DeepSpeed set-up and every validation pass included) until its validation NDCG@10 first reaches
RecBole SASRec's best (../shared/peers/results.json: 0.0751 after 3,312 s). Target: >= 10x faster.
With --run-peer PYTHON (a venv with RecBole, ../shared/peers/setup_recbole.sh) the peer runs in the
same script, one after the other, so both see the same machine.

throughput: training items/s (next-item targets trained per second, summed over workers, from the
second epoch on: the first pays DeepSpeed's and Ray Data's warm-up) for each workers:zero layout, on
the same config, data and seed. Each layout is its own `raysys finetune` command.

Writes bench_train.json and bench_train.md into --out.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

from raysys.bench.commands import TimedRun, run_stage
from raysys.files import write_json_atomic
from raysys.run import utc_now

PEERS = Path(__file__).resolve().parents[3] / "shared" / "peers"
TARGET_SPEEDUP = 10.0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="jobs/configs/ml100k.yaml")
    parser.add_argument("--parts", default="reach,throughput", help="reach, throughput or both")
    parser.add_argument("--seeds", default="0", help="reach: one run per seed")
    parser.add_argument("--stop-at-target", action="store_true", help="reach: stop each run once it reaches the target")
    parser.add_argument("--layouts", default="1:0,2:0,2:2,2:3", help="throughput: workers:zero_stage pairs")
    parser.add_argument("--epochs", type=int, default=3, help="throughput: epochs per layout")
    parser.add_argument("--peer", default=str(PEERS / "results.json"), help="the peer's recorded figures")
    parser.add_argument("--run-peer", metavar="PYTHON", help="also run RecBole SASRec with this interpreter")
    parser.add_argument("--peer-epochs", type=int, default=30)
    parser.add_argument("--data", default=str(PEERS.parent / "data"), help="--run-peer: folder holding ml-100k/")
    parser.add_argument("--out", default="runs/bench_train")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides for every run")
    return parser.parse_args()


def reach(args: argparse.Namespace, peer: dict[str, Any], out: Path) -> dict[str, Any]:
    """Time each seed's teacher training (next item, the finetune stage) to the peer's best validation NDCG@10."""
    target = peer["best_valid_ndcg@10"]
    runs = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        overrides = [*args.overrides, f"finetune.seed={seed}"]
        timed = run_stage(
            "finetune",
            args.config,
            overrides,
            out / f"reach-seed{seed}",
            target=("valid_ndcg@10", target),
            stop_at_target=args.stop_at_target,
        )
        runs.append(_reach_record(seed, timed, peer))
        print(f"  seed {seed}: {json.dumps(runs[-1])}", flush=True)
    to_target = [r["seconds_to_target"] for r in runs if r["seconds_to_target"] is not None]
    median = statistics.median(to_target) if len(to_target) == len(runs) else None
    return {
        "target_valid_ndcg@10": target,
        "peer_seconds_to_target": peer["seconds_to_best_valid"],
        "runs": runs,
        "median_seconds_to_target": median,
        "speedup_vs_peer": round(peer["seconds_to_best_valid"] / median, 1) if median else None,
        "target_met": bool(median and peer["seconds_to_best_valid"] / median >= TARGET_SPEEDUP),
    }


def _reach_record(seed: int, timed: TimedRun, peer: dict[str, Any]) -> dict[str, Any]:
    if not timed.summary:  # stopped at the target: the figures of the epoch that reached it
        at = next(r for r in timed.history if r["epoch"] == timed.epoch_at_target)
        timed.summary = {
            "metrics": {"valid": {"ndcg@10": at["valid_ndcg@10"]}, "test": {"ndcg@10": float("nan")}},
            "epochs_run": at["epoch"],
        }
    test = timed.summary["metrics"]["test"]
    return {
        "seed": seed,
        "seconds_to_target": timed.seconds_to_target,
        "epoch_at_target": timed.epoch_at_target,
        "speedup": round(peer["seconds_to_best_valid"] / timed.seconds_to_target, 1)
        if timed.seconds_to_target
        else None,
        "command_seconds": timed.seconds,
        "best_valid_ndcg@10": round(timed.summary["metrics"]["valid"]["ndcg@10"], 4),
        "test_ndcg@10": round(test["ndcg@10"], 4),
        "epochs_run": timed.summary.get("epochs_run"),
    }


def throughput(args: argparse.Namespace, out: Path) -> list[dict[str, Any]]:
    """Items/s per workers:zero layout (same config and seed; `--epochs` epochs, no early stop)."""
    rows = []
    for layout in args.layouts.split(","):
        workers, zero = (int(x) for x in layout.split(":"))
        overrides = [
            *args.overrides,
            f"finetune.num_workers={workers}",
            f"finetune.zero_stage={zero}",
            f"finetune.epochs={args.epochs}",
            f"finetune.patience={args.epochs}",
        ]
        timed = run_stage("finetune", args.config, overrides, out / f"throughput-w{workers}-z{zero}")
        steady = timed.history[1:] or timed.history
        rows.append(
            {
                "workers": workers,
                "zero_stage": zero,
                "items_per_s": round(statistics.mean(r["items_per_s"] for r in steady), 1),
                "epoch_train_seconds": round(statistics.mean(r["train_seconds"] for r in steady), 2),
                "command_seconds": timed.seconds,
                "final_loss": round(timed.history[-1]["loss"], 4),
            }
        )
        print(f"  {json.dumps(rows[-1])}", flush=True)
    return rows


def run_peer(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """RecBole SASRec on the same machine, now; its JSON lines give the curve (wall seconds per epoch)."""
    script = PEERS / "run_recbole.py"
    log = out / "peer.log"
    start = time.perf_counter()
    with open(log, "w") as sink:
        done = subprocess.run(
            [args.run_peer, str(script), "SASRec", str(args.peer_epochs), args.data],
            stdout=subprocess.PIPE,
            stderr=sink,
            text=True,
            check=False,
        )
    if done.returncode != 0:
        raise SystemExit(f"bench_train: the peer run failed (exit {done.returncode}); see {log}")
    final = json.loads(done.stdout.strip().splitlines()[-1])
    best = max(final["curve"], key=lambda r: r["valid_ndcg10"])
    return {
        "best_valid_ndcg@10": final["best_valid_ndcg10"],
        "seconds_to_best_valid": best["wall_s"],
        "test": final["test"],
        "command_seconds": round(time.perf_counter() - start, 1),
        "source": "run in this script",
    }


def recorded_peer(path: str) -> dict[str, Any]:
    sasrec = json.loads(Path(path).read_text())["SASRec"]
    return {
        "best_valid_ndcg@10": sasrec["best_valid_ndcg@10"],
        "seconds_to_best_valid": sasrec["seconds_to_best_valid"],
        "test": sasrec["test"],
        "source": path,
    }


def markdown(results: dict[str, Any]) -> str:
    lines = []
    if "reach" in results:
        r = results["reach"]
        lines += [
            f"Time to the peer's best validation NDCG@10 ({r['target_valid_ndcg@10']}); peer: "
            f"{r['peer_seconds_to_target']} s ({results['peer']['source']})",
            "",
            "| seed | seconds to target | epoch | speed-up | whole command s | best valid NDCG@10 | test NDCG@10 |",
            "|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for run in r["runs"]:
            lines.append(
                f"| {run['seed']} | {run['seconds_to_target']} | {run['epoch_at_target']} | {run['speedup']}x "
                f"| {run['command_seconds']} | {run['best_valid_ndcg@10']} | {run['test_ndcg@10']} |"
            )
        lines += [
            "",
            f"median speed-up {r['speedup_vs_peer']}x (target {TARGET_SPEEDUP}x: "
            f"{'met' if r['target_met'] else 'not met'})",
            "",
        ]
    if "throughput" in results:
        lines += [
            "| workers | ZeRO | items/s | epoch train s | whole command s | final loss |",
            "|---:|---:|---:|---:|---:|---:|",
        ]
        for row in results["throughput"]:
            lines.append(
                f"| {row['workers']} | {row['zero_stage']} | {row['items_per_s']} | {row['epoch_train_seconds']} "
                f"| {row['command_seconds']} | {row['final_loss']} |"
            )
    lines += [
        "",
        f"load average (1, 5, 15 min) at start {results['load_avg_at_start']}, at end {results['load_avg_at_end']}",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    args = parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    parts = set(args.parts.split(","))
    results: dict[str, Any] = {
        "started_at": utc_now(),
        "config": args.config,
        "overrides": args.overrides,
        "load_avg_at_start": os.getloadavg(),
        "machine_cpus": os.cpu_count(),
    }
    results["peer"] = run_peer(args, out) if args.run_peer else recorded_peer(args.peer)
    if "reach" in parts:
        results["reach"] = reach(args, results["peer"], out)
    if "throughput" in parts:
        results["throughput"] = throughput(args, out)
    results["load_avg_at_end"] = os.getloadavg()
    write_json_atomic(out / "bench_train.json", results)
    (out / "bench_train.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
