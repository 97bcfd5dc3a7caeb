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

from safetensors.torch import save_file

from raysys.config import Config
from raysys.data.prepare import load_or_prepare
from raysys.models.ctr import ClickModel
from raysys.models.export import export_model_dir
from raysys.train.ray_train import fit

CLICK_MODEL_FILE = "click_model.safetensors"
DESCRIPTION = "pretrain the teacher on Ray Train workers with DeepSpeed; exports DIR/model"


def run(cfg: Config, out_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Train the teacher on `cfg.data`, export the best epoch to out_dir/model; returns the summary."""
    start = time.perf_counter()
    outcome = fit(cfg, "pretrain", out_dir)
    dataset = load_or_prepare(cfg.data, progress=False)
    model = outcome.model
    if isinstance(model, ClickModel):
        save_file(model.state_dict(), str(out_dir / CLICK_MODEL_FILE))
        model = model.encoder
    model_dir = export_model_dir(
        model,
        out_dir / "model",
        dataset,
        kind="teacher",
        model_cfg=cfg.teacher,
        max_len=cfg.data.max_len,
        metrics=outcome.metrics,
    )
    return {
        "model_dir": str(model_dir),
        "task": cfg.pretrain.task,
        **outcome.summary(cfg.pretrain, out_dir),
        "seconds": round(time.perf_counter() - start, 2),
    }
