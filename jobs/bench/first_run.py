"""The first run as a new user has it: `make demo`'s pipeline on the synthetic default, from cold caches.

    python jobs/bench/first_run.py --out runs/bench_first_run                         # this checkout
    python jobs/bench/first_run.py --repo ../parent-checkout --out runs/bench_first_run-parent

Runs `raysys pipeline --config jobs/configs/quickstart.yaml` of `--repo` (its package and config)
into a fresh run directory with a fresh prepared-data cache, as the first `make demo` after the
install does. DeepSpeed's compiled op: this checkout's install builds it (`make install`), so it is
kept; `--cold-ops` starts from an empty op cache as well (the parent compiled it in its first run).
Measures the wall time and each stage's time, the peak memory of the whole process tree
(`raysys.bench.memory`: driver, Ray's processes and workers, object store; PSS), the lines printed,
the load average at the start, and reads the report's headline. Writes first_run.json into --out.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from raysys.bench.memory import PeakMemorySampler
from raysys.train.history import read_history

REPO = Path(__file__).resolve().parents[2]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo", type=Path, default=REPO, help="the raysys checkout to run (default: this one)")
    parser.add_argument("--cold-ops", action="store_true", help="an empty DeepSpeed op cache too")
    parser.add_argument("--out", type=Path, default=Path("runs/bench_first_run"))
    parser.add_argument("overrides", nargs="*", help="dotted config overrides passed to the pipeline")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    repo, out = args.repo.resolve(), args.out.resolve()
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    scratch = Path(tempfile.mkdtemp(prefix="raysys-first-run-"))
    env = {**os.environ, "PYTHONPATH": str(repo), "PYTHONUNBUFFERED": "1"}
    env["RAY_ADDRESS"] = "local"  # its own local cluster, as on a fresh machine (raysys.cluster)
    if args.cold_ops:
        env["TORCH_EXTENSIONS_DIR"] = str(scratch / "torch_extensions")
    run_dir = out / "run"
    command = [sys.executable, "-m", "raysys.cli", "pipeline", "--config", "jobs/configs/quickstart.yaml"]
    command += [*args.overrides, f"data.cache_dir={scratch / 'data'}", "--out", str(run_dir)]
    load = os.getloadavg()
    start = time.perf_counter()
    with open(out / "console.txt", "w") as console:
        child = subprocess.Popen(command, cwd=repo, env=env, stdout=console, stderr=subprocess.STDOUT)
        with PeakMemorySampler(pid=child.pid) as memory:
            child.wait()
    wall = time.perf_counter() - start
    shutil.rmtree(scratch, ignore_errors=True)
    printed = (out / "console.txt").read_text()
    if child.returncode != 0:
        raise SystemExit(f"the pipeline failed (exit {child.returncode}); see {out / 'console.txt'}")
    summary = json.loads((run_dir / "summary.json").read_text())
    result: dict[str, Any] = {
        "repo": str(repo),
        "commit": subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True).stdout.strip(),
        "load_avg_at_start": load,
        "wall_seconds": round(wall, 1),
        "stage_seconds": {name: record["seconds"] for name, record in summary["stages"].items()},
        "peak_pss_gib": round(memory.peak.pss_bytes / 2**30, 2),
        "peak_rss_gib": round(memory.peak.rss_bytes / 2**30, 2),
        "lines_printed": len(printed.splitlines()),
        "test_ndcg@10": {name: m["metrics"]["test"]["ndcg@10"] for name, m in summary["models"].items()},
        "student_cold_hr@10": summary["models"]["student"]["metrics"].get("test/cold_items", {}).get("hr@10"),
        "epochs": {name: epochs(run_dir / stage) for name, stage in EPOCH_STAGES.items()},
        "headline": headline(run_dir / "report.html"),
    }
    (out / "first_run.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


EPOCH_STAGES = {"pretrain": "pretrain", "teacher": "finetune", "student": "student"}  # name -> stage folder


def epochs(stage_dir: Path) -> dict[str, Any] | None:
    """Epochs run, the best one (by validation NDCG@10) and its value, from a stage's history."""
    records = read_history(stage_dir)
    if not records:
        return None
    best = max(records, key=lambda record: record.get("valid_ndcg@10", float("-inf")))
    seconds = [record.get("seconds", record.get("train_seconds", 0.0)) for record in records]  # (parent: train_)
    return {
        "run": len(records),
        "best": best["epoch"],
        "best_valid_ndcg@10": best.get("valid_ndcg@10"),
        "median_epoch_seconds": statistics.median_low(seconds),
    }


def headline(report: Path) -> str | None:
    """The report's Result block as text (None for a report without one)."""
    page = report.read_text()
    match = re.search(r"<h2>Result</h2>(.*?)<h2>", page, re.S)
    return " ".join(re.sub(r"<[^>]+>", " ", match.group(1)).split()) if match else None


if __name__ == "__main__":
    main()
