"""The DeepSpeed config a training section implies.

    ds_config = deepspeed_config(cfg.pretrain, use_gpu=False)
    engine, *_ = deepspeed.initialize(model=model, optimizer=adamw, lr_scheduler=schedule, config=ds_config)

The optimizer and the lr schedule are ours (torch AdamW, `raysys.train.schedule`) and passed to
`deepspeed.initialize` as client objects: DeepSpeed then never JIT-compiles its FusedAdam / CPUAdam,
and the local loop and the distributed one follow the same schedule. DeepSpeed owns what it does
better: gradient accumulation (it scales the loss by 1 / grad_accum and steps on the boundary),
global-norm clipping across ZeRO shards, and bf16 with fp32 master weights on GPU.
"""

from __future__ import annotations

from typing import Any

from raysys.config import TrainingConfig


def deepspeed_config(cfg: TrainingConfig, *, use_gpu: bool) -> dict[str, Any]:
    """The DeepSpeed config dict for `cfg`: per-worker micro-batch `cfg.batch_size`, accumulation,
    clipping and ZeRO stage from `cfg`; bf16 only on GPU (CPU kernels run fp32)."""
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": cfg.batch_size,
        "gradient_accumulation_steps": cfg.grad_accum,
        "zero_optimization": {"stage": cfg.zero_stage},
        "bf16": {"enabled": use_gpu},
        "steps_per_print": 1_000_000_000,  # our history and TensorBoard report progress
        "wall_clock_breakdown": False,
    }
    if cfg.grad_clip:
        config["gradient_clipping"] = cfg.grad_clip
    if cfg.zero_stage == 3:
        # Gather the whole (small) model for each forward instead of prefetching layer by layer;
        # the recommender's catalog embedding is used twice per step (inputs and tied scoring).
        config["zero_optimization"]["stage3_param_persistence_threshold"] = 0
    return config
