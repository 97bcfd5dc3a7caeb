"""The in-process driver: any task trained in this process with the plain engine (no Ray, no checkpoints).

    outcome = train_local(cfg, "pretrain", dataset)      # or "distill" (cfg.distill.teacher = a model dir)
    outcome.model, outcome.valid, outcome.history        # best epoch's weights (eval mode), its metrics

`local_run` is the set-up a direct Tune trial shares: the task's seeded modules, the rows of every
user (this process is rank 0 of 1), the plain engine. The loop itself is `raysys.train.loop`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from raysys.config import Config
from raysys.data.dataset import PreparedDataset
from raysys.train.engines import PlainEngine
from raysys.train.loop import Run, TrainOutcome, resolve_auto, steps_per_epoch, table_rows, train_epochs
from raysys.train.state import TrainState
from raysys.train.tasks import Stage, Task, task_for
from raysys.train.tasks.base import build_modules


def global_batch(cfg: Config, stage: Stage) -> Config:
    """`cfg` with the stage's batch set to its Ray workers' global batch (`batch_size` x `num_workers`).

    An in-process stand-in for a Ray Train run (a direct Tune trial, the ablation) then takes the
    same number of optimizer steps per epoch on batches of the same size, so lr and loss weights
    chosen in-process carry over to the run with `num_workers` workers.
    """
    section = task_for(cfg, stage).section
    train_cfg = getattr(cfg, section)
    wide = train_cfg.model_copy(update={"batch_size": train_cfg.batch_size * train_cfg.num_workers})
    return cfg.model_copy(update={section: wide})


def local_run(
    task: Task, dataset: PreparedDataset, text_emb: torch.Tensor | None = None, device: torch.device | str = "cpu"
) -> Run:
    """The task set up in this process on every user's rows: seeded modules (on `device`), plain
    engine, evaluator."""
    task.check(dataset)
    text_emb = text_emb if text_emb is not None else task.text_emb(dataset)
    modules = build_modules(task, dataset, text_emb, device)
    rows, num_rows = table_rows(task, dataset.sequences(task.columns(dataset)), dataset.num_items)
    cfg = task.train_cfg
    engine = PlainEngine(modules, cfg, cfg.epochs * steps_per_epoch(num_rows, cfg.batch_size, cfg.grad_accum))
    return Run(task, engine, rows, num_rows, task.evaluator(dataset))


def train_local(
    cfg: Config,
    stage: Stage,
    dataset: PreparedDataset,
    *,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    test: bool = False,
    device: torch.device | str = "cpu",
) -> TrainOutcome:
    """Train the stage's task in this process; keep the epoch with the best validation metric.

    on_epoch(record) sees each epoch's history record as it is made; test: also measure the best
    weights on the test split (`outcome.test`); device: where the model trains (a benchmark's GPU).
    """
    run = local_run(task_for(resolve_auto(cfg, stage, dataset)[0], stage), dataset, device=device)
    state = TrainState()

    def report(state: TrainState, best: dict[str, torch.Tensor], record: dict[str, Any]) -> None:
        if on_epoch is not None:
            on_epoch(record)

    best = train_epochs(run, state, None, report, test=test)
    model = run.engine.modules.model
    model.load_state_dict(best)
    return TrainOutcome.from_state(model, state)
