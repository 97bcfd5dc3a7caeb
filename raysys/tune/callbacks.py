"""Tune callbacks for the console.

Tune pickles its callbacks with the experiment state; a callback class defined at module level is
pickled by reference, so it never carries the console's terminal handles along.
"""

from __future__ import annotations

from typing import Any

from ray.tune import Callback


class TrialLines(Callback):
    """One console line per finished trial: its best `metric` and the best so far."""

    def __init__(self, metric: str, num_samples: int) -> None:
        self.metric = metric
        self.num_samples = num_samples
        self.best: dict[str, float] = {}
        self.done = 0

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info) -> None:
        if self.metric in result:
            previous = self.best.get(trial.trial_id, float("-inf"))
            self.best[trial.trial_id] = max(result[self.metric], previous)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info) -> None:
        from raysys.console import console

        self.done += 1
        value = self.best.get(trial.trial_id)
        shown = f"{self.metric} {value:.4f}" if value is not None else f"no {self.metric}"
        best = max(self.best.values(), default=float("nan"))
        console.say(f"  tune     trial {self.done:>3}/{self.num_samples:<3} {shown}  (best so far {best:.4f})")
