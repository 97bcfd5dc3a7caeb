"""Learning-rate schedule: linear warm-up, then constant, linear or cosine decay to zero.

scheduler = lr_scheduler(optimizer, cfg, total_steps)   # call scheduler.step() after optimizer.step()
"""

from __future__ import annotations

import math

import torch

from raysys.config import TrainingConfig


def lr_factor(step: int, warmup_steps: int, total_steps: int, schedule: str) -> float:
    """Multiplier of the base lr at optimizer step `step` (0-based).

    Warm-up ramps 1/(w) .. 1 over the first `warmup_steps` steps (never 0, so step 0 already learns);
    after it, "constant" stays at 1, "linear" and "cosine" decay to 0 at `total_steps`.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    if schedule == "linear":
        return 1.0 - progress
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown schedule {schedule!r} (constant, linear or cosine)")


def lr_scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainingConfig, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR following `lr_factor` with cfg.warmup_steps and cfg.schedule over `total_steps`."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, cfg.warmup_steps, total_steps, cfg.schedule)
    )
