"""`raysys tune`: Ray Tune search over the distill stage's lr, weight decay, loss weights, KD temperature
and dropout (or over pretraining, `tune.stage=pretrain`), maximising validation NDCG@10.

    raysys tune --config jobs/configs/tune_ml100k.yaml distill.teacher=runs/teacher/model --out runs/tune
    raysys tune --config jobs/configs/tune_ml100k.yaml tune.searcher=optuna tune.scheduler=asha tune.num_samples=16
    raysys distill --config runs/tune/best.yaml --out runs/student-tuned     # the best trial, re-run as is

The same command with the same --out after a crash resumes the search (`Tuner.restore`): finished
trials are kept, the others continue from their last checkpoint.

Trial mode (`tune.trial_mode`). "direct" trains the student inside the trial process; "ray_train"
launches a Ray Train run (workers, DeepSpeed, gloo, a Ray Data pipeline) from each trial. "direct" is
the default: it is the only mode PBT can use (checkpoints restored with a changed config), and on one
machine it pays no per-trial trainer start-up or gradient all-reduce. Measured on ml-100k on the
2-core machine (`python jobs/bench/tuning.py --modes`, one trial of 8 epochs, the same values): direct
134 s, ray_train 133 s (2 workers of 0.5 CPU) -- the same wall time, but ray_train's 2 x 128 global
batch takes half the optimizer steps per epoch and reached valid NDCG@10 0.064 against direct's
0.082. On a cluster, "ray_train" lets one trial span several nodes and GPUs.

setup (Ray, dashboard address) -> search (`raysys.tune.search.run_search`) -> save (best.yaml,
results.csv, plots/*.png; Tune's TensorBoard events per trial under RUN/tune) -> summary.json.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from raysys.config import Config
from raysys.console import console
from raysys.data.prepare import load_or_prepare
from raysys.errors import RaysysError
from raysys.train.loop import resolve_auto
from raysys.tune.results import trial_table, write_best_config, write_plots, write_table
from raysys.tune.search import experiment_dir, run_search
from raysys.tune.trainable import objective

DESCRIPTION = "search lr, weight decay, loss weights, KD temperature and dropout with Ray Tune; writes DIR/best.yaml"


def run(cfg: Config, out_dir: Path, args: argparse.Namespace | None = None) -> dict[str, Any]:
    """Run or resume the search into out_dir; write best.yaml, results.csv, plots; returns the summary."""
    start = time.perf_counter()
    dashboard = start_ray()
    console.say(f"raysys tune: Ray dashboard at {dashboard or '(not running)'}")
    dataset = load_or_prepare(cfg.data, progress=False)
    cfg, resolved = resolve_auto(cfg, cfg.tune.stage, dataset)
    if resolved:
        cfg.save(out_dir / "config.yaml")  # the resolved config (and best.yaml) hold what "auto" became
    grid = run_search(cfg, out_dir, dataset)
    table = trial_table(grid, cfg)
    metric = objective(cfg)
    if table[f"best_{metric}"].isna().all():
        raise RaysysError(f"no trial reported {metric}", where=str(out_dir / "tune"), hint=_first_error(grid))
    best_cfg, best_path = write_best_config(table, cfg, out_dir)
    results_path = write_table(table, out_dir)
    plots = write_plots(grid, table, cfg, out_dir)
    best = table.iloc[0]
    return {
        "best_config": str(best_path),
        "best": {
            "trial_id": best["trial_id"],
            metric: float(best[f"best_{metric}"]),
            "values": {key: _plain(best[key]) for key in cfg.tune.space if key in best},
        },
        "trials": {
            "total": len(table),
            "terminated": int((table["status"] == "TERMINATED").sum()),
            "errored": int((table["status"] == "ERROR").sum()),
            "iterations": int(table["iterations"].sum()),
        },
        **({"resolved": resolved} if resolved else {}),
        "searcher": cfg.tune.searcher,
        "scheduler": cfg.tune.scheduler,
        "trial_mode": cfg.tune.trial_mode,
        "results": str(results_path),
        "plots": [str(p) for p in plots],
        "experiment_dir": str(experiment_dir(out_dir)),
        "tensorboard": f"tensorboard --logdir {out_dir}",
        "dashboard": dashboard,
        "wall_seconds": round(time.perf_counter() - start, 2),
        "distill_command": f"raysys distill --config {best_path}" if best_cfg.tune.stage == "distill" else None,
    }


def start_ray() -> str | None:
    """Join the Ray cluster (RAY_ADDRESS, or the one already started; raysys.cluster.init_ray), else start
    a local one with its dashboard; returns the dashboard address."""
    from ray._private.worker import get_dashboard_url

    from raysys.cluster import init_ray

    init_ray(include_dashboard=True, configure_logging=False)
    return get_dashboard_url() or None


def _first_error(grid) -> str:
    errors = [str(result.error).splitlines()[0] for result in grid if result.error is not None]
    return f"first trial error: {errors[0]}" if errors else "check the trial logs"


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value
