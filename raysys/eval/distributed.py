"""Evaluation on several Ray Train workers: each worker scores its shard of the users and the
partial sums are all-reduced once (see `raysys.eval.evaluator`), so every worker ends with the
metrics of all users and rank 0's are returned.

    evaluate = partial(evaluate_dataset, scorer_for_split, dataset, cfg.eval, max_len)
    metrics = evaluate_on_ray(evaluate, num_workers=2, cpus_per_worker=0.5)

`evaluate` is any picklable zero-argument callable built on the evaluator; it runs unchanged on
every worker, where the evaluator finds the process group Ray Train set up and shards itself.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def evaluate_on_ray(
    evaluate: Callable[[], T],
    *,
    num_workers: int,
    cpus_per_worker: float = 1.0,
    storage_path: str | Path | None = None,
    name: str = "raysys-evaluate",
) -> T:
    """Run `evaluate()` on `num_workers` CPU Ray Train workers (gloo process group); rank 0's result.

    storage_path: where Ray Train keeps its run folder (default: Ray's, ~/ray_results).
    """
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    trainer = TorchTrainer(
        eval_loop_per_worker,
        train_loop_config={"evaluate": evaluate},
        torch_config=TorchConfig(backend="gloo"),
        scaling_config=ScalingConfig(num_workers=num_workers, resources_per_worker={"CPU": cpus_per_worker}),
        run_config=RunConfig(name=name, storage_path=None if storage_path is None else str(storage_path)),
    )
    return trainer.fit().return_value


def eval_loop_per_worker(config: dict[str, Any]) -> Any:
    """The Ray Train worker function: runs config["evaluate"]() inside the worker's process group."""
    return config["evaluate"]()
