"""`raysys finetune`: the teacher's next-item fine-tune (from a pretrained teacher) on Ray Train + DeepSpeed.

    raysys finetune --config jobs/configs/ml100k.yaml finetune.init_from=runs/pretrain/model --out runs/finetune
    raysys finetune --config jobs/configs/ml100k.yaml --out runs/teacher     # no init_from: from scratch
    raysys finetune --config jobs/configs/ml100k.yaml finetune.task=ctr finetune.init_from=runs/pretrain/model

The `finetune:` section holds its own budget (epochs, lr, warm-up, ...), so pretraining and fine-tuning
are tuned apart; otherwise the same as `raysys pretrain` with its task set to next_item: setup ->
train (resumable, early stopping on valid NDCG@10) -> DIR/model (the teacher) -> summary.json.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from raysys.config import Config
from raysys.train.ray_train import fit_and_export

DESCRIPTION = "fine-tune the teacher (next item) from a pretrained model on Ray Train workers; exports DIR/model"


def run(cfg: Config, out_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Fine-tune the teacher on `cfg.data` from `finetune.init_from`; export the best epoch to out_dir/model."""
    start = time.perf_counter()
    summary = fit_and_export(cfg, "finetune", out_dir)
    return {
        **summary,
        "task": cfg.finetune.task,
        "init_from": cfg.finetune.init_from,
        "seconds": round(time.perf_counter() - start, 2),
    }
