"""Do the shipped defaults hold on sparse data? (issue 20, part 3)

    python jobs/bench/sparse_defaults.py --out runs/bench_sparse                         # the sparse preset
    python jobs/bench/sparse_defaults.py --config my_log.yaml --out runs/bench_mylog     # any log

1. `raysys pipeline --config CONFIG pipeline.kd_control=true`: the shipped defaults end to end; the
   run's summary gives validation NDCG@10 of the student, the same student without its teacher
   (`models.student_no_kd`), the teacher and item-kNN.
2. `raysys tune --config CONFIG distill.teacher=<that run's teacher> tune.num_samples=16`: a Ray Tune
   search over the student's distillation (the default space; its first trial is the config's own values).

Targets, all on validation (test figures are printed beside, never used to choose): the student beats
item-kNN and the student without distillation, and reaches >= 95 % of the search's best. Each step whose
summary.json exists is skipped (resumable); writes OUT/sparse_defaults.json (with the search's trials,
best first) and prints it.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
from pathlib import Path
from typing import Any

from raysys.bench.commands import run_stage
from raysys.tune.results import RESULTS_FILE

REPO = Path(__file__).resolve().parents[2]
SHARE_OF_TUNED = 0.95
MODELS = ("student", "student_no_kd", "teacher", "itemknn", "popularity")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(REPO / "jobs" / "configs" / "sparse.yaml"))
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--out", default="runs/bench_sparse_defaults")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="for both commands (e.g. data.*)")
    args = parser.parse_args(argv)
    if args.trials < 1:
        parser.error("--trials must be >= 1")
    return args


def step(name: str, args: argparse.Namespace, out: Path, overrides: list[str]) -> dict[str, Any]:
    """One command's summary.json, run unless an earlier invocation finished it."""
    run_dir = out / name
    if not (run_dir / "summary.json").is_file():
        print(f"== raysys {name} ({run_dir})", flush=True)
        timed = run_stage(name, args.config, [*args.overrides, *overrides], run_dir)
        print(f"   {timed.seconds} s", flush=True)
    return json.loads((run_dir / "summary.json").read_text())


def ndcg(summary: dict[str, Any], model: str, split: str) -> float | None:
    metrics = summary["models"].get(model, {}).get("metrics", {}).get(split)
    return round(metrics["ndcg@10"], 4) if metrics else None


def figures(pipeline: dict[str, Any], tune: dict[str, Any]) -> dict[str, Any]:
    """Validation (and test) NDCG@10 per model, the search's best, and the targets."""
    valid = {m: ndcg(pipeline, m, "valid") for m in MODELS}
    tuned = round(tune["best"]["valid_ndcg@10"], 4)
    student = valid["student"]
    return {
        "valid_ndcg@10": valid,
        "test_ndcg@10": {m: ndcg(pipeline, m, "test") for m in MODELS},
        "tuned_valid_ndcg@10": tuned,
        "tuned_values": tune["best"]["values"],
        "share_of_tuned": round(student / tuned, 3),
        "targets": {
            "beats_itemknn": student > valid["itemknn"],
            "beats_student_no_kd": valid["student_no_kd"] is not None and student > valid["student_no_kd"],
            f"share_of_tuned>={SHARE_OF_TUNED}": student >= SHARE_OF_TUNED * tuned,
        },
    }


def number_or_text(text: str) -> float | str:
    """A searched value read back from CSV: a number where it is one (a `choice` may hold words)."""
    try:
        return float(text)
    except ValueError:
        return text


def trials(tune_dir: Path, keys: list[str]) -> list[dict[str, Any]]:
    """The search's trials (its results.csv, best first): valid NDCG@10, epochs run, the searched `keys`."""
    with (tune_dir / RESULTS_FILE).open() as f:
        return [
            {
                "trial_id": row["trial_id"],
                "valid_ndcg@10": round(float(row["best_valid_ndcg@10"]), 4),
                "epochs": int(row["iterations"]),
                "values": {key: number_or_text(row[key]) for key in keys},
            }
            for row in csv.DictReader(f)
        ]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("RAY_ADDRESS", "local")  # each command starts its own cluster
    pipeline = step("pipeline", args, out, ["pipeline.kd_control=true"])
    teacher = out / "pipeline" / "finetune" / "model"
    tune = step("tune", args, out, [f"distill.teacher={teacher}", f"tune.num_samples={args.trials}"])
    result = {"config": args.config, "overrides": args.overrides, **figures(pipeline, tune)}
    result["trials"] = trials(out / "tune", list(tune["best"]["values"]))
    (out / "sparse_defaults.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
