"""Does tuning pay, and does ASHA save budget? Prints the figures of the tune stage on ml-100k.

    python jobs/bench/tuning.py --config jobs/configs/tune_ml100k.yaml --samples 6 --epochs 6 --out runs/bench_tune
    python jobs/bench/tuning.py --config jobs/configs/tune_ml100k.yaml --teacher runs/ml100k-teacher/model --modes

1. teacher: --teacher DIR, or a small one pretrained here with the local loop (`--teacher-epochs`).
2. --modes: one trial of each trial mode ("direct", "ray_train") with the same epochs: seconds per trial.
3. the same random search (same seed, `--samples` trials, `--epochs` each) without and with ASHA:
   wall time, epochs trained, best valid NDCG@10.
4. test NDCG@10 of the student trained with the default config vs with the ASHA search's best.yaml,
   both by the same local loop and budget (selection on valid, test read once at the end).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from raysys.config import Config, load_config
from raysys.data.prepare import load_or_prepare
from raysys.files import write_json_atomic
from raysys.recipes import tune as tune_recipe
from raysys.run import start_run
from raysys.train.local import train_local
from raysys.train.tasks import task_for


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="jobs/configs/tune_ml100k.yaml")
    parser.add_argument("--teacher", help="teacher model directory (default: pretrain a small one here)")
    parser.add_argument("--teacher-epochs", type=int, default=8)
    parser.add_argument("--samples", type=int, default=6, help="trials per search")
    parser.add_argument("--epochs", type=int, default=6, help="epochs per trial (ASHA's max_t)")
    parser.add_argument("--modes", action="store_true", help="also time one trial of each trial mode")
    parser.add_argument("--out", default="runs/bench_tune")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    return parser.parse_args()


def pretrain_teacher(cfg: Config, out: Path, epochs: int) -> str:
    """A teacher pretrained by the in-process loop on next-item prediction; returns its model directory."""
    dataset = load_or_prepare(cfg.data, progress=False)
    cfg = cfg.model_copy(update={"pretrain": cfg.pretrain.model_copy(update={"epochs": epochs})})
    result = train_local(cfg, "pretrain", dataset)
    print(f"teacher: valid ndcg@10 {result.valid['ndcg@10']:.4f} after {len(result.history)} epochs", flush=True)
    return task_for(cfg, "pretrain").export(result.model, out / "teacher", dataset, result.metrics)["model_dir"]


def with_tune(cfg: Config, **changes: Any) -> Config:
    """`cfg` with some `tune` fields changed."""
    return cfg.model_copy(update={"tune": cfg.tune.model_copy(update=changes)})


def search(cfg: Config, out: Path) -> dict[str, Any]:
    """One `raysys tune` run into `out`; its summary plus the epochs its trials trained."""
    start_run(out, cfg)
    summary = tune_recipe.run(cfg, out)
    write_json_atomic(out / "summary.json", summary)
    return summary


def test_ndcg(cfg: Config) -> dict[str, float]:
    """Train the student of `cfg` in process; valid (selection) and test NDCG@10 of its best epoch."""
    result = train_local(cfg, "distill", load_or_prepare(cfg.data, progress=False), test=True)
    return {"valid_ndcg@10": round(result.valid["ndcg@10"], 4), "test_ndcg@10": round(result.test["ndcg@10"], 4)}


def main() -> None:
    args = parse_args()
    out = Path(args.out)
    budget = [f"tune.num_samples={args.samples}", f"distill.epochs={args.epochs}", "tune.searcher=random"]
    cfg = load_config(args.config, [*args.overrides, *budget])
    teacher = args.teacher or pretrain_teacher(cfg, out, args.teacher_epochs)
    cfg = load_config(args.config, [*args.overrides, *budget, f"distill.teacher={teacher}"])
    figures: dict[str, Any] = {"budget": {"trials": args.samples, "epochs_per_trial": args.epochs}}
    if args.modes:
        figures["modes"] = {}
        for mode in ("direct", "ray_train"):
            summary = search(with_tune(cfg, trial_mode=mode, num_samples=1, scheduler="none"), out / f"mode-{mode}")
            figures["modes"][mode] = {
                "wall_s": summary["wall_seconds"],
                "best_valid_ndcg@10": summary["best"]["valid_ndcg@10"],
            }
    for scheduler in ("none", "asha"):
        summary = search(with_tune(cfg, scheduler=scheduler), out / f"search-{scheduler}")
        figures[f"search_{scheduler}"] = {
            "wall_s": summary["wall_seconds"],
            "epochs_trained": summary["trials"]["iterations"],
            "best_valid_ndcg@10": round(summary["best"]["valid_ndcg@10"], 4),
            "best_values": summary["best"]["values"],
        }
    start = time.perf_counter()
    figures["student_default"] = test_ndcg(cfg)
    figures["student_tuned"] = test_ndcg(load_config(out / "search-asha" / "best.yaml"))
    figures["final_training_s"] = round(time.perf_counter() - start, 1)
    write_json_atomic(out / "bench_tune.json", figures)
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
