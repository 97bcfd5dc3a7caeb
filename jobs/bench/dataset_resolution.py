"""How long a Tune run spends resolving its dataset, and how many files it hashes, in every process.

    python jobs/bench/dataset_resolution.py --runs 3 --out runs/bench_resolution
    python jobs/bench/dataset_resolution.py --repo ../parent-checkout --runs 3 --out runs/bench_resolution-parent

Each run is the real command, a 16-trial Population Based Training search over the student on
MovieLens-100K (tiny epochs: the search is not the point, its trials and PBT restarts are):

    raysys tune --config jobs/configs/tune_ml100k.yaml tune.num_samples=16 tune.scheduler=pbt ...

with `raysys.bench.probe` loaded into every process it starts. Resolution time is the sum, over all
processes, of the time in `prepare_or_reuse` (finding, hashing and checking inputs and cached
outputs) and in `PreparedDataset.open` outside it. `--repo` runs another checkout's raysys (its
package and config) under the same probe, so two commits compare side by side in one session.
Writes resolution.json into --out and prints the median of the runs.

ml-100k's inputs are small (one resolution hashes 6 files, a few MB). `--scale 5e6` also times one
cache-hit resolution and one open of a synthetic log of that many interactions, in this process, to
show what the same counts cost on a larger log:

    python jobs/bench/dataset_resolution.py --runs 0 --scale 5e6 --out runs/bench_resolution-5m
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from raysys.bench.probe import probe_env, read_probe

REPO = Path(__file__).resolve().parents[2]
SEARCH = [
    "tune.num_samples=16",
    "tune.scheduler=pbt",
    "tune.searcher=random",
    "tune.perturbation_interval=1",
    "tune.cpus_per_trial=1",
    "tune.space={distill.lr: {kind: loguniform, low: 0.0005, high: 0.01}, "
    "distill.lambda_ssl: {kind: uniform, low: 0.0, high: 0.3}}",
    "distill.lambda_kd=0",
    "distill.epochs=2",
    "distill.patience=2",
    "student.hidden_size=16",
    "student.num_layers=1",
]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo", type=Path, default=REPO, help="the raysys checkout to run (default: this one)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--scale", type=float, default=0, help="also time one resolution of a log this large")
    parser.add_argument("--out", type=Path, default=Path("runs/bench_resolution"))
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="added to the search's overrides")
    return parser.parse_args()


def one_run(repo: Path, out: Path, overrides: list[str]) -> dict[str, Any]:
    """One probed `raysys tune` run of `repo`'s code into `out`; its resolution figures."""
    log = out / "probe.jsonl"
    env = probe_env(out / "probe", log)
    env["PYTHONPATH"] = os.pathsep.join([env["PYTHONPATH"], str(repo)])  # the probe first, then the checkout
    env["RAY_ADDRESS"] = "local"  # its own local cluster (raysys.cluster)
    config = repo / "jobs" / "configs" / "tune_ml100k.yaml"
    command = [sys.executable, "-m", "raysys.cli", "tune", "--config", str(config), *SEARCH, *overrides]
    start = time.perf_counter()
    done = subprocess.run([*command, "--out", str(out / "run")], cwd=repo, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    (out / "log.txt").write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        raise SystemExit(f"the tune run failed (exit {done.returncode}); see {out / 'log.txt'}")
    records = read_probe(log)
    hashed = Counter(r["path"] for r in records if r["event"] == "sha256")
    timed = [r for r in records if r["event"] in ("resolve", "open")]
    summary = json.loads((out / "run" / "summary.json").read_text())
    return {
        "resolution_seconds": round(sum(r["seconds"] for r in timed), 3),
        "resolutions": sum(r["event"] == "resolve" for r in records),
        "opens": sum(r["event"] == "open" for r in records),
        "processes": len({r["pid"] for r in timed}),
        "files_hashed": len(hashed),
        "hash_calls": sum(hashed.values()),
        "trials": summary["trials"]["total"],
        "wall_seconds": round(wall, 1),
        "load_avg_at_start": os.getloadavg(),
    }


def per_call(interactions: int, cache_dir: Path, repeats: int = 3) -> dict[str, Any]:
    """Seconds of one cache-hit `load_or_prepare` and one `PreparedDataset.open` (median of `repeats`)
    for a synthetic log of `interactions` (prepared first, once)."""
    import ray

    from raysys.config import DataConfig, SyntheticConfig
    from raysys.data.dataset import PreparedDataset
    from raysys.data.prepare import load_or_prepare

    users = max(1000, interactions // 50)
    synthetic = SyntheticConfig(num_users=users, num_items=max(1000, users // 10), num_interactions=interactions)
    cfg = DataConfig(format="synthetic", synthetic=synthetic, cache_dir=str(cache_dir))
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    path = load_or_prepare(cfg, progress=False).path
    resolve, opened = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        load_or_prepare(cfg, progress=False)
        resolve.append(time.perf_counter() - start)
        start = time.perf_counter()
        PreparedDataset.open(path)
        opened.append(time.perf_counter() - start)
    ray.shutdown()
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return {
        "interactions": interactions,
        "prepared_bytes": size,
        "resolve_seconds": round(statistics.median(resolve), 4),
        "open_seconds": round(statistics.median(opened), 5),
    }


def main() -> None:
    args = parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {}
    if args.scale:
        result["per_call"] = per_call(int(args.scale), args.out / "scale-cache")
        print(json.dumps(result["per_call"]), flush=True)
    runs = []
    for i in range(args.runs):
        runs.append(one_run(args.repo.resolve(), (args.out / f"run-{i}").resolve(), args.overrides))
        print(json.dumps(runs[-1]), flush=True)
    if not runs:
        (args.out / "resolution.json").write_text(json.dumps(result, indent=2) + "\n")
        return
    result |= {
        "repo": str(args.repo.resolve()),
        "commit": subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=args.repo, capture_output=True, text=True
        ).stdout.strip(),
        "median_resolution_seconds": statistics.median(r["resolution_seconds"] for r in runs),
        "median_hash_calls": statistics.median(r["hash_calls"] for r in runs),
        "runs": runs,
    }
    (args.out / "resolution.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=2))


if __name__ == "__main__":
    main()
