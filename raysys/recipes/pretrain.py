"""`raysys pretrain`: the teacher's self-supervised pretraining (or fine-tuning) on Ray Train + DeepSpeed.

    raysys pretrain --config jobs/configs/ml100k.yaml --out runs/teacher
    raysys pretrain --config jobs/configs/ml100k.yaml pretrain.num_workers=2 pretrain.zero_stage=2 --out runs/t2
    raysys pretrain --config jobs/configs/ml100k.yaml pretrain.task=next_item pretrain.init_from=runs/teacher/model
    raysys pretrain --config jobs/configs/ml100k.yaml pretrain.task=ctr pretrain.init_from=runs/teacher/model \
        --out runs/ctr

setup (prepared dataset) -> train (`raysys.train.ray_train.fit`: workers, checkpoints, early stopping on
valid NDCG@10, resume when DIR already holds checkpoints) -> save (DIR/model, the teacher's model
directory) -> summary.json {"model_dir", "metrics": {"valid", "test"}, "best_epoch", ...}.
Task ctr (click prediction, chosen and reported by AUC / log loss) exports the fine-tuned encoder as
DIR/model and the whole click model (encoder + head) as DIR/click_model.safetensors.
Per-epoch figures: DIR/history.jsonl and DIR/tensorboard.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from raysys.config import Config
from raysys.train.ray_train import fit_and_export

DESCRIPTION = "pretrain the teacher on Ray Train workers with DeepSpeed; exports DIR/model"


def run(cfg: Config, out_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Train the teacher on `cfg.data`, export the best epoch to out_dir/model; returns the summary."""
    start = time.perf_counter()
    summary = fit_and_export(cfg, "pretrain", out_dir)
    return {**summary, "task": cfg.pretrain.task, "seconds": round(time.perf_counter() - start, 2)}
