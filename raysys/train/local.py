"""Single-process training: a teacher on the pretraining mix, or a student on the distillation mix.

    seed_everything(cfg.pretrain.seed)
    teacher = build_teacher(cfg.teacher, dataset.num_items, cfg.data.max_len)
    result = train_model(teacher, dataset, cfg.pretrain, max_len=cfg.data.max_len, eval_cfg=cfg.eval)
    result.history        # one dict per epoch: loss terms, grad_norm, lr, valid_ndcg@10 (all valid_*), seconds
    result.best_valid     # the validation metrics of the kept (best) epoch; the model holds its weights

The story of an epoch: training windows -> shuffle -> batches -> `train_step` (forward, backward,
every `grad_accum` micro-batches clip + AdamW + lr schedule) -> validation NDCG@10 -> keep the best
state -> stop after `patience` epochs without a better one. `train_step` is kept apart and pure (its
state lives in the model, optimizer and scheduler it is given) so a Ray Train worker can drive it.
"""

from __future__ import annotations

import math
import random
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from raysys.config import DistillConfig, EvalConfig, PretrainConfig, TrainingConfig
from raysys.data.batches import next_item_batch, pretrain_batch, training_windows
from raysys.data.dataset import FIRST_ITEM_INDEX, PreparedDataset, SplitExamples
from raysys.errors import RaysysError
from raysys.eval.evaluator import evaluate_split
from raysys.models.common import SequenceModel
from raysys.objectives.ctr import ctr_loss
from raysys.objectives.distillation import HiddenAlignment
from raysys.objectives.joint import distill_loss, pretrain_loss
from raysys.train.schedule import lr_scheduler

VALID_METRIC = "ndcg@10"  # early stopping and model selection
TrainingT = TypeVar("TrainingT", bound=TrainingConfig)

LossFn = Callable[[SequenceModel, dict[str, torch.Tensor]], dict[str, torch.Tensor]]


@dataclass
class TrainResult:
    """What `train_model` returns; the model itself is trained in place (best epoch's weights)."""

    history: list[dict[str, Any]]  # one record per epoch
    best_epoch: int  # 1-based
    best_valid: dict[str, float]  # validation metrics of the best epoch
    optimizer_steps: int


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (model initialisation, dropout) for a reproducible run."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def global_batch(cfg: TrainingT) -> TrainingT:
    """`cfg` with the Ray workers' global batch (`batch_size` x `num_workers`) as its single-process batch.

    An in-process stand-in for a Ray Train run (a direct Tune trial, the ablation) then takes the
    same number of optimizer steps per epoch on batches of the same size, so lr and loss weights
    chosen in-process carry over to the run with `num_workers` workers.
    """
    return cfg.model_copy(update={"batch_size": cfg.batch_size * cfg.num_workers})


def make_optimizer(modules: Sequence[nn.Module], cfg: TrainingConfig) -> torch.optim.AdamW:
    """AdamW over the trainable parameters of `modules`; weight decay on matrices only.

    Biases and LayerNorm gains are 1-d: decaying them only pulls the network off its normalisation
    (the nanoGPT / BERT convention). Embedding tables are matrices and are decayed.
    """
    params = {id(p): p for m in modules for p in m.parameters() if p.requires_grad}.values()
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr)


def objective_config(cfg: PretrainConfig | DistillConfig) -> PretrainConfig | DistillConfig:
    """`cfg` with the objective weights its task implies: task "next_item" is the next-item term alone
    (task "ctr" trains the click head's BCE, `make_loss_fn`)."""
    if not isinstance(cfg, PretrainConfig) or cfg.task in ("pretrain", "ctr"):
        return cfg
    return cfg.model_copy(update={"weight_next_item": 1.0, "weight_masked_item": 0.0, "weight_contrastive": 0.0})


def make_loss_fn(
    cfg: PretrainConfig | DistillConfig,
    *,
    teacher: SequenceModel | None = None,
    alignment: HiddenAlignment | None = None,
    generator: torch.Generator | None = None,
) -> LossFn:
    """The objective `cfg` asks for: the pretraining mix (PretrainConfig) or the distillation mix."""
    if isinstance(cfg, PretrainConfig) and cfg.task == "ctr":
        return lambda model, batch: {"loss": ctr_loss(model, batch)}
    if isinstance(cfg, PretrainConfig):
        cfg = objective_config(cfg)
        return lambda model, batch: pretrain_loss(model, batch, cfg, generator)
    if teacher is None and (cfg.lambda_kd > 0 or cfg.lambda_hidden > 0):
        raise RaysysError(
            "lambda_kd / lambda_hidden > 0 needs a teacher", where="distill.teacher", hint="set distill.lambda_kd=0"
        )
    return lambda model, batch: distill_loss(model, batch, cfg, teacher, alignment, generator)


def epoch_batches(
    windows: np.ndarray, cfg: TrainingConfig, rng: np.random.Generator, device: torch.device
) -> Iterator[dict[str, torch.Tensor]]:
    """Shuffled batches of `cfg.batch_size` windows [W, max_len + 1] as tensors on `device`.

    A PretrainConfig with a masked-item weight also gets Cloze inputs (`pretrain_batch`).
    """
    order = rng.permutation(len(windows))
    for start in range(0, len(order), cfg.batch_size):
        rows = windows[order[start : start + cfg.batch_size]]
        if isinstance(cfg, PretrainConfig):
            arrays = pretrain_batch(rows, cfg, rng)
        else:
            arrays = next_item_batch(rows)
        yield {key: torch.from_numpy(value).to(device) for key, value in arrays.items()}


def train_step(
    model: nn.Module,
    batch: dict[str, torch.Tensor],
    loss_fn: LossFn,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    cfg: TrainingConfig,
    micro_step: int,
) -> dict[str, float]:
    """One micro-batch: forward and backward; every `cfg.grad_accum`-th also updates the weights.

    The loss is divided by grad_accum so accumulated gradients average over micro-batches.
    Returns the loss terms (floats), plus "lr" and "grad_norm" when the optimizer stepped.
    """
    terms = loss_fn(model, batch)
    (terms["loss"] / cfg.grad_accum).backward()
    metrics = {name: float(value.detach()) for name, value in terms.items()}
    if (micro_step + 1) % cfg.grad_accum == 0:
        metrics.update(optimizer_step(optimizer, scheduler, cfg.grad_clip))
    return metrics


def optimizer_step(
    optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler, grad_clip: float | None
) -> dict[str, float]:
    """Clip the global gradient norm, step AdamW and the lr schedule, clear the gradients."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    grad_norm = torch.nn.utils.clip_grad_norm_(params, grad_clip if grad_clip else float("inf"))
    lr = optimizer.param_groups[0]["lr"]
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return {"lr": lr, "grad_norm": float(grad_norm)}


@torch.no_grad()
def validate(
    model: SequenceModel, examples: SplitExamples, num_items: int, eval_cfg: EvalConfig, max_len: int
) -> dict[str, float]:
    """Full-ranking metrics of `model` on `examples` (eval mode; the caller's mode is restored)."""
    was_training = model.training
    model.eval()
    try:
        return evaluate_split(model.next_item_scores, examples, num_items, eval_cfg, max_len)
    finally:
        model.train(was_training)


def pin_unseen_item_ids(model: SequenceModel, train_sequences: Sequence[np.ndarray]) -> RemovableHandle:
    """Hold the ID embedding of every item absent from training at zero (returns the hook's handle).

    Why: an item that never occurs in training is never a positive, only a softmax negative, so a
    free ID vector would learn nothing but "never recommend me" and bury a cold item whatever its
    text says. Pinned at zero, a cold item's embedding is its projected text alone, which the
    projection learned on the warm items it resembles. Zero gradient keeps it at zero under AdamW
    (zero moments give a zero update; decoupled weight decay of zero is zero). Pad and mask rows
    are left alone (the mask token is a trained input of masked-item pretraining).
    """
    weight = model.items.id_embedding.weight  # [num_items, H]
    unseen = torch.ones(weight.shape[0], dtype=torch.bool)
    seen = np.concatenate(list(train_sequences)) if len(train_sequences) else np.zeros(0, np.int64)
    unseen[torch.from_numpy(seen.astype(np.int64))] = False
    unseen[:FIRST_ITEM_INDEX] = False
    unseen = unseen.to(weight.device)
    with torch.no_grad():
        weight[unseen] = 0.0
    return weight.register_hook(lambda grad: grad.masked_fill(unseen[:, None], 0.0))


def train_model(
    model: SequenceModel,
    dataset: PreparedDataset,
    cfg: PretrainConfig | DistillConfig,
    *,
    max_len: int,
    eval_cfg: EvalConfig | None = None,
    teacher: SequenceModel | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> TrainResult:
    """Train `model` in place on `dataset`'s training parts; keep the epoch with the best valid NDCG@10.

    A PretrainConfig trains on the pretraining mix; a DistillConfig trains on the joint distillation
    loss from the frozen `teacher`. `on_epoch(record)` sees each epoch's history record as it is made
    (for logging or `ray.train.report`). Models that use item text get `pin_unseen_item_ids`.
    """
    if isinstance(cfg, PretrainConfig) and cfg.task == "ctr":
        raise RaysysError(
            "click-prediction fine-tuning runs on Ray Train", where="pretrain.task", hint="raysys pretrain"
        )
    cfg = objective_config(cfg)
    eval_cfg = _with_k10(eval_cfg or EvalConfig())
    device = next(model.parameters()).device
    train_sequences = dataset.train_sequences()
    windows = training_windows(train_sequences, max_len)
    if len(windows) == 0:
        raise RaysysError(
            "no training windows: every user has fewer than 2 training interactions", where=str(dataset.path)
        )
    valid = dataset.split("valid")
    rng = np.random.default_rng(cfg.seed)
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    alignment = _alignment(model, teacher, cfg, device)
    if teacher is not None:
        teacher.eval().requires_grad_(False)
    loss_fn = make_loss_fn(cfg, teacher=teacher, alignment=alignment, generator=generator)
    optimizer = make_optimizer([model] + ([alignment] if alignment is not None else []), cfg)
    steps_per_epoch = math.ceil(math.ceil(len(windows) / cfg.batch_size) / cfg.grad_accum)
    scheduler = lr_scheduler(optimizer, cfg, cfg.epochs * steps_per_epoch)
    pin = pin_unseen_item_ids(model, train_sequences) if model.items.uses_text else None
    history: list[dict[str, Any]] = []
    best = BestEpoch()
    for epoch in range(1, cfg.epochs + 1):
        start = time.perf_counter()
        terms = train_epoch(model, epoch_batches(windows, cfg, rng, device), loss_fn, optimizer, scheduler, cfg)
        valid_metrics = validate(model, valid, dataset.num_items, eval_cfg, max_len)
        record = {"epoch": epoch, **terms, **{f"valid_{k}": v for k, v in valid_metrics.items() if k != "num_users"}}
        record["seconds"] = round(time.perf_counter() - start, 3)
        history.append(record)
        if on_epoch is not None:
            on_epoch(record)
        if not best.update(epoch, valid_metrics, model) and epoch - best.epoch >= cfg.patience:
            break
    model.load_state_dict(best.state)
    if pin is not None:
        pin.remove()
    model.eval()
    return TrainResult(history, best.epoch, best.metrics, epoch * steps_per_epoch)


@dataclass
class BestEpoch:
    """The best epoch so far by valid NDCG@10, with a CPU copy of its weights."""

    epoch: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    state: dict[str, torch.Tensor] = field(default_factory=dict)

    def update(self, epoch: int, metrics: dict[str, float], model: nn.Module) -> bool:
        """Keep this epoch if it beats the best so far (strictly); returns whether it did."""
        if self.epoch and metrics[VALID_METRIC] <= self.metrics[VALID_METRIC]:
            return False
        self.epoch, self.metrics = epoch, metrics
        self.state = {name: value.detach().to("cpu", copy=True) for name, value in model.state_dict().items()}
        return True


def train_epoch(
    model: SequenceModel,
    batches: Iterator[dict[str, torch.Tensor]],
    loss_fn: LossFn,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    cfg: TrainingConfig,
) -> dict[str, float]:
    """One pass over the batches; returns the mean of each loss term, the mean gradient norm (before
    clipping) and the last lr."""
    model.train()
    sums: dict[str, float] = defaultdict(float)
    grad_norms: list[float] = []
    micro_step, lr = -1, optimizer.param_groups[0]["lr"]
    for micro_step, batch in enumerate(batches):
        metrics = train_step(model, batch, loss_fn, optimizer, scheduler, cfg, micro_step)
        if "lr" in metrics:
            lr, norm = metrics.pop("lr"), metrics.pop("grad_norm")
            grad_norms.append(norm)
        for name, value in metrics.items():
            sums[name] += value
    if (micro_step + 1) % cfg.grad_accum:
        # A last partial accumulation still updates the weights (its gradient is a little smaller).
        last = optimizer_step(optimizer, scheduler, cfg.grad_clip)
        lr = last["lr"]
        grad_norms.append(last["grad_norm"])
    means = {name: total / (micro_step + 1) for name, total in sums.items()}
    return {**means, "grad_norm": float(np.mean(grad_norms)) if grad_norms else 0.0, "lr": lr}


def _alignment(
    model: SequenceModel, teacher: SequenceModel | None, cfg: PretrainConfig | DistillConfig, device: torch.device
) -> HiddenAlignment | None:
    """The student -> teacher hidden projection when hidden-state alignment is on."""
    if not isinstance(cfg, DistillConfig) or cfg.lambda_hidden <= 0 or teacher is None:
        return None
    return HiddenAlignment(model.hidden_size, teacher.hidden_size).to(device)


def _with_k10(eval_cfg: EvalConfig) -> EvalConfig:
    """Model selection reads ndcg@10: make sure the evaluator computes it."""
    return eval_cfg if 10 in eval_cfg.ks else eval_cfg.model_copy(update={"ks": sorted({*eval_cfg.ks, 10})})
