"""The search itself: Ray Tune's searchers and schedulers, chosen by `cfg.tune`, and resume.

    grid = run_search(cfg, out_dir)     # out_dir/tune holds the experiment; re-running resumes it

searcher: "random" / "grid" (BasicVariantGenerator), "optuna" (OptunaSearch, TPE) or "hyperopt"
(HyperOptSearch), each limited to `max_concurrent` live trials. scheduler: "none" (FIFO), "asha"
(ASHAScheduler: stop trials whose valid NDCG@10 trails at a rung) or "pbt" (PopulationBasedTraining:
the bottom trials copy a top trial's checkpoint and perturb its lr and loss weights).
Nothing here names the machine: trial count, concurrency and per-trial CPUs come from the config,
so the same config runs on a 2-core laptop or a cluster.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from raysys.config import Config
from raysys.data.dataset import PreparedDataset
from raysys.errors import RaysysError
from raysys.train.tasks import task_for
from raysys.tune.space import check_space, config_point, param_space, pbt_mutations
from raysys.tune.trainable import make_trainable, objective

EXPERIMENT_NAME = "tune"  # the Tune experiment folder inside the run directory
MODE = "max"

log = logging.getLogger(__name__)


def experiment_dir(out_dir: Path) -> Path:
    """Where Tune keeps the experiment state, trial folders, checkpoints and TensorBoard events."""
    return out_dir.resolve() / EXPERIMENT_NAME


def run_search(cfg: Config, out_dir: Path, dataset: PreparedDataset, *, fail_in_epoch: int | None = None):
    """Run (or resume) the search described by `cfg.tune` into `out_dir`; returns Tune's ResultGrid.

    dataset: the prepared dataset of `cfg.data`, resolved once by the caller; every trial opens it.
    A run directory that already holds a restorable experiment is resumed with `Tuner.restore`:
    finished trials stay finished, unfinished and errored ones continue from their last checkpoint.
    fail_in_epoch: fault injection for tests (see `make_trainable`).
    """
    from ray import tune

    check_config(cfg)
    trainable = make_trainable(cfg, dataset, fail_in_epoch=fail_in_epoch)
    path = experiment_dir(out_dir)
    if tune.Tuner.can_restore(str(path)):
        log.warning("resuming the Tune experiment in %s", path)
        tuner = tune.Tuner.restore(str(path), trainable, resume_unfinished=True, resume_errored=True)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space=param_space(cfg.tune),
            tune_config=tune_config(cfg),
            run_config=run_config(cfg, out_dir),
        )
    return tuner.fit()


def check_config(cfg: Config) -> None:
    """Settings Ray would reject late (or never act on), rejected before any trial starts."""
    check_space(cfg)
    tune_cfg = cfg.tune
    if tune_cfg.scheduler == "pbt" and tune_cfg.trial_mode != "direct":
        raise RaysysError(
            "PBT copies checkpoints between trials with different settings, which only direct trials take",
            where="tune.scheduler",
            hint="set tune.trial_mode=direct",
        )
    if tune_cfg.scheduler == "pbt" and tune_cfg.searcher not in ("random", "grid"):
        raise RaysysError("PBT explores by itself; it takes random or grid starting points", where="tune.searcher")
    if tune_cfg.scheduler == "asha" and tune_cfg.grace_period > task_for(cfg, tune_cfg.stage).train_cfg.epochs:
        raise RaysysError("grace_period exceeds the stage's epochs", where="tune.grace_period")


def tune_config(cfg: Config):
    """TuneConfig: objective, trial count, searcher, scheduler, time budget."""
    from ray import tune

    return tune.TuneConfig(
        metric=objective(cfg),
        mode=MODE,
        num_samples=cfg.tune.num_samples,
        search_alg=make_searcher(cfg),
        scheduler=make_scheduler(cfg),
        time_budget_s=cfg.tune.time_budget_s,
        # A fresh process per trial: with reused actors Ray 2.60 gave a retried trial another trial's
        # directory (its failure marker was not found and it failed twice; measured in the tests).
        reuse_actors=False,
    )


def run_config(cfg: Config, out_dir: Path):
    """RunConfig: the experiment under out_dir (Tune's TensorBoard/CSV/JSON per trial), retries, checkpoints."""
    from ray import tune

    from raysys.tune.callbacks import TrialLines

    # PBT restores a donor's checkpoint that may be several epochs old by then: keep them all.
    keep = None if cfg.tune.scheduler == "pbt" else task_for(cfg, cfg.tune.stage).train_cfg.num_to_keep
    return tune.RunConfig(
        name=EXPERIMENT_NAME,
        storage_path=str(out_dir.resolve()),
        failure_config=tune.FailureConfig(max_failures=cfg.tune.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=keep),
        verbose=1,  # Tune's own tables: in the run's raysys.log unless --verbose
        callbacks=[TrialLines(objective(cfg), cfg.tune.num_samples)],
    )


def make_searcher(cfg: Config) -> Any:
    """Ray's search algorithm for `tune.searcher`, limited to `tune.max_concurrent` live trials.

    PBT needs its whole population alive at once (it pauses trials to time-share the CPUs), so under
    PBT the concurrency is bound by the trials' resources instead. With `tune.start_from_config` the
    first trial runs the config's own values (a grid enumerates its points instead).
    """
    from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter

    tune_cfg = cfg.tune
    start = _starting_points(cfg)
    if tune_cfg.searcher in ("random", "grid"):
        limit = 0 if tune_cfg.scheduler == "pbt" else tune_cfg.max_concurrent  # 0: no limit
        return BasicVariantGenerator(random_state=tune_cfg.seed, max_concurrent=limit, points_to_evaluate=start)
    if tune_cfg.searcher == "optuna":
        from optuna.samplers import TPESampler
        from ray.tune.search.optuna import OptunaSearch

        searcher = OptunaSearch(sampler=TPESampler(seed=tune_cfg.seed), points_to_evaluate=start)
    else:
        searcher = _hyperopt_search(tune_cfg.seed, start)
    return ConcurrencyLimiter(searcher, max_concurrent=tune_cfg.max_concurrent)


def _starting_points(cfg: Config) -> list[dict[str, Any]] | None:
    """[the config's own values] when `tune.start_from_config` (and the searcher samples), else None."""
    if not cfg.tune.start_from_config or cfg.tune.searcher == "grid":
        return None
    point = config_point(cfg)
    if point is None:
        log.warning("tune.start_from_config: a config value lies outside tune.space; not starting from it")
        return None
    return [point]


def _hyperopt_search(seed: int, start: list[dict[str, Any]] | None) -> Any:
    try:
        from ray.tune.search.hyperopt import HyperOptSearch

        return HyperOptSearch(random_state_seed=seed, points_to_evaluate=start)
    except (ImportError, AssertionError):
        raise RaysysError(
            "the hyperopt package is not installed", where="tune.searcher", hint="pip install hyperopt, or use optuna"
        ) from None


def make_scheduler(cfg: Config) -> Any:
    """Ray's trial scheduler for `tune.scheduler`; time is counted in epochs (training_iteration)."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, PopulationBasedTraining

    tune_cfg = cfg.tune
    if tune_cfg.scheduler == "asha":
        return ASHAScheduler(
            time_attr="training_iteration",
            max_t=task_for(cfg, tune_cfg.stage).train_cfg.epochs,
            grace_period=tune_cfg.grace_period,
            reduction_factor=tune_cfg.reduction_factor,
        )
    if tune_cfg.scheduler == "pbt":
        return PopulationBasedTraining(
            time_attr="training_iteration",
            perturbation_interval=tune_cfg.perturbation_interval,
            hyperparam_mutations=pbt_mutations(tune_cfg),
            quantile_fraction=tune_cfg.quantile_fraction,
            resample_probability=tune_cfg.resample_probability,
            synch=tune_cfg.synch,
        )
    return FIFOScheduler()
