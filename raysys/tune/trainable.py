"""Tune trials: one function trainable per trial mode (`tune.trial_mode`).

    trainable = make_trainable(cfg, dataset)    # what Tuner(...) and Tuner.restore(...) are given

Both get the dataset the tune stage resolved (its directory, opened without hashing anything again)
and the item-text table it computed, never `cfg.data` to resolve themselves.

"ray_train": the trial launches the stage's Ray Train run (`raysys.train.ray_train.fit`) into its own
trial directory; `TuneReportCallback` forwards each epoch's worker report to Tune. The trial itself
holds no CPU (its workers do), and a restored trial resumes from the Train run's checkpoints.

"direct": the trial trains in its own process through the same loop as every driver
(`raysys.train.loop`, set up by `raysys.train.local.local_run`), on the global batch of the stage's
`num_workers` Ray workers, and reports each epoch with a checkpoint of the whole training state
(`raysys.train.checkpoint`). That checkpoint is what PBT copies from a donor trial and what a retried
or restored trial resumes from. After a restore the trial's own config wins: the new lr and weight
decay are written into the restored optimizer, the loss weights build a new loss.

Each direct checkpoint's `trial_state.json` records which trial wrote it and the trial's lineage
(the donors it was copied from, and at which epoch), so an exploit is visible in the trial's state.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from raysys.config import Config
from raysys.data.dataset import PreparedDataset
from raysys.train import checkpoint as ckpt
from raysys.train.history import write_history
from raysys.train.local import global_batch, local_run
from raysys.train.loop import FailureInjection, resolve_auto, train_epochs
from raysys.train.state import VALID_METRIC, TrainState, scalars
from raysys.train.tasks import task_for
from raysys.tune.space import trial_config

METRIC = f"valid_{VALID_METRIC}"  # the objective of a ranking task's trials (maximised)
TRIAL_FILE = "trial_state.json"
FAIL_MARKER = "injected_trial_failure_done"
RAY_TRAIN_TRIAL_RESOURCES = {"cpu": 0, "memory": 1}  # what a trial that launches Ray Train holds itself


@dataclass
class TrialIdentity:
    """Which trial wrote a direct checkpoint, and the donors its weights came from (PBT)."""

    trial_id: str = ""
    lineage: list[dict[str, Any]] = field(default_factory=list)  # {"from_trial", "at_epoch"} per exploit


def objective(cfg: Config) -> str:
    """What the search maximises: the tuned task's validation metric (valid_ndcg@10, valid_auc for ctr)."""
    return f"valid_{task_for(cfg, cfg.tune.stage).metric}"


def make_trainable(cfg: Config, dataset: PreparedDataset, *, fail_in_epoch: int | None = None) -> Any:
    """The function trainable for `cfg.tune.trial_mode`, with the base config, the dataset and its
    item-text table bound, and its resources set.

    fail_in_epoch: fault injection for tests; each direct trial's process dies once, after that epoch's
    first step.
    """
    from ray import tune

    base = cfg.to_dict()
    text_emb = task_for(cfg, cfg.tune.stage).text_emb(dataset)
    bound = {"base": base, "dataset_path": str(dataset.path), "text_emb": text_emb}
    if cfg.tune.trial_mode == "ray_train":
        # The trial only waits on its trainer: the Train workers hold the CPUs (train_cfg.cpus_per_worker).
        # No CPU (a 0.01 share tips a 2-CPU machine over and Ray Data's read task waits forever), but
        # not an all-zero request either, which Ray 2.60 refuses: one byte of the memory resource.
        return tune.with_resources(tune.with_parameters(ray_train_trial, **bound), RAY_TRAIN_TRIAL_RESOURCES)
    trainable = tune.with_parameters(direct_trial, **bound, fail_in_epoch=fail_in_epoch)
    return tune.with_resources(trainable, {"cpu": cfg.tune.cpus_per_trial})


def ray_train_trial(
    config: dict[str, Any], *, base: dict[str, Any], dataset_path: str, text_emb: torch.Tensor | None
) -> None:
    """A trial that runs the stage on Ray Train workers into its trial directory; returns nothing."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from raysys.train.ray_train import fit

    cfg = trial_config(base, config)
    trial_dir = Path(tune.get_context().get_trial_dir())
    dataset = PreparedDataset.open(dataset_path)
    fit(cfg, cfg.tune.stage, trial_dir, dataset, callbacks=[TuneReportCallback()], progress=False)


def direct_trial(
    config: dict[str, Any],
    *,
    base: dict[str, Any],
    dataset_path: str,
    text_emb: torch.Tensor | None,
    fail_in_epoch: int | None = None,
) -> None:
    """A trial that trains in its own process: resume (own or donor checkpoint) -> the loop, reporting
    each epoch's record with a checkpoint -> stop at `epochs` or after `patience` bad epochs."""
    from ray import tune

    dataset = PreparedDataset.open(dataset_path)
    # loss=auto as the Ray Train run that best.yaml launches resolves it: at the per-worker batch
    cfg = direct_config(resolve_auto(trial_config(base, config), base["tune"]["stage"], dataset)[0])
    torch.set_num_threads(max(1, int(cfg.tune.cpus_per_trial)))  # concurrent trials do not oversubscribe
    run = local_run(task_for(cfg, cfg.tune.stage), dataset, text_emb)
    context = tune.get_context()
    trial_dir = Path(context.get_trial_dir())
    state, best, identity = restore_direct(
        run.engine, run.task.train_cfg, tune.get_checkpoint(), context.get_trial_id()
    )
    if fail_in_epoch is not None:
        run.fail = FailureInjection(fail_in_epoch, trial_dir / FAIL_MARKER)

    def report(state: TrainState, best: dict[str, torch.Tensor], record: dict[str, Any]) -> None:
        write_history(trial_dir, state.history)
        # "done" on the last epoch's report (the epochs ran out or patience did): Tune stops the trial on
        # it instead of asking the scheduler, which under PBT would pause it only to restart its process
        # for a return (one process start per trial saved).
        done = state.finished(run.task.train_cfg.epochs, run.task.train_cfg.patience)
        with ckpt.written(run.engine, state, best) as folder:
            (folder / TRIAL_FILE).write_text(json.dumps(asdict(identity), indent=2))
            tune.report(
                {**scalars(record), "exploits": len(identity.lineage), "done": done},
                checkpoint=tune.Checkpoint.from_directory(folder),
            )

    train_epochs(run, state, best, report, test=False)


def direct_config(cfg: Config) -> Config:
    """The trial's config with the searched stage at the global batch its `num_workers` Ray workers take.

    A direct trial stands for the Ray Train run that `best.yaml` launches; trained at the per-worker
    batch, it would take `num_workers` times the steps and tune lr for a different run.
    """
    return global_batch(cfg, cfg.tune.stage)


def restore_direct(engine, train_cfg, checkpoint, trial_id: str) -> tuple[TrainState, Any, TrialIdentity]:
    """Load a direct checkpoint into `engine` (a fresh state when None); a donor's checkpoint adds to the
    lineage, and the restored optimizer takes this trial's lr and weight decay (PBT's explored values)."""
    if checkpoint is None:
        return TrainState(), None, TrialIdentity(trial_id)
    with checkpoint.as_directory() as folder:
        state, best = ckpt.load(engine, Path(folder))
        identity = read_trial_identity(folder)
    engine.apply_settings(train_cfg)
    if identity.trial_id != trial_id:
        identity.lineage.append({"from_trial": identity.trial_id, "at_epoch": state.epoch})
        identity.trial_id = trial_id
    return state, best, identity


def read_trial_identity(checkpoint_dir: str | Path) -> TrialIdentity:
    """The trial and lineage of a direct checkpoint directory."""
    return TrialIdentity(**json.loads((Path(checkpoint_dir) / TRIAL_FILE).read_text()))
