"""The training state every driver carries, and the one schema of its per-epoch history records.

    state = TrainState()                                    # or TrainState.from_dict(checkpointed)
    record = epoch_record(epoch, step, terms, valid, seconds)
    improved = state.advance(record, valid, task.metric, min_delta)   # one "improved" rule: strictly better
    state.finished(epochs, patience)                        # patience counts epochs without progress

A history record (one per epoch; `history.jsonl`, TensorBoard, `tune.report`, `ray.train.report`):

    epoch, step             the epoch (1-based) and the optimizer steps taken by its end
    loss, <term>...         mean of each loss term over the epoch's micro-batches and ranks
    step_losses             [steps of this epoch] each optimizer step's mean micro-batch loss, over ranks
    grad_norm, lr           mean gradient norm (before clipping) of the epoch's steps; the last step's lr
    train_seconds           the slowest rank's training time; items_per_s: targets trained per second, all ranks
    seconds                 the whole epoch, validation included
    valid_<metric>...       validation metrics (valid_ndcg@10, or valid_auc for click prediction)
    best_epoch              after this epoch: the best epoch so far
    best_valid_<metric>     and its value of the selection metric (best_valid_ndcg@10, best_valid_auc)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

VALID_METRIC = "ndcg@10"  # what picks the best epoch of a ranking task (early stopping, model selection)
COUNT_KEYS = ("num_users", "num_pairs")  # evaluator bookkeeping, not metrics


@dataclass
class TrainState:
    """Where a run stands: what a checkpoint carries besides the weights and the optimizer."""

    epoch: int = 0  # epochs done
    step: int = 0  # optimizer steps done
    best_epoch: int = 0
    best_valid: dict[str, float] = field(default_factory=dict)  # validation metrics of the best epoch
    bad_epochs: int = 0  # epochs in a row without progress (a gain over the best of more than min_delta)
    history: list[dict[str, Any]] = field(default_factory=list)
    test: dict[str, float] | None = None  # test metrics of the best weights, set when the run finishes
    resumed_from: list[int] = field(default_factory=list)  # the step of each checkpoint this run resumed from

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> TrainState:
        return cls(**raw)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def advance(self, record: dict[str, Any], valid: dict[str, float], metric: str, min_delta: float = 0.0) -> bool:
        """Take one finished epoch; returns whether it is the new best (strictly better on `metric`).

        Early stopping counts epochs without progress: an epoch makes progress when it beats the best
        so far by more than `min_delta`. A smaller gain still makes it the best epoch (its weights are
        kept), but it does not reset the patience count, so a run that only creeps up stops.
        """
        self.epoch, self.step = record["epoch"], record["step"]
        first = not self.best_valid
        improved = first or valid[metric] > self.best_valid[metric]
        progress = first or valid[metric] > self.best_valid[metric] + min_delta
        self.bad_epochs = 0 if progress else self.bad_epochs + 1
        if improved:
            self.best_epoch, self.best_valid = self.epoch, valid
        record.update({"best_epoch": self.best_epoch, f"best_valid_{metric}": self.best_valid[metric]})
        self.history.append(record)
        return improved

    def finished(self, epochs: int, patience: int) -> bool:
        """The last epoch is done, or `patience` epochs in a row did not improve."""
        return self.epoch >= epochs or self.bad_epochs >= patience


def epoch_record(
    epoch: int, step: int, terms: dict[str, Any], valid: dict[str, float], seconds: float
) -> dict[str, Any]:
    """One history record (schema in the module docstring); `terms` come from `raysys.train.loop.run_epoch`."""
    record = {"epoch": epoch, "step": step, **terms}
    record.update({f"valid_{name}": value for name, value in valid.items() if name not in COUNT_KEYS})
    record["seconds"] = round(seconds, 3)
    return record


def scalars(record: dict[str, Any]) -> dict[str, Any]:
    """The record without its per-step list (what Tune's result table takes)."""
    return {name: value for name, value in record.items() if not isinstance(value, list)}
