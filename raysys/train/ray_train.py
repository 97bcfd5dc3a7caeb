"""Distributed training on Ray Train with DeepSpeed: the teacher's pretraining and the student's distillation.

    outcome = fit(cfg, "pretrain", out_dir)     # or "distill" (cfg.distill.teacher = a model directory)
    outcome.model, outcome.valid, outcome.test  # best epoch's weights (plain module) and its metrics

The driver turns the prepared dataset into a Ray Dataset of training windows (streamed from the
Parquet shards, `windows_from_ray_batch`) and hands it to a `TorchTrainer`; each worker reads only its
shard (`get_dataset_shard`). The story of a worker (`train_loop_per_worker`):

    build model (same seed everywhere) -> torch AdamW + lr schedule -> deepspeed.initialize
    -> resume from the newest complete checkpoint -> per epoch:
         micro-batches: loss_fn(model) -> engine.backward (1/grad_accum) -> engine.step (clip, AdamW,
         lr schedule on the accumulation boundary)
         -> consolidate the weights into a plain copy -> validation NDCG@10 (each rank scores its
         share of the users, one all_reduce) -> keep the best -> checkpoint + ray.train.report
         -> stop after `patience` epochs without a better one
    -> in the last epoch, test metrics of the best weights (distributed the same way) go into the
       last checkpoint.

Checkpoints and resume: see `raysys.train.checkpoint`. Rank 0 writes `history.jsonl` and TensorBoard
events into the run directory (`raysys.train.history`).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from raysys.config import Config, DistillConfig, PretrainConfig, config_from_dict
from raysys.data.batches import (
    ctr_eval_pairs,
    ctr_rows_from_ray_batch,
    next_item_batch,
    pretrain_batch,
    windows_from_ray_batch,
)
from raysys.data.dataset import PreparedDataset
from raysys.errors import RaysysError
from raysys.eval.evaluator import train_items
from raysys.eval.metrics import auc, log_loss
from raysys.models.common import SequenceModel
from raysys.models.ctr import ClickModel
from raysys.models.export import load_model_dir, read_model_config
from raysys.models.student import build_student
from raysys.models.teacher import build_teacher
from raysys.objectives.distillation import HiddenAlignment
from raysys.objectives.joint import check_pretrain_objectives
from raysys.train import checkpoint as ckpt
from raysys.train.deepspeed_config import deepspeed_config
from raysys.train.history import HISTORY_FILE, TensorBoardLog, write_history
from raysys.train.local import (
    VALID_METRIC,
    LossFn,
    make_loss_fn,
    make_optimizer,
    objective_config,
    pin_unseen_item_ids,
    seed_everything,
    validate,
)
from raysys.train.schedule import lr_scheduler

Stage = Literal["pretrain", "distill"]
CTR_METRIC = "auc"  # model selection of the click-prediction task
RAY_RUN_NAME = "ray_train"  # the Ray Train run folder inside the stage's run directory
FAIL_MARKER = "injected_failure_done"


@dataclass
class TrainOutcome:
    """What `fit` returns: the best epoch's model (plain module, eval mode) and its figures."""

    model: SequenceModel | ClickModel  # ClickModel for pretrain.task=ctr
    valid: dict[str, float]
    test: dict[str, float]
    best_epoch: int
    epochs_run: int
    optimizer_steps: int
    checkpoint: Path  # the Ray checkpoint the model came from

    @property
    def metrics(self) -> dict[str, dict[str, float]]:
        """{"valid": ..., "test": ...}: what the exported model directory and summary.json carry."""
        return {"valid": self.valid, "test": self.test}

    def summary(self, section: PretrainConfig | DistillConfig, out_dir: Path) -> dict[str, Any]:
        """The run's entries of summary.json: metrics, epochs, steps, workers, ZeRO stage, history file."""
        return {
            "metrics": self.metrics,
            "best_epoch": self.best_epoch,
            "epochs_run": self.epochs_run,
            "optimizer_steps": self.optimizer_steps,
            "num_workers": section.num_workers,
            "zero_stage": section.zero_stage,
            "history": str(out_dir / HISTORY_FILE),
        }


class TrainedModules(nn.Module):
    """What DeepSpeed trains: the model, plus the student->teacher hidden projection when on."""

    def __init__(self, model: SequenceModel, alignment: HiddenAlignment | None) -> None:
        super().__init__()
        self.model = model
        self.alignment = alignment


# --------------------------------------------------------------------------------- shared helpers


def stage_section(cfg: Config, stage: Stage) -> PretrainConfig | DistillConfig:
    """The training section of `stage`, with the objective weights its task implies."""
    return objective_config(cfg.pretrain) if stage == "pretrain" else cfg.distill


def is_ctr(cfg: Config, stage: Stage) -> bool:
    """Whether the stage fine-tunes the click-prediction head (pretrain.task=ctr)."""
    return stage == "pretrain" and cfg.pretrain.task == "ctr"


def valid_metric(cfg: Config, stage: Stage) -> str:
    """The validation metric that picks the best epoch: NDCG@10, or AUC for click prediction."""
    return CTR_METRIC if is_ctr(cfg, stage) else VALID_METRIC


def build_stage_model(
    cfg: Config, stage: Stage, num_items: int, text_emb: torch.Tensor | None
) -> SequenceModel | ClickModel:
    """The teacher (pretrain; wrapped with a click head for task ctr) or the student (distill)."""
    if is_ctr(cfg, stage):
        return ClickModel(build_teacher(cfg.teacher, num_items, cfg.data.max_len, text_emb=text_emb))
    if stage == "pretrain":
        return build_teacher(cfg.teacher, num_items, cfg.data.max_len, text_emb=text_emb)
    return build_student(cfg.student, num_items, cfg.data.max_len, text_emb=text_emb)


def stage_text_emb(cfg: Config, stage: Stage, dataset: PreparedDataset) -> torch.Tensor | None:
    """[num_items, text_dim] item-text table when the stage's model uses text, else None."""
    model_cfg = cfg.teacher if stage == "pretrain" else cfg.student
    if not model_cfg.use_text:
        return None
    from raysys.models.text_encoder import item_text_embeddings, text_emb_tensor

    table = item_text_embeddings(dataset, progress=False)
    if table is None:
        section = "teacher" if stage == "pretrain" else "student"
        raise RaysysError(
            "the dataset has no item text", where=f"{section}.use_text", hint=f"set {section}.use_text=false"
        )
    return text_emb_tensor(table, dataset.num_items)


def count_windows(dataset: PreparedDataset, max_len: int) -> int:
    """Number of training windows `windows_from_ray_batch` cuts (reads only the train_len column)."""
    train_len = dataset.sequences(["train_len"])["train_len"].to_numpy().astype(np.int64)
    return int(np.where(train_len >= 2, -(-(train_len - 1) // max_len), 0).sum())


def count_ctr_pairs(dataset: PreparedDataset, cfg: PretrainConfig) -> int:
    """Number of click-prediction training rows `ctr_rows_from_ray_batch` makes (see `ctr_pairs`)."""
    columns = ["train_len", "ratings"] if dataset.manifest.get("has_ratings") else ["train_len"]
    table = dataset.sequences(columns)
    train_len = table["train_len"].to_numpy().astype(np.int64)
    pairs = int(np.maximum(train_len - 1, 0).sum())
    if "ratings" in columns:
        ratings = [r[1:n] for r, n in zip(table["ratings"].to_numpy(zero_copy_only=False), train_len, strict=True)]
        if any((np.asarray(r) < cfg.ctr_rating_threshold).any() for r in ratings):
            return pairs  # explicit non-clicks: one row per item with a history
    return pairs * (1 + cfg.ctr_negatives)


def micro_batches_per_epoch(num_windows: int, cfg: PretrainConfig | DistillConfig) -> int:
    """Micro-batches each worker sees per epoch (Ray splits the windows equally, dropping the rest)."""
    return math.ceil((num_windows // cfg.num_workers) / cfg.batch_size)


# --------------------------------------------------------------------------------------- driver


def fit(
    cfg: Config, stage: Stage, out_dir: Path, *, fail_at_step: int | None = None, callbacks: list | None = None
) -> TrainOutcome:
    """Train the stage's model on Ray Train workers; resume from `out_dir`'s checkpoints if any.

    fail_at_step: fault injection for tests, rank 1 (or 0 with one worker) exits hard once at that step.
    callbacks: Ray Train run callbacks, e.g. Tune's `TuneReportCallback()` when a Tune trial runs `fit`.
    """
    from raysys.data.prepare import load_or_prepare

    train_cfg = stage_section(cfg, stage)
    dataset = load_or_prepare(cfg.data, progress=False)
    _check_stage(cfg, stage, dataset)
    text_emb = stage_text_emb(cfg, stage, dataset)
    ctr = is_ctr(cfg, stage)
    num_windows = count_ctr_pairs(dataset, cfg.pretrain) if ctr else count_windows(dataset, cfg.data.max_len)
    if num_windows // train_cfg.num_workers == 0:
        raise RaysysError("too few training windows for the workers", where=f"{stage}.num_workers")
    steps_per_epoch = math.ceil(micro_batches_per_epoch(num_windows, train_cfg) / train_cfg.grad_accum)
    loop_config = {
        "cfg": cfg.to_dict(),
        "stage": stage,
        "dataset_path": str(dataset.path),
        "text_emb": text_emb,
        "seen_items": train_items(dataset) if text_emb is not None else None,
        "total_steps": steps_per_epoch * train_cfg.epochs,
        "run_dir": str(out_dir.resolve()),
        "fail_at_step": fail_at_step,
    }
    windows = ctr_dataset(dataset, cfg) if ctr else windows_dataset(dataset, cfg.data.max_len)
    trainer = _make_trainer(train_cfg, loop_config, windows, out_dir, callbacks or [])
    result = trainer.fit()  # raises when the workers fail more than max_failures times
    return _outcome(cfg, stage, dataset, text_emb, result)


def windows_dataset(dataset: PreparedDataset, max_len: int):
    """Ray Dataset of training windows, one row {"window": [max_len + 1] int64}, streamed from Parquet."""
    sequences = dataset.ray_dataset(columns=["items", "train_len"])
    return sequences.map_batches(windows_from_ray_batch, fn_kwargs={"max_len": max_len}, batch_format="numpy")


def ctr_dataset(dataset: PreparedDataset, cfg: Config):
    """Ray Dataset of click-prediction rows {"input_ids" [max_len], "candidates", "labels"}."""
    columns = ["user_index", "items", "train_len"] + (["ratings"] if dataset.manifest.get("has_ratings") else [])
    kwargs = {
        "max_len": cfg.data.max_len,
        "num_items": dataset.num_items,
        "seed": cfg.pretrain.seed,
        "rating_threshold": cfg.pretrain.ctr_rating_threshold,
        "negatives_per_click": cfg.pretrain.ctr_negatives,
    }
    return dataset.ray_dataset(columns=columns).map_batches(
        ctr_rows_from_ray_batch, fn_kwargs=kwargs, batch_format="numpy"
    )


def ctr_split(dataset: PreparedDataset, split: str, cfg: Config) -> dict[str, np.ndarray]:
    """Click-prediction examples of the valid or test split (`ctr_eval_pairs`), the same on every rank."""
    examples = dataset.split(split)
    ratings = None
    if dataset.manifest.get("has_ratings"):
        table = dataset.sequences(["ratings", "train_len"])
        rows = table["ratings"].to_numpy(zero_copy_only=False)[examples.user_index]
        offset = table["train_len"].to_numpy()[examples.user_index] + (0 if split == "valid" else 1)
        ratings = np.array([float(r[i]) for r, i in zip(rows, offset, strict=True)], dtype=np.float32)
    rng = np.random.default_rng([cfg.pretrain.seed, 0 if split == "valid" else 1])
    return ctr_eval_pairs(
        examples.histories,
        examples.targets,
        ratings,
        cfg.data.max_len,
        dataset.num_items,
        rng,
        cfg.pretrain.ctr_rating_threshold,
    )


@torch.no_grad()
def validate_ctr(model: ClickModel, pairs: dict[str, np.ndarray], batch_size: int = 1024) -> dict[str, float]:
    """AUC and log loss of `model`'s click probabilities on labelled pairs."""
    model.eval()
    probs = [
        model.click_probability(
            torch.from_numpy(pairs["input_ids"][i : i + batch_size]),
            torch.from_numpy(pairs["candidates"][i : i + batch_size]),
        )
        for i in range(0, len(pairs["labels"]), batch_size)
    ]
    p = torch.cat(probs).numpy()
    return {"auc": auc(pairs["labels"], p), "log_loss": log_loss(pairs["labels"], p), "num_pairs": float(p.size)}


def _make_trainer(
    train_cfg: PretrainConfig | DistillConfig, loop_config: dict[str, Any], windows, out_dir: Path, callbacks: list
):
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

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
        datasets={"train": windows},
        dataset_config=_data_config(),
    )


def _data_config():
    """Ray Train's ingest config with block order preserved: the same seed gives the same shards."""
    from ray.train import DataConfig

    options = DataConfig.default_ingest_options()
    options.preserve_order = True
    return DataConfig(execution_options=options)


def _check_stage(cfg: Config, stage: Stage, dataset: PreparedDataset) -> None:
    """Fail early, on the driver, for settings the workers would fail on."""
    if stage == "pretrain":
        if cfg.pretrain.task == "ctr":
            return
        check_pretrain_objectives(stage_section(cfg, stage), cfg.teacher.arch != "bert")
        return
    if cfg.distill.teacher is None:
        if cfg.distill.lambda_kd > 0 or cfg.distill.lambda_hidden > 0:
            raise RaysysError("distillation needs a teacher", where="distill.teacher", hint="distill.teacher=RUN/model")
        return
    teacher = read_model_config(Path(cfg.distill.teacher))
    if int(teacher["num_items"]) != dataset.num_items:
        raise RaysysError(
            f"the teacher scores {teacher['num_items']} items, the dataset has {dataset.num_items}",
            where="distill.teacher",
            hint="distil on the dataset the teacher was trained on",
        )


def _outcome(
    cfg: Config, stage: Stage, dataset: PreparedDataset, text_emb: torch.Tensor | None, result
) -> TrainOutcome:
    """Rebuild the best model and read its metrics from the run's last checkpoint."""
    from safetensors.torch import load_file

    path = Path(result.checkpoint.path)
    state = ckpt.read_state(path)
    model = build_stage_model(cfg, stage, dataset.num_items, text_emb)
    model.load_state_dict(load_file(str(path / ckpt.BEST_WEIGHTS_FILE)))
    return TrainOutcome(
        model=model.eval(),
        valid=state["best_valid"],
        test=state["test"],
        best_epoch=state["best_epoch"],
        epochs_run=state["epoch"],
        optimizer_steps=state["global_step"],
        checkpoint=path,
    )


# --------------------------------------------------------------------------------------- worker


@dataclass
class WorkerState:
    """What a checkpoint carries besides DeepSpeed's own state (rank 0 writes it)."""

    epoch: int = 0
    global_step: int = 0
    best_epoch: int = 0
    best_valid: dict[str, float] | None = None
    bad_epochs: int = 0  # epochs since the best one
    history: list[dict[str, Any]] | None = None
    test: dict[str, float] | None = None  # set in the last epoch
    resumed_from: list[int] | None = None  # the global step of each checkpoint this run resumed from

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "history": self.history or [], "resumed_from": self.resumed_from or []}


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """The Ray Train worker function (see the module docstring); config is `fit`'s loop_config."""
    import ray.train

    cfg, stage = config_from_dict(config["cfg"]), config["stage"]
    train_cfg = stage_section(cfg, stage)
    deepspeed = import_deepspeed(train_cfg.use_gpu)
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    dataset = PreparedDataset.open(config["dataset_path"])
    seed_everything(train_cfg.seed)  # the same initial weights on every rank
    modules, teacher = _build_modules(cfg, stage, dataset.num_items, config)
    optimizer = make_optimizer([modules], train_cfg)
    scheduler = lr_scheduler(optimizer, train_cfg, config["total_steps"])
    engine, *_ = deepspeed.initialize(
        model=modules,
        optimizer=optimizer,
        lr_scheduler=scheduler,
        config=deepspeed_config(train_cfg, use_gpu=train_cfg.use_gpu),
        dist_init_required=False,
    )
    run_dir = Path(config["run_dir"])
    state, best_weights = _restore(engine, run_dir / RAY_RUN_NAME)
    generator = torch.Generator().manual_seed(train_cfg.seed * 1000 + rank + state.epoch)
    loss_fn = make_loss_fn(train_cfg, teacher=teacher, alignment=modules.alignment, generator=generator)
    eval_model = build_stage_model(cfg, stage, dataset.num_items, config["text_emb"])
    board = TensorBoardLog(run_dir, purge_step=state.global_step or None) if rank == 0 else None
    shard = ray.train.get_dataset_shard("train")
    evaluate = _evaluator(cfg, stage, dataset)
    fail = _failure_injection(config, rank, world_size, run_dir)
    for epoch in range(state.epoch + 1, train_cfg.epochs + 1):
        rng = np.random.default_rng([train_cfg.seed, rank, epoch])
        terms = _train_epoch(engine, _epoch_batches(shard, train_cfg, rng), loss_fn, fail)
        weights = consolidated_state(engine, deepspeed)
        eval_model.load_state_dict(weights)
        metrics = evaluate(eval_model, "valid")
        record = {"epoch": epoch, "step": engine.global_steps, **terms}
        record.update({f"valid_{k}": v for k, v in metrics.items() if k not in ("num_users", "num_pairs")})
        if _update_state(state, epoch, engine.global_steps, metrics, record, valid_metric(cfg, stage)):
            best_weights = weights
        finished = epoch == train_cfg.epochs or state.bad_epochs >= train_cfg.patience
        if finished:  # test metrics of the best weights travel in the last checkpoint
            eval_model.load_state_dict(best_weights)
            state.test = evaluate(eval_model, "test")
        _save_and_report(engine, state, best_weights, record, rank, world_size)
        if rank == 0:
            write_history(run_dir, state.history or [])
            board.log(record, engine.global_steps)
        if finished:
            break
    if board is not None:
        board.close()


def _evaluator(cfg: Config, stage: Stage, dataset: PreparedDataset):
    """evaluate(model, split) -> metrics: full-ranking metrics, or AUC / log loss for click prediction."""
    if is_ctr(cfg, stage):
        pairs = {split: ctr_split(dataset, split, cfg) for split in ("valid", "test")}
        return lambda model, split: validate_ctr(model, pairs[split])
    splits = {split: dataset.split(split) for split in ("valid", "test")}
    return lambda model, split: validate(model, splits[split], dataset.num_items, cfg.eval, cfg.data.max_len)


def import_deepspeed(use_gpu: bool):
    """DeepSpeed, imported inside the worker: its accelerator is chosen at import (CPU unless the
    workers have GPUs), and the C++ op it builds on first use goes to a shared cache instead of each
    worker's home."""
    if not use_gpu:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    repo = Path(__file__).resolve().parents[2]
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(repo / ".cache" / "torch_extensions"))
    import deepspeed

    deepspeed.init_distributed(dist_backend="nccl" if use_gpu else "gloo", auto_mpi_discovery=False)
    return deepspeed


def _build_modules(
    cfg: Config, stage: Stage, num_items: int, config: dict[str, Any]
) -> tuple[TrainedModules, SequenceModel | None]:
    """The trained modules (model [+ alignment]) and the frozen teacher (distill) or None."""
    model = build_stage_model(cfg, stage, num_items, config["text_emb"])
    sequence_model = model.encoder if isinstance(model, ClickModel) else model
    if stage == "pretrain" and cfg.pretrain.init_from:
        sequence_model.load_state_dict(load_model_dir(cfg.pretrain.init_from).model.state_dict())
    if config["seen_items"] is not None:
        # Hold unseen items' ID vectors at zero, as the local loop does (see pin_unseen_item_ids).
        pin_unseen_item_ids(sequence_model, [config["seen_items"]])
    teacher, alignment = None, None
    if stage == "distill" and cfg.distill.teacher:
        device = "cuda" if cfg.distill.use_gpu else "cpu"  # Ray Train sets each GPU worker's device
        teacher = load_model_dir(cfg.distill.teacher, device=device).model.eval().requires_grad_(False)
        if cfg.distill.lambda_hidden > 0:
            alignment = HiddenAlignment(model.hidden_size, teacher.hidden_size)
    return TrainedModules(model, alignment), teacher


def _epoch_batches(
    shard, cfg: PretrainConfig | DistillConfig, rng: np.random.Generator
) -> Iterator[dict[str, torch.Tensor]]:
    """This worker's shard of the windows, shuffled locally, as training batches [B, max_len]
    (click-prediction rows pass through as they are)."""
    for rows in shard.iter_batches(
        batch_size=cfg.batch_size,
        batch_format="numpy",
        local_shuffle_buffer_size=10 * cfg.batch_size,
        local_shuffle_seed=int(rng.integers(2**31)),
    ):
        if "candidates" in rows:
            yield {
                key: torch.from_numpy(np.ascontiguousarray(rows[key])) for key in ("input_ids", "candidates", "labels")
            }
            continue
        windows = rows["window"]  # [B, max_len + 1]
        arrays = pretrain_batch(windows, cfg, rng) if isinstance(cfg, PretrainConfig) else next_item_batch(windows)
        yield {key: torch.from_numpy(value) for key, value in arrays.items()}


def engine_step(engine, batch: dict[str, torch.Tensor], loss_fn: LossFn) -> dict[str, float]:
    """One micro-batch through the DeepSpeed engine: loss, backward (DeepSpeed scales it by
    1/grad_accum), step (on the accumulation boundary: clip, AdamW, lr schedule, zero grads).

    Returns the loss terms as floats, plus "lr" and "grad_norm" when the weights were updated.
    """
    batch = {key: value.to(engine.device, non_blocking=True) for key, value in batch.items()}
    terms = loss_fn(engine.module.model, batch)
    engine.backward(terms["loss"])
    boundary = engine.is_gradient_accumulation_boundary()
    lr = engine.get_lr()[0]
    # Without ZeRO, DeepSpeed clips without keeping the norm; the gradients are all-reduced on the
    # boundary's backward, so the local norm is the global one. ZeRO computes it over the shards.
    local_norm = _grad_norm(engine.module) if boundary and engine.zero_optimization_stage() == 0 else None
    engine.step()
    metrics = {name: float(value.detach()) for name, value in terms.items()}
    if boundary:
        norm = local_norm if local_norm is not None else engine.get_global_grad_norm()
        metrics.update(lr=lr, grad_norm=float(norm) if norm is not None else 0.0)
    return metrics


def _grad_norm(module: nn.Module) -> float:
    """Global 2-norm of the gradients held by `module`'s parameters (before clipping)."""
    grads = [p.grad.detach() for p in module.parameters() if p.grad is not None]
    return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))) if grads else 0.0


def _train_epoch(engine, batches: Iterator[dict[str, torch.Tensor]], loss_fn: LossFn, fail) -> dict[str, float]:
    """One pass over this worker's batches; mean loss terms over every rank, mean grad norm, last lr,
    and throughput: "train_seconds" (slowest rank) and "items_per_s" (next-item targets trained, all ranks)."""
    engine.train()
    sums: dict[str, float] = defaultdict(float)
    grad_norms, lr, count, targets = [], engine.get_lr()[0], 0, 0
    start = time.perf_counter()
    for batch in batches:
        # items trained: next-item targets, or click-prediction pairs
        targets += int(batch["candidates"].numel()) if "candidates" in batch else int((batch["labels"] != 0).sum())
        metrics = engine_step(engine, batch, loss_fn)
        fail(engine.global_steps)
        if "lr" in metrics:
            lr = metrics.pop("lr")
            grad_norms.append(metrics.pop("grad_norm"))
        for name, value in metrics.items():
            sums[name] += value
        count += 1
    means = _mean_over_ranks({name: total / max(count, 1) for name, total in sorted(sums.items())})
    seconds = _max_over_ranks(time.perf_counter() - start)
    items = _mean_over_ranks({"items": float(targets)})["items"] * _world_size()
    return {
        **means,
        "grad_norm": float(np.mean(grad_norms)) if grad_norms else 0.0,
        "lr": lr,
        "train_seconds": round(seconds, 3),
        "items_per_s": round(items / max(seconds, 1e-9), 1),
    }


def _mean_over_ranks(values: dict[str, float]) -> dict[str, float]:
    """Average a dict of floats over the process group (one all_reduce)."""
    import torch.distributed as dist

    if not values or not dist.is_initialized():
        return values
    packed = torch.tensor(list(values.values()), dtype=torch.float64)
    dist.all_reduce(packed)
    return dict(zip(values, (packed / dist.get_world_size()).tolist(), strict=True))


def _max_over_ranks(value: float) -> float:
    """The largest `value` over the process group (the slowest rank sets an epoch's time)."""
    import torch.distributed as dist

    if not dist.is_initialized():
        return value
    packed = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(packed, op=dist.ReduceOp.MAX)
    return float(packed[0])


def _world_size() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_initialized() else 1


def consolidated_state(engine, deepspeed) -> dict[str, torch.Tensor]:
    """A full CPU copy of the model's weights on every rank (ZeRO-3 shards gathered first)."""
    model = engine.module.model
    with deepspeed.zero.GatheredParameters(list(model.parameters())):
        return {name: value.detach().to("cpu", copy=True) for name, value in model.state_dict().items()}


def _update_state(
    state: WorkerState, epoch: int, step: int, metrics: dict[str, float], record: dict[str, Any], metric: str
) -> bool:
    """Advance the state by one epoch; returns whether this epoch is the new best (strictly better on `metric`)."""
    state.epoch, state.global_step = epoch, step
    state.history = [*(state.history or []), record]
    if state.best_valid is not None and metrics[metric] <= state.best_valid[metric]:
        state.bad_epochs += 1
        return False
    state.best_epoch, state.best_valid, state.bad_epochs = epoch, metrics, 0
    return True


def _save_and_report(
    engine, state: WorkerState, best_weights, record: dict[str, Any], rank: int, world_size: int
) -> None:
    """Write this rank's part of the checkpoint (manifest last) and report it with the epoch's record."""
    import ray
    import ray.train
    from safetensors.torch import save_file

    with tempfile.TemporaryDirectory(prefix="raysys-ckpt-") as tmp:
        folder = Path(tmp)
        engine.save_checkpoint(str(folder / ckpt.DEEPSPEED_DIR), tag=ckpt.DEEPSPEED_TAG)
        if rank == 0:
            save_file(best_weights, str(folder / ckpt.BEST_WEIGHTS_FILE))
            (folder / ckpt.STATE_FILE).write_text(json.dumps(state.to_dict(), indent=2))
        ckpt.write_manifest(folder, rank, world_size, state.global_step, ray.get_runtime_context().get_node_id())
        ray.train.report(
            record,
            checkpoint=ray.train.Checkpoint.from_directory(tmp),
            checkpoint_dir_name=ckpt.checkpoint_dir_name(state.global_step),
        )


def _restore(engine, ray_run_dir: Path) -> tuple[WorkerState, dict[str, torch.Tensor] | None]:
    """Load the newest complete checkpoint (Ray's latest, else the run folder's); fresh state if none."""
    import ray.train
    from safetensors.torch import load_file

    latest = ray.train.get_checkpoint()
    found = ckpt.find_resume_checkpoint(Path(latest.path) if latest else None, ray_run_dir)
    if found is None:
        return WorkerState(history=[]), None
    engine.load_checkpoint(str(found / ckpt.DEEPSPEED_DIR), tag=ckpt.DEEPSPEED_TAG)
    state = WorkerState(**ckpt.read_state(found))
    state.resumed_from = [*(state.resumed_from or []), state.global_step]
    return state, load_file(str(found / ckpt.BEST_WEIGHTS_FILE))


def _failure_injection(config: dict[str, Any], rank: int, world_size: int, run_dir: Path):
    """A per-step callback that kills this worker once at config["fail_at_step"] (tests only)."""
    fail_at, target_rank = config.get("fail_at_step"), min(1, world_size - 1)
    marker = run_dir / FAIL_MARKER

    def maybe_fail(step: int) -> None:
        if fail_at is not None and rank == target_rank and step == fail_at and not marker.exists():
            marker.touch()
            os._exit(1)

    return maybe_fail
