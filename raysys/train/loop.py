"""The one epoch loop. The in-process loop, a direct Tune trial and a Ray Train worker all call
`train_epochs`; they differ only in their engine (`raysys.train.engines`) and in where `report` sends
each epoch (a list, `tune.report`, `ray.train.report` with a checkpoint).

The story of an epoch (`run_epoch`):

    rng, generator = epoch_randomness(seed, epoch, rank)      # also seeds torch's global RNG (dropout)
    order = epoch_order(rng, len(rows), num_rows)             # every rank trains the same number of rows
    batches = epoch_batches(rng, order, ...)                  # with length_buckets: similar lengths per batch
    -> groups of grad_accum micro-batches (the last group may be short)
    per micro-batch: task.batch(rows, indices, rng) -> task.loss -> backward(loss / len(group))
    per group: engine.step() (clip, AdamW, lr schedule) -> fault injection
    -> validation -> TrainState.advance -> report -> stop at `epochs` or after `patience` bad epochs

Rules every driver shares, so a resumed run retraces an uninterrupted one step for step:
- data order and every random draw of epoch e on rank r come from generators derived from
  (seed, e, r), never from state carried across epochs;
- a partial accumulation at an epoch's end is stepped, its gradient the mean of its micro-batches.
"""

from __future__ import annotations

import math
import os
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from torch import nn

from raysys.config import Config
from raysys.data.batches import TrainingRows, training_parts
from raysys.data.dataset import PreparedDataset
from raysys.errors import RaysysError
from raysys.eval.collectives import max_over_ranks, mean_over_ranks, min_over_ranks, world_size
from raysys.objectives.softmax import auto_loss
from raysys.train.engines import DeepSpeedEngine, PlainEngine
from raysys.train.history import HISTORY_FILE
from raysys.train.state import TrainState, epoch_record
from raysys.train.tasks import Stage, Task, task_for
from raysys.train.tasks.base import Evaluate

Engine = PlainEngine | DeepSpeedEngine
Weights = dict[str, torch.Tensor]
Report = Callable[[TrainState, Weights, dict[str, Any]], None]  # (state, best weights, record) after each epoch


@dataclass(frozen=True)
class FailureInjection:
    """Kill this process once, right after the first optimizer step of epoch `epoch` on rank `rank`
    (tests of resume and retries); the marker file, written first, makes it happen once per run."""

    epoch: int
    marker: Path
    rank: int = 0

    def __call__(self, epoch: int, rank: int) -> None:
        if epoch == self.epoch and rank == self.rank and not self.marker.exists():
            self.marker.touch()
            os._exit(1)


@dataclass
class Run:
    """Everything the loop trains with, built by the driver."""

    task: Task
    engine: Engine
    rows: TrainingRows  # this rank's training rows
    num_rows: int  # rows each rank trains per epoch (the largest rank's count)
    evaluate: Evaluate
    rank: int = 0
    fail: FailureInjection | None = None


@dataclass
class TrainOutcome:
    """What a training driver returns: the best epoch's model (plain module, eval mode) and its figures."""

    model: nn.Module
    valid: dict[str, float]
    test: dict[str, float] | None
    best_epoch: int
    epochs_run: int
    optimizer_steps: int
    history: list[dict[str, Any]] = field(default_factory=list)
    checkpoint: Path | None = None  # the Ray checkpoint the model came from (Ray Train runs)

    @classmethod
    def from_state(cls, model: nn.Module, state: TrainState, checkpoint: Path | None = None) -> TrainOutcome:
        """The outcome of a finished run: `model` holds the best weights (set to eval mode here)."""
        return cls(
            model=model.eval(),
            valid=state.best_valid,
            test=state.test,
            best_epoch=state.best_epoch,
            epochs_run=state.epoch,
            optimizer_steps=state.step,
            history=state.history,
            checkpoint=checkpoint,
        )

    @property
    def metrics(self) -> dict[str, dict[str, float]]:
        """{"valid": ..., "test": ...}: what the exported model directory and summary.json carry."""
        return {"valid": self.valid, "test": self.test or {}}

    def summary(self, task: Task, out_dir: Path) -> dict[str, Any]:
        """The run's entries of summary.json: metrics, epochs, steps, workers, ZeRO stage, history file."""
        return {
            "metrics": self.metrics,
            "best_epoch": self.best_epoch,
            "epochs_run": self.epochs_run,
            "optimizer_steps": self.optimizer_steps,
            "num_workers": task.train_cfg.num_workers,
            "zero_stage": task.train_cfg.zero_stage,
            "history": str(out_dir / HISTORY_FILE),
        }


def resolve_new_item_boost(
    cfg: Config, task: Task, outcome: TrainOutcome, dataset: PreparedDataset
) -> tuple[Config, dict[str, dict[str, Any]]]:
    """After training: `cfg` with the model's `new_item_boost: auto` resolved on validation
    (`raysys.eval.new_items`), the boost set on `outcome.model`, and its valid and test figures redone
    with it when it is not 0; returns the resolved entry as `resolve_auto` does. Models without text
    and fixed boosts are left alone."""
    from raysys.eval.new_items import choose_new_item_boost

    model_cfg = task.model_cfg
    if not model_cfg.use_text or model_cfg.new_item_boost != "auto":
        return cfg, {}
    model = task.sequence_model(outcome.model)
    eval_cfg = task.evaluator_config()
    choice = choose_new_item_boost(model, dataset.split("valid"), dataset.num_items, eval_cfg, cfg.data.max_len)
    model.items.new_item_boost = choice.value
    if choice.value:
        evaluate = task.evaluator(dataset)
        outcome.valid = evaluate(outcome.model, "valid")
        outcome.test = evaluate(outcome.model, "test") if outcome.test else outcome.test
    section = task.model_section
    cfg = cfg.model_copy(update={section: model_cfg.model_copy(update={"new_item_boost": choice.value})})
    return cfg, {f"{section}.new_item_boost": {"value": choice.value, "reason": choice.reason}}


def count_windows(dataset: PreparedDataset, max_len: int) -> tuple[int, int]:
    """Training windows and next-item targets of the whole dataset (reads only the train_len column).
    The windows are a lower bound on every task's rows, so at least this many rows exist to share among
    the workers."""
    train_len = dataset.sequences(["train_len"])["train_len"].to_numpy().astype(np.int64)
    targets = np.maximum(train_len - 1, 0)
    return int((-(-targets // max_len)).sum()), int(targets.sum())


AUTO_LENGTH_BUCKETS = 50  # length_buckets=auto on short rows: chunks of 50 batches
BUCKETS_BELOW_FILL = 0.5  # ... when the rows fill less than this share of a full window on average


def resolve_auto(cfg: Config, stage: Stage, dataset: PreparedDataset) -> tuple[Config, dict[str, dict[str, Any]]]:
    """`cfg` with the stage's "auto" settings resolved from the prepared data, and what each became and
    why ({"<section>.<key>": {"value", "reason"}}; empty when nothing was "auto"):

    - `loss`: the sampled softmax when the catalog is large against the targets a batch holds
      (`batch_size` x targets per window; `raysys.objectives.softmax.auto_loss`), else the full one;
    - `length_buckets`: AUTO_LENGTH_BUCKETS when the training windows fill less than BUCKETS_BELOW_FILL of
      a full window (max_len + 1 items) on average, else 0.

    An in-process stand-in for a Ray Train run resolves before `global_batch`, at the per-worker batch,
    so it trains as the run would."""
    section = task_for(cfg, stage).section
    train_cfg = getattr(cfg, section)
    windows, targets = count_windows(dataset, cfg.data.max_len)
    update: dict[str, Any] = {}
    resolved: dict[str, dict[str, Any]] = {}
    if train_cfg.loss == "auto":
        loss, reason = auto_loss(
            dataset.num_items, train_cfg.batch_size * targets / max(windows, 1), train_cfg.num_negatives
        )
        update["loss"], resolved[f"{section}.loss"] = loss, {"value": loss, "reason": reason}
    if train_cfg.length_buckets == "auto":
        fill = (targets + windows) / max(windows, 1) / (cfg.data.max_len + 1)
        buckets = AUTO_LENGTH_BUCKETS if fill < BUCKETS_BELOW_FILL else 0
        sign = "<" if buckets else ">="
        reason = f"training windows {fill:.0%} full on average ({sign} {BUCKETS_BELOW_FILL:.0%})"
        update["length_buckets"], resolved[f"{section}.length_buckets"] = buckets, {"value": buckets, "reason": reason}
    if not update:
        return cfg, resolved
    return cfg.model_copy(update={section: train_cfg.model_copy(update=update)}), resolved


def epoch_randomness(seed: int, epoch: int, rank: int) -> tuple[np.random.Generator, torch.Generator]:
    """The seeding rule: numpy draws (order, masks, sampled items) and torch draws (sampled negatives,
    augmentations) of epoch `epoch` on rank `rank`; torch's global RNG (dropout) is seeded the same way."""
    torch_seed = int(np.random.SeedSequence([seed, epoch, rank, 1]).generate_state(1)[0])
    torch.manual_seed(torch_seed)
    return np.random.default_rng([seed, epoch, rank]), torch.Generator().manual_seed(torch_seed)


def table_rows(task: Task, table: pa.Table, num_items: int) -> tuple[TrainingRows, int]:
    """This rank's rows from its users' rows of the sequences table (sorted by user, so the order does
    not depend on how they were read), and the count every rank trains per epoch (the largest rank's)."""
    rows = task.rows(training_parts(table.sort_by("user_index")), num_items)
    if min_over_ranks(len(rows)) == 0:
        raise RaysysError(
            f"a worker has no training rows ({len(rows)} here, {world_size()} workers)",
            where=f"{task.section}.num_workers",
            hint="use fewer workers, or check data.min_user_interactions",
        )
    return rows, max_over_ranks(len(rows))


def epoch_order(rng: np.random.Generator, num_local: int, num_rows: int) -> np.ndarray:
    """The data-order rule: this rank's rows in a random order, every one once; a rank with fewer rows
    than the largest rank (Ray splits users, not rows) tops up with rows drawn again at random, so
    every rank takes the same number of steps and no row is left out (DistributedSampler's padding)."""
    order = rng.permutation(num_local)
    if num_rows > num_local:
        order = np.concatenate([order, rng.choice(num_local, num_rows - num_local)])
    return order


def epoch_batches(
    rng: np.random.Generator, order: np.ndarray, lengths: np.ndarray, batch_size: int, buckets: int | str
) -> list[np.ndarray]:
    """The epoch's batches of row indices. Without `buckets` (0 or 1): `order` cut into batches of
    `batch_size` rows. With length-aware batching (`length_buckets`): `order` is cut into chunks of
    `buckets` batches' rows, each chunk sorted by row length and cut into as many batches holding equal
    shares of its items (so a batch of short rows holds more of them), and the batches are shuffled.

    A batch then pads little, every row still comes once in random company, the epoch has as many
    batches (optimizer steps) as without, and each batch carries about the same number of targets as a
    batch of random rows: the loss, a mean over a batch's targets, weighs each target as it did."""
    if buckets == "auto":
        raise ValueError("length_buckets=auto is resolved from the data before training (resolve_auto)")
    if buckets <= 1:
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    batches = []
    chunk = batch_size * buckets
    for first in range(0, len(order), chunk):
        part = order[first : first + chunk]
        part = part[np.argsort(lengths[part], kind="stable")]
        cuts = equal_share_cuts(lengths[part], math.ceil(len(part) / batch_size))
        batches += np.split(part, cuts)
    return [batches[i] for i in rng.permutation(len(batches))]


def equal_share_cuts(weights: np.ndarray, parts: int) -> np.ndarray:
    """`parts - 1` split points of `weights` [R] (R >= parts) into `parts` non-empty consecutive runs
    with about equal sums (for np.split)."""
    totals = np.cumsum(weights, dtype=np.float64)
    wanted = totals[-1] * np.arange(1, parts) / parts
    cuts = np.searchsorted(totals, wanted, side="left") + 1
    # Every run keeps a row: cut k (1-based) in [k, R - parts + k] and strictly increasing, i.e.
    # cut_k - k in [0, R - parts] and non-decreasing.
    k = np.arange(1, parts)
    slack = np.clip(cuts - k, 0, len(weights) - parts)
    return np.maximum.accumulate(slack) + k


def steps_per_epoch(num_rows: int, batch_size: int, grad_accum: int) -> int:
    """Optimizer steps of an epoch of `num_rows` rows (a short last batch and group still count)."""
    return math.ceil(math.ceil(num_rows / batch_size) / grad_accum)


def train_epochs(run: Run, state: TrainState, best: Weights | None, report: Report, *, test: bool) -> Weights:
    """Train from `state` (fresh or restored) until `epochs` or early stopping; returns the best weights.

    test: evaluate the best weights on the test split after the last epoch (`state.test`).
    """
    cfg = run.task.train_cfg
    for epoch in range(state.epoch + 1, cfg.epochs + 1):
        if state.finished(cfg.epochs, cfg.patience):
            break
        start = time.perf_counter()
        terms = run_epoch(run, epoch)
        weights = run.engine.weights()
        model = run.engine.eval_model()
        valid = run.evaluate(model, "valid")
        record = epoch_record(epoch, run.engine.steps, terms, valid, time.perf_counter() - start)
        if state.advance(record, valid, run.task.metric, cfg.min_delta):
            best = weights
        if state.finished(cfg.epochs, cfg.patience) and test:
            model.load_state_dict(best)
            state.test = run.evaluate(model, "test")
        report(state, best, record)
    return best


def run_epoch(run: Run, epoch: int) -> dict[str, Any]:
    """One pass over this rank's rows (see the module docstring); returns the record's training terms."""
    task, engine, cfg = run.task, run.engine, run.task.train_cfg
    rng, generator = epoch_randomness(cfg.seed, epoch, run.rank)
    order = epoch_order(rng, len(run.rows), run.num_rows)
    batches = epoch_batches(rng, order, run.rows.lengths, cfg.batch_size, cfg.length_buckets)
    engine.modules.train()
    sums: dict[str, float] = defaultdict(float)
    step_losses, grad_norms, targets, lr = [], [], 0, engine.lr()
    start = time.perf_counter()
    for first in range(0, len(batches), cfg.grad_accum):
        group = batches[first : first + cfg.grad_accum]
        group_loss = 0.0
        for position, indices in enumerate(group):
            arrays = task.batch(run.rows, indices, rng)
            targets += task.targets(arrays)
            terms = micro_step(engine, task, arrays, generator, 1.0 / len(group), position == len(group) - 1)
            for name, value in terms.items():
                sums[name] += value
            group_loss += terms["loss"]
        stepped = engine.step()
        lr = stepped["lr"]
        grad_norms.append(stepped["grad_norm"])
        step_losses.append(group_loss / len(group))
        if run.fail is not None and first == 0:
            run.fail(epoch, run.rank)
    seconds = max_over_ranks(time.perf_counter() - start)
    local = {name: total / len(batches) for name, total in sorted(sums.items())}
    local.update({f"step {i}": value for i, value in enumerate(step_losses)}, targets=float(targets))
    means = mean_over_ranks(local)  # one all_reduce: every rank took the same number of steps
    trained = means.pop("targets") * world_size()
    return {
        **{name: value for name, value in means.items() if not name.startswith("step ")},
        "step_losses": [means[f"step {i}"] for i in range(len(step_losses))],
        "grad_norm": float(np.mean(grad_norms)),
        "lr": lr,
        "train_seconds": round(seconds, 3),
        "items_per_s": round(trained / max(seconds, 1e-9), 1),
    }


def micro_step(
    engine: Engine, task: Task, arrays: dict[str, np.ndarray], generator: torch.Generator, scale: float, boundary: bool
) -> dict[str, float]:
    """One micro-batch: tensors on the engine's device, the task's loss, backward with the loss scaled
    by `scale` (1 / the group's micro-batches); returns the loss terms as floats."""
    batch = {key: torch.from_numpy(value).to(engine.device, non_blocking=True) for key, value in arrays.items()}
    terms = task.loss(engine.modules, batch, generator)
    engine.backward(terms["loss"], scale, boundary)
    return {name: float(value.detach()) for name, value in terms.items()}
