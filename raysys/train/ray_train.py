"""Distributed training on Ray Train with DeepSpeed: any task (the teacher's pretraining, the student's
distillation, click prediction) on `<section>.num_workers` workers.

    outcome = fit(cfg, "pretrain", out_dir, dataset)   # or "distill" (cfg.distill.teacher = a model directory)
    outcome.model, outcome.valid, outcome.test         # best epoch's weights (plain module) and its metrics

The driver hands the prepared sequences (a Ray Dataset streamed from the Parquet shards) to a
`TorchTrainer`; Ray splits the users equally and each worker reads only its shard, once, and cuts
its training rows from it (`raysys.train.loop.table_rows`). The story of a worker
(`train_loop_per_worker`):

    build the task's modules (same seed everywhere) -> DeepSpeed engine (ZeRO 0-3, our AdamW and lr
    schedule) -> resume from the newest complete checkpoint -> `train_epochs`, the loop every driver
    runs: per epoch train, consolidate the weights, validate (each rank scores its share of the users,
    one all_reduce), keep the best, checkpoint + ray.train.report; after the last epoch the test
    metrics of the best weights go into the last checkpoint.

Checkpoints and resume: `raysys.train.checkpoint`. Rank 0 writes `history.jsonl` and TensorBoard
events into the run directory (`raysys.train.history`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import torch

from raysys.config import Config, config_from_dict
from raysys.console import follow_history
from raysys.data.dataset import PreparedDataset
from raysys.errors import RaysysError
from raysys.models.common import mark_id_less
from raysys.train import checkpoint as ckpt
from raysys.train.engines import DeepSpeedEngine
from raysys.train.history import TensorBoardLog, write_history
from raysys.train.loop import (
    FailureInjection,
    Run,
    TrainOutcome,
    count_windows,
    resolve_auto,
    resolve_new_item_boost,
    steps_per_epoch,
    table_rows,
    train_epochs,
)
from raysys.train.state import TrainState
from raysys.train.tasks import Stage, Task, task_for
from raysys.train.tasks.base import build_modules

RAY_RUN_NAME = "ray_train"  # the Ray Train run folder inside the stage's run directory
FAIL_MARKER = "injected_failure_done"


# --------------------------------------------------------------------------------------- driver


def fit(
    cfg: Config,
    stage: Stage,
    out_dir: Path,
    dataset: PreparedDataset | None = None,
    *,
    fail_in_epoch: int | None = None,
    callbacks: list | None = None,
    progress: bool = True,
) -> TrainOutcome:
    """Train the stage's task on Ray Train workers; resume from `out_dir`'s checkpoints if any.

    dataset: the stage's prepared dataset (resolved from `cfg.data` when not given).
    fail_in_epoch: fault injection for tests: rank 1 (or 0 with one worker) exits hard once, after that
    epoch's first step.
    callbacks: Ray Train run callbacks, e.g. Tune's `TuneReportCallback()` when a Tune trial runs `fit`.
    progress: print an epoch line on the console as rank 0 writes each history record.
    """
    if dataset is None:
        from raysys.data.prepare import load_or_prepare

        dataset = load_or_prepare(cfg.data, progress=False)
    cfg, _ = resolve_auto(cfg, stage, dataset)
    task = task_for(cfg, stage)
    task.check(dataset)
    train_cfg = task.train_cfg
    if count_windows(dataset, cfg.data.max_len)[0] < train_cfg.num_workers:
        raise RaysysError("too few training windows for the workers", where=f"{task.section}.num_workers")
    text_emb = task.text_emb(dataset)
    loop_config = {
        "cfg": cfg.to_dict(),
        "stage": stage,
        "dataset_path": str(dataset.path),
        "text_emb": text_emb,
        "run_dir": str(out_dir.resolve()),
        "fail_in_epoch": fail_in_epoch,
    }
    sequences = dataset.ray_dataset(columns=task.columns(dataset))
    trainer = _make_trainer(task, loop_config, sequences, out_dir, callbacks or [])
    if progress:
        with follow_history(out_dir, task.model_section, train_cfg.epochs):
            result = trainer.fit()
    else:
        result = trainer.fit()
    return _outcome(task, dataset, text_emb, Path(result.checkpoint.path))


def fit_and_export(cfg: Config, stage: Stage, out_dir: Path) -> dict[str, Any]:
    """What `raysys pretrain` and `raysys distill` do: resolve the dataset once, `fit`, export the best
    model (`out_dir/model`); returns the summary entries (model_dir, metrics, epochs, steps, ...)."""
    from raysys.data.prepare import load_or_prepare

    dataset = load_or_prepare(cfg.data, progress=False)
    cfg, resolved = resolve_auto(cfg, stage, dataset)
    if resolved and (out_dir / "config.yaml").is_file():
        cfg.save(out_dir / "config.yaml")  # the run's resolved config holds what "auto" became
    outcome = fit(cfg, stage, out_dir, dataset)
    cfg, boost = resolve_new_item_boost(cfg, task_for(cfg, stage), outcome, dataset)
    if boost and (out_dir / "config.yaml").is_file():
        cfg.save(out_dir / "config.yaml")
    resolved.update(boost)
    task = task_for(cfg, stage)
    summary = {**task.export(outcome.model, out_dir, dataset, outcome.metrics), **outcome.summary(task, out_dir)}
    return {**summary, "resolved": resolved} if resolved else summary


def _make_trainer(task: Task, loop_config: dict[str, Any], sequences, out_dir: Path, callbacks: list):
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    train_cfg = task.train_cfg
    options = DataConfig.default_ingest_options()
    options.preserve_order = True  # the same seed gives the same shards
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        torch_config=TorchConfig(backend="nccl" if train_cfg.use_gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=train_cfg.num_workers,
            use_gpu=train_cfg.use_gpu,
            resources_per_worker={"CPU": train_cfg.cpus_per_worker},
            placement_strategy=train_cfg.placement_strategy,
        ),
        run_config=RunConfig(
            name=RAY_RUN_NAME,
            storage_path=str(out_dir.resolve()),
            checkpoint_config=CheckpointConfig(num_to_keep=train_cfg.num_to_keep),
            failure_config=FailureConfig(max_failures=train_cfg.max_failures),
            callbacks=callbacks,
        ),
        datasets={"train": sequences},
        dataset_config=DataConfig(execution_options=options),
    )


def _outcome(task: Task, dataset: PreparedDataset, text_emb: torch.Tensor | None, path: Path) -> TrainOutcome:
    """Rebuild the best model and read its figures from the run's last checkpoint."""
    from safetensors.torch import load_file

    state = TrainState.from_dict(ckpt.read_state(path))
    model = task.build_model(dataset.num_items, text_emb)
    model.load_state_dict(load_file(str(path / ckpt.BEST_WEIGHTS_FILE)))
    mark_id_less(task.sequence_model(model).items)  # as a loaded model directory is (new_item_boost)
    return TrainOutcome.from_state(model, state, checkpoint=path)


# --------------------------------------------------------------------------------------- worker


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """The Ray Train worker function (see the module docstring); config is `fit`'s loop_config."""
    import ray.train

    cfg = config_from_dict(config["cfg"])
    task = task_for(cfg, config["stage"])
    train_cfg = task.train_cfg
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    dataset = PreparedDataset.open(config["dataset_path"])
    text_emb, device = config["text_emb"], "cuda" if train_cfg.use_gpu else "cpu"
    modules = build_modules(task, dataset, text_emb, device)
    eval_model = task.build_model(dataset.num_items, text_emb)
    shard = read_shard(ray.train.get_dataset_shard("train"), dataset, task.columns(dataset))
    rows, num_rows = table_rows(task, shard, dataset.num_items)
    total_steps = train_cfg.epochs * steps_per_epoch(num_rows, train_cfg.batch_size, train_cfg.grad_accum)
    engine = DeepSpeedEngine(modules, train_cfg, total_steps, eval_model.to(device))
    run_dir = Path(config["run_dir"])
    found = ckpt.find_resume_checkpoint(_latest_checkpoint(), run_dir / RAY_RUN_NAME)
    state, best = ckpt.load(engine, found) if found is not None else (TrainState(), None)
    fail = None
    if config["fail_in_epoch"] is not None:
        fail = FailureInjection(config["fail_in_epoch"], run_dir / FAIL_MARKER, rank=min(1, world_size - 1))
    run = Run(task, engine, rows, num_rows, task.evaluator(dataset), rank, fail)
    board = TensorBoardLog(run_dir, purge_step=state.step or None) if rank == 0 else None

    def report(state: TrainState, best: dict[str, torch.Tensor], record: dict[str, Any]) -> None:
        """This rank's part of the checkpoint (manifest last), reported with the epoch's record; the
        record also gets the seconds this rank took to write its part (`checkpoint_seconds`)."""
        start = time.perf_counter()
        with ckpt.written(engine, state, best, rank=rank, world_size=world_size) as folder:
            record["checkpoint_seconds"] = round(time.perf_counter() - start, 3)
            checkpoint = ray.train.Checkpoint.from_directory(str(folder))
            ray.train.report(record, checkpoint=checkpoint, checkpoint_dir_name=ckpt.checkpoint_dir_name(state.step))
        if board is not None:
            write_history(run_dir, state.history)
            board.log(record, state.step)

    train_epochs(run, state, best, report, test=True)
    if board is not None:
        board.close()


def read_shard(shard, dataset: PreparedDataset, columns: list[str]) -> pa.Table:
    """This worker's shard of the sequences table, read once (the rows are cut from it in memory)."""
    tables = list(shard.iter_batches(batch_size=None, batch_format="pyarrow"))
    return pa.concat_tables(tables) if tables else dataset.sequences_schema(columns).empty_table()


def _latest_checkpoint() -> Path | None:
    import ray.train

    latest = ray.train.get_checkpoint()
    return Path(latest.path) if latest else None
