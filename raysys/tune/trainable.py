"""Tune trials: one function trainable per trial mode (`tune.trial_mode`).

    trainable = make_trainable(cfg)    # what Tuner(...) and Tuner.restore(...) are given

"ray_train": the trial launches the stage's Ray Train run (`raysys.train.ray_train.fit`) into its own
trial directory; `TuneReportCallback` forwards each epoch's worker report to Tune. The trial itself
holds no CPU (its workers do), and a restored trial resumes from the Train run's checkpoints.

"direct": the trial trains the model in its own process with the local loop's pieces
(`raysys.train.local`), on the global batch of the stage's `num_workers` Ray workers, and reports
each epoch with a checkpoint of the whole training state (model, AdamW, lr schedule, best epoch).
That checkpoint is what PBT copies from a donor trial and what a retried or restored trial resumes
from. After a restore the trial's own config wins: the new lr and weight decay are written into
the restored optimizer, the loss weights build a new loss.

Each direct checkpoint's `trial_state.json` records which trial wrote it and the trial's lineage
(the donors it was copied from, and at which epoch), so an exploit is visible in the trial's state.
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from raysys.config import Config, DistillConfig, PretrainConfig
from raysys.data.batches import training_windows
from raysys.data.dataset import PreparedDataset
from raysys.errors import RaysysError
from raysys.models.common import SequenceModel
from raysys.models.export import load_model_dir
from raysys.objectives.distillation import HiddenAlignment
from raysys.train.local import (
    VALID_METRIC,
    epoch_batches,
    global_batch,
    make_loss_fn,
    make_optimizer,
    pin_unseen_item_ids,
    seed_everything,
    train_epoch,
    validate,
)
from raysys.train.ray_train import build_stage_model, stage_section, stage_text_emb
from raysys.train.schedule import lr_scheduler
from raysys.tune.space import trial_config

METRIC = f"valid_{VALID_METRIC}"  # the objective every trial reports (maximised)
STATE_FILE = "trial_state.json"
TORCH_STATE_FILE = "training_state.pt"
FAIL_MARKER = "injected_trial_failure_done"
RAY_TRAIN_TRIAL_RESOURCES = {"cpu": 0, "memory": 1}  # what a trial that launches Ray Train holds itself


def make_trainable(cfg: Config, *, fail_once_at_epoch: int | None = None) -> Any:
    """The function trainable for `cfg.tune.trial_mode`, with the base config bound and its resources set.

    fail_once_at_epoch: fault injection for tests; each direct trial raises once after that epoch.
    """
    from ray import tune

    base = cfg.to_dict()
    if cfg.tune.trial_mode == "ray_train":
        # The trial only waits on its trainer: the Train workers hold the CPUs (train_cfg.cpus_per_worker).
        # No CPU (a 0.01 share tips a 2-CPU machine over and Ray Data's read task waits forever), but
        # not an all-zero request either, which Ray 2.60 refuses: one byte of the memory resource.
        return tune.with_resources(tune.with_parameters(ray_train_trial, base=base), RAY_TRAIN_TRIAL_RESOURCES)
    trainable = tune.with_parameters(direct_trial, base=base, fail_once_at_epoch=fail_once_at_epoch)
    return tune.with_resources(trainable, {"cpu": cfg.tune.cpus_per_trial})


def ray_train_trial(config: dict[str, Any], *, base: dict[str, Any]) -> None:
    """A trial that runs the stage on Ray Train workers into its trial directory; returns nothing."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from raysys.train.ray_train import fit

    cfg = trial_config(base, config)
    fit(cfg, cfg.tune.stage, Path(tune.get_context().get_trial_dir()), callbacks=[TuneReportCallback()])


# ------------------------------------------------------------------------------------------ direct


@dataclass
class TrialState:
    """The bookkeeping a direct checkpoint carries beside the tensors."""

    trial_id: str = ""  # the trial that wrote the checkpoint
    epoch: int = 0
    best_epoch: int = 0
    best_valid: dict[str, float] = field(default_factory=dict)
    bad_epochs: int = 0  # epochs since the best one
    lineage: list[dict[str, Any]] = field(default_factory=list)  # {"from_trial", "at_epoch"} per exploit


@dataclass
class DirectRun:
    """Everything a direct trial trains with (built fresh in every (re)started trial process)."""

    cfg: Config
    train_cfg: PretrainConfig | DistillConfig  # the searched stage's section at the global batch
    dataset: PreparedDataset
    model: SequenceModel
    alignment: HiddenAlignment | None
    teacher: SequenceModel | None
    windows: np.ndarray  # [W, max_len + 1] training windows
    optimizer: torch.optim.AdamW
    scheduler: torch.optim.lr_scheduler.LambdaLR


def direct_trial(config: dict[str, Any], *, base: dict[str, Any], fail_once_at_epoch: int | None = None) -> None:
    """A trial that trains in its own process: resume (own or donor checkpoint) -> per epoch: train,
    validate, report the record with a checkpoint -> stop at `epochs` or after `patience` bad epochs."""
    from ray import tune

    cfg = trial_config(base, config)
    torch.set_num_threads(max(1, int(cfg.tune.cpus_per_trial)))  # concurrent trials do not oversubscribe
    run = build_direct_run(cfg)
    train_cfg = run.train_cfg
    context = tune.get_context()
    state = restore_direct(run, tune.get_checkpoint(), context.get_trial_id())
    generator = torch.Generator().manual_seed(train_cfg.seed * 1000 + state.epoch)
    loss_fn = make_loss_fn(train_cfg, teacher=run.teacher, alignment=run.alignment, generator=generator)
    valid = run.dataset.split("valid")
    fail = _failure_injection(fail_once_at_epoch, Path(context.get_trial_dir()))
    for epoch in range(state.epoch + 1, train_cfg.epochs + 1):
        rng = np.random.default_rng([train_cfg.seed, epoch])
        batches = epoch_batches(run.windows, train_cfg, rng, torch.device("cpu"))
        terms = train_epoch(run.model, batches, loss_fn, run.optimizer, run.scheduler, train_cfg)
        fail(epoch)
        metrics = validate(run.model, valid, run.dataset.num_items, cfg.eval, cfg.data.max_len)
        _advance(state, epoch, metrics)
        record = {"epoch": epoch, **terms, **{f"valid_{k}": v for k, v in metrics.items() if k != "num_users"}}
        record.update(best_valid_ndcg=state.best_valid[VALID_METRIC], exploits=len(state.lineage))
        _report(record, run, state)
        if state.bad_epochs >= train_cfg.patience:
            break


def direct_section(cfg: Config) -> PretrainConfig | DistillConfig:
    """The searched stage's training section, with the global batch its `num_workers` Ray workers take.

    A direct trial stands for the Ray Train run that `best.yaml` launches; trained at the per-worker
    batch, it would take `num_workers` times the steps and tune lr for a different run.
    """
    return global_batch(stage_section(cfg, cfg.tune.stage))


def build_direct_run(cfg: Config) -> DirectRun:
    """Data, model (seeded), teacher, optimizer and lr schedule of the stage, as the local loop builds them."""
    from raysys.data.prepare import load_or_prepare

    stage = cfg.tune.stage
    train_cfg = direct_section(cfg)
    dataset = load_or_prepare(cfg.data, progress=False)
    text_emb = stage_text_emb(cfg, stage, dataset)
    seed_everything(train_cfg.seed)
    model = build_stage_model(cfg, stage, dataset.num_items, text_emb)
    train_sequences = dataset.train_sequences()
    if model.items.uses_text:
        pin_unseen_item_ids(model, train_sequences)
    teacher, alignment = None, None
    if stage == "distill" and cfg.distill.teacher:
        teacher = load_model_dir(cfg.distill.teacher).model.eval().requires_grad_(False)
        if cfg.distill.lambda_hidden > 0:
            alignment = HiddenAlignment(model.hidden_size, teacher.hidden_size)
    windows = training_windows(train_sequences, cfg.data.max_len)
    if len(windows) == 0:
        raise RaysysError("no training windows", where=str(dataset.path), hint="check data.min_user_interactions")
    optimizer = make_optimizer([model] + ([alignment] if alignment is not None else []), train_cfg)
    steps_per_epoch = math.ceil(math.ceil(len(windows) / train_cfg.batch_size) / train_cfg.grad_accum)
    scheduler = lr_scheduler(optimizer, train_cfg, train_cfg.epochs * steps_per_epoch)
    return DirectRun(cfg, train_cfg, dataset, model, alignment, teacher, windows, optimizer, scheduler)


def restore_direct(run: DirectRun, checkpoint, trial_id: str) -> TrialState:
    """Load a direct checkpoint into `run` (fresh state when None); a donor's checkpoint adds to the lineage.

    The restored optimizer and schedule keep their moments and step count, but take this trial's
    lr and weight decay: after a PBT exploit the config is the explored one, not the donor's.
    """
    if checkpoint is None:
        return TrialState(trial_id=trial_id)
    with checkpoint.as_directory() as folder:
        state = TrialState(**json.loads((Path(folder) / STATE_FILE).read_text()))
        tensors = torch.load(Path(folder) / TORCH_STATE_FILE, map_location="cpu", weights_only=True)
    run.model.load_state_dict(tensors["model"])
    if run.alignment is not None and "alignment" in tensors:
        run.alignment.load_state_dict(tensors["alignment"])
    run.optimizer.load_state_dict(tensors["optimizer"])
    run.scheduler.load_state_dict(tensors["scheduler"])
    _apply_optimizer_settings(run)
    if state.trial_id != trial_id:
        state.lineage.append({"from_trial": state.trial_id, "at_epoch": state.epoch})
        state.trial_id = trial_id
    return state


def read_trial_state(checkpoint_dir: str | Path) -> TrialState:
    """The bookkeeping of a direct checkpoint directory (epoch, best, lineage)."""
    return TrialState(**json.loads((Path(checkpoint_dir) / STATE_FILE).read_text()))


def _apply_optimizer_settings(run: DirectRun) -> None:
    """Set the config's lr (through the schedule's base lr) and weight decay on the restored AdamW.

    make_optimizer's first group holds the decayed matrices, the second the undecayed vectors.
    """
    train_cfg = run.train_cfg
    factor = run.scheduler.lr_lambdas[0](run.scheduler.last_epoch)
    run.scheduler.base_lrs = [train_cfg.lr for _ in run.optimizer.param_groups]
    for group in run.optimizer.param_groups:
        group["initial_lr"], group["lr"] = train_cfg.lr, train_cfg.lr * factor
    run.optimizer.param_groups[0]["weight_decay"] = train_cfg.weight_decay


def _advance(state: TrialState, epoch: int, metrics: dict[str, float]) -> None:
    """One epoch on: keep the best validation metrics and count the epochs since them."""
    state.epoch = epoch
    if state.best_valid and metrics[VALID_METRIC] <= state.best_valid[VALID_METRIC]:
        state.bad_epochs += 1
        return
    state.best_epoch, state.best_valid, state.bad_epochs = epoch, metrics, 0


def _report(record: dict[str, Any], run: DirectRun, state: TrialState) -> None:
    """Report the epoch's record to Tune with a checkpoint of the whole training state."""
    from ray import tune

    tensors = {
        "model": run.model.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
    }
    if run.alignment is not None:
        tensors["alignment"] = run.alignment.state_dict()
    with tempfile.TemporaryDirectory(prefix="raysys-trial-") as tmp:
        torch.save(tensors, Path(tmp) / TORCH_STATE_FILE)
        (Path(tmp) / STATE_FILE).write_text(json.dumps(asdict(state), indent=2))
        tune.report(record, checkpoint=tune.Checkpoint.from_directory(tmp))


def _failure_injection(fail_at: int | None, trial_dir: Path) -> Callable[[int], None]:
    """A per-epoch callback raising once per trial at epoch `fail_at` (tests only)."""
    marker = trial_dir / FAIL_MARKER

    def maybe_fail(epoch: int) -> None:
        if fail_at is not None and epoch == fail_at and not marker.exists():
            marker.touch()
            raise RuntimeError(f"injected trial failure at epoch {epoch}")

    return maybe_fail
