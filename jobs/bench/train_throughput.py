"""Training throughput on dense and sparse logs and a large catalog: today's path and the new one, side by side.

    python jobs/bench/train_throughput.py --epochs 3 --out runs/bench_throughput
    python jobs/bench/train_throughput.py --epochs 2 --datasets sparse,catalog100k --out runs/bench_throughput
    python jobs/bench/train_throughput.py --epochs 2 --new finetune.length_buckets=20 --new finetune.loss=sampled

Datasets (DATASETS): ml100k (jobs/configs/ml100k.yaml; needs ../shared/data/ml-100k, skipped without it),
sparse (jobs/configs/sparse.yaml: 20 k users, 10 k items, median history 6) and catalog100k (the sparse
preset with 100 k items). Paths: `old` is each dataset's config with the overrides of --old (default OLD:
the path before length-aware batching and loss=auto: every window padded to its batch's longest row, full
softmax); `new` with those of --new (default NEW: none, the shipped defaults). Every run is one
`raysys finetune` command (the teacher: Ray Train + DeepSpeed, the config's workers) for --epochs epochs
with early stopping off, on the same data and seed, one after the other so all see the same machine.

Per run, from its per-epoch history, over the epochs after the first (which pays DeepSpeed's and Ray
Data's warm-up; all epochs when there is one):
- targets_per_s: next-item targets trained per second, summed over workers (training time only);
- seconds_per_epoch: the whole epoch, validation included, and its parts (train, validation);
- valid_ndcg@10 after the last epoch: the same number of epochs on both paths, so a faster path that
  learns less shows here;
- the command's wall time (Ray start, data preparation and checkpoints included).

Targets (issue "Training throughput on sparse, large-catalog logs"; reported, not enforced), on the new
path: the sparse preset's per-target cost at most 2 x ml100k's (targets/s at least half), and catalog100k
at least 25 % of ml100k's targets/s.

Writes OUT/throughput.json (`datasets.<name>.paths.<old|new>.{targets_per_s, seconds_per_epoch,
valid_ndcg@10, ...}`, ratios, targets, settings) and OUT/throughput.md; each run's directory and log are
in OUT too.
"""

from __future__ import annotations

import argparse
import os
import statistics
from pathlib import Path
from typing import Any

from raysys.bench.commands import TimedRun, run_stage
from raysys.errors import RaysysError
from raysys.files import write_json_atomic
from raysys.run import utc_now

ROOT = Path(__file__).resolve().parents[2]
ML100K_DATA = ROOT.parent / "shared" / "data" / "ml-100k"
# name -> (config, overrides): the same three logs on both paths.
DATASETS: dict[str, tuple[str, list[str]]] = {
    "ml100k": ("jobs/configs/ml100k.yaml", [f"data.path={ML100K_DATA}"]),
    "sparse": ("jobs/configs/sparse.yaml", []),
    "catalog100k": (
        "jobs/configs/sparse.yaml",
        ["data.synthetic.num_items=100000", "data.synthetic.num_users=10000", "data.synthetic.num_topics=500"],
    ),
}
# The path before this work (every window padded as its batch's longest, full softmax) and the new one: the
# shipped defaults (length-aware batching, loss=auto).
OLD = ["finetune.length_buckets=0", "finetune.loss=full"]
NEW: list[str] = []
SPARSE_MIN_SHARE = 0.5  # sparse targets/s >= half of ml100k's (per-target cost <= 2 x)
CATALOG_MIN_SHARE = 0.25  # catalog100k targets/s >= 25 % of ml100k's


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=3, help="epochs per run (early stopping off)")
    parser.add_argument("--datasets", default=",".join(DATASETS), help=f"any of {','.join(DATASETS)}")
    parser.add_argument("--paths", default="old,new", help="old, new or both")
    parser.add_argument(
        "--old", action="append", metavar="KEY=VALUE", help=f"the old path's overrides (repeatable; default {OLD})"
    )
    parser.add_argument(
        "--new", action="append", metavar="KEY=VALUE", help=f"the new path's overrides (repeatable; default {NEW})"
    )
    parser.add_argument("--set", dest="common", action="append", default=[], metavar="KEY=VALUE", help="every run")
    parser.add_argument("--out", default="runs/bench_throughput")
    args = parser.parse_args(argv)
    args.datasets = [d for d in args.datasets.split(",") if d]
    args.paths = [p for p in args.paths.split(",") if p]
    args.old, args.new = args.old or OLD, args.new or NEW
    unknown = sorted(set(args.datasets) - set(DATASETS)) + sorted(set(args.paths) - {"old", "new"})
    if unknown or args.epochs < 1:
        parser.error(f"unknown datasets/paths {unknown}" if unknown else "--epochs must be at least 1")
    return args


def path_overrides(path: str, args: argparse.Namespace) -> list[str]:
    return list(args.old if path == "old" else args.new)


def run_one(dataset: str, path: str, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """One `raysys finetune` of `dataset` on `path`; its figures (see the module docstring)."""
    config, data_overrides = DATASETS[dataset]
    epochs = [f"finetune.epochs={args.epochs}", f"finetune.patience={args.epochs}", "finetune.min_delta=0"]
    overrides = [*data_overrides, *args.common, *path_overrides(path, args), *epochs]
    print(f"{dataset} / {path}: raysys finetune --config {config} {' '.join(overrides)}", flush=True)
    timed = run_stage("finetune", config, overrides, out / f"{dataset}-{path}")
    record = run_figures(timed)
    print(
        f"  {record['targets_per_s']:.0f} targets/s, {record['seconds_per_epoch']:.1f} s/epoch, "
        f"valid NDCG@10 {record['valid_ndcg@10']:.4f}, {record['wall_seconds']:.0f} s in all",
        flush=True,
    )
    return {**record, "config": config, "overrides": overrides}


def run_figures(timed: TimedRun) -> dict[str, Any]:
    """The figures of one run from its history (epochs after the first; all when there is one)."""
    if not timed.history:
        raise RaysysError("the run wrote no epoch history", where=str(timed.out_dir))
    steady = timed.history[1:] or timed.history
    train = statistics.mean(r["train_seconds"] for r in steady)
    whole = statistics.mean(r["seconds"] for r in steady)
    writes = [r["checkpoint_seconds"] for r in timed.history if "checkpoint_seconds" in r]
    epochs_and_writes = sum(r["seconds"] for r in timed.history) + sum(writes)
    return {
        "targets_per_s": round(statistics.mean(r["items_per_s"] for r in steady), 1),
        "seconds_per_epoch": round(whole, 2),
        "train_seconds_per_epoch": round(train, 2),
        "validation_seconds_per_epoch": round(whole - train, 2),
        "checkpoint_seconds_per_epoch": round(statistics.mean(writes), 3) if writes else None,
        # Ray and the worker group starting, the data read once, DeepSpeed set up, the model exported
        "outside_epochs_seconds": round(timed.seconds - epochs_and_writes, 1),
        "valid_ndcg@10": round(timed.history[-1]["valid_ndcg@10"], 4),
        "epochs": len(timed.history),
        "wall_seconds": timed.seconds,
    }


def ratios(datasets: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per dataset with both paths: new / old targets/s and the NDCG@10 difference (new - old)."""
    out = {}
    for name, result in datasets.items():
        paths = result["paths"]
        if "old" in paths and "new" in paths:
            out[name] = {
                "targets_per_s_new_over_old": round(paths["new"]["targets_per_s"] / paths["old"]["targets_per_s"], 2),
                "valid_ndcg@10_new_minus_old": round(paths["new"]["valid_ndcg@10"] - paths["old"]["valid_ndcg@10"], 4),
            }
    return out


def targets(datasets: dict[str, dict[str, Any]], path: str = "new") -> dict[str, dict[str, Any]]:
    """The issue's targets on `path`, each met / not met / not measured (a dataset or path missing)."""

    def tps(name: str) -> float | None:
        return datasets.get(name, {}).get("paths", {}).get(path, {}).get("targets_per_s")

    out = {}
    for name, share in (("sparse", SPARSE_MIN_SHARE), ("catalog100k", CATALOG_MIN_SHARE)):
        base, value = tps("ml100k"), tps(name)
        measured = base is not None and value is not None
        out[f"{name}_targets_per_s_share_of_ml100k"] = {
            "need": f">= {share}",
            "value": round(value / base, 3) if measured else None,
            "met": (value / base >= share) if measured else None,
        }
    return out


def markdown(results: dict[str, Any]) -> str:
    lines = [
        f"Training throughput {results['started_at']}: {results['settings']['epochs']} epochs per run, "
        f"old path = {' '.join(results['settings']['old']) or 'the defaults'}, "
        f"new path = {' '.join(results['settings']['new']) or 'the defaults'}",
        "",
        "| dataset | path | targets/s | s/epoch | train s | validation s | checkpoint s | valid NDCG@10 | wall s "
        "| outside epochs s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, result in results["datasets"].items():
        if "skipped" in result:
            lines.append(f"| {name} | skipped: {result['skipped']} | | | | | | | | |")
        for path, r in result.get("paths", {}).items():
            lines.append(
                f"| {name} | {path} | {r['targets_per_s']} | {r['seconds_per_epoch']} | {r['train_seconds_per_epoch']} "
                f"| {r['validation_seconds_per_epoch']} | {r['checkpoint_seconds_per_epoch']} | {r['valid_ndcg@10']} "
                f"| {r['wall_seconds']} | {r['outside_epochs_seconds']} |"
            )
    lines += ["", "new / old:"] + [f"- {name}: {r}" for name, r in results["ratios"].items()]
    lines += ["", "targets (new path):"] + [f"- {name}: {t}" for name, t in results["targets"].items()]
    lines += ["", f"load average at start {results['load_start']}, at end {results['load_end']}"]
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> dict[str, Any]:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "started_at": utc_now(),
        "settings": {
            "epochs": args.epochs,
            "old": args.old,
            "new": args.new,
            "common": args.common,
            "cpus": os.cpu_count(),
        },
        "load_start": [round(x, 2) for x in os.getloadavg()],
        "datasets": {},
    }
    for dataset in args.datasets:
        if dataset == "ml100k" and not ML100K_DATA.is_dir():
            results["datasets"][dataset] = {"skipped": f"{ML100K_DATA} not found"}
            print(f"{dataset}: skipped ({ML100K_DATA} not found)", flush=True)
            continue
        results["datasets"][dataset] = {"paths": {path: run_one(dataset, path, args, out) for path in args.paths}}
    results["load_end"] = [round(x, 2) for x in os.getloadavg()]
    results["ratios"] = ratios(results["datasets"])
    results["targets"] = targets(results["datasets"])
    write_json_atomic(out / "throughput.json", results)
    (out / "throughput.md").write_text(markdown(results))
    return results


def main() -> None:
    args = parse_args()
    try:
        results = run(args)
    except RaysysError as exc:
        raise SystemExit(f"train_throughput: {exc}") from None
    print(markdown(results))


if __name__ == "__main__":
    main()
