"""What a search leaves for people: best.yaml, results.csv and plots, from Tune's ResultGrid.

table = trial_table(grid, cfg)            # one row per trial (pandas), best first
best = write_best_config(table, cfg, out) # RUN/best.yaml: `raysys distill --config RUN/best.yaml`
write_plots(grid, table, cfg, out)        # RUN/plots/*.png
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from raysys.config import Config
from raysys.tune.space import searched_values, trial_config
from raysys.tune.trainable import objective

RESULTS_FILE = "results.csv"
BEST_CONFIG_FILE = "best.yaml"
PLOTS_DIR = "plots"


def trial_table(grid, cfg: Config) -> pd.DataFrame:
    """One row per trial: id, status, best and last objective (`best_valid_ndcg@10`, `last_valid_ndcg@10`
    for a ranking task), epochs run, seconds, exploits, and the trial's searched values (its final ones
    under PBT); sorted best first."""
    metric = objective(cfg)
    table = pd.DataFrame([_trial_row(result, cfg, metric) for result in grid])
    return table.sort_values(f"best_{metric}", ascending=False, na_position="last").reset_index(drop=True)


def _trial_row(result, cfg: Config, metric: str) -> dict[str, Any]:
    history = _history(result, metric)
    row: dict[str, Any] = {
        "trial_id": _trial_id(result),
        "status": "ERROR" if result.error is not None else "TERMINATED",
        f"best_{metric}": float(history[metric].max()) if len(history) else float("nan"),
        f"last_{metric}": float(history[metric].iloc[-1]) if len(history) else float("nan"),
        "best_iteration": int(history.loc[history[metric].idxmax(), "training_iteration"]) if len(history) else 0,
        "iterations": int(history["training_iteration"].max()) if len(history) else 0,
        "seconds": round(float(result.metrics.get("time_total_s", 0.0)), 2),
        "exploits": int(result.metrics.get("exploits", 0) or 0),
    }
    row.update(_values_at_best(result, history, cfg, metric))
    row["trial_dir"] = str(result.path)
    return row


def _values_at_best(result, history: pd.DataFrame, cfg: Config, metric: str) -> dict[str, Any]:
    """The searched values in effect when the trial reported its best objective: under PBT a trial's
    config changes during the run, and its final config is not the one that scored best."""
    values = searched_values(result.config, cfg.tune)
    if len(history):
        best = history.loc[history[metric].idxmax()]
        values.update({key: best[f"config/{key}"] for key in cfg.tune.space if f"config/{key}" in history})
    return values


def _history(result, metric: str) -> pd.DataFrame:
    """The trial's reports that carry the objective (empty when it reported none)."""
    frame = result.metrics_dataframe
    if frame is None or metric not in frame:
        return pd.DataFrame(columns=[metric, "training_iteration", "timestamp"])
    return frame.dropna(subset=[metric]).reset_index(drop=True)


def _trial_id(result) -> str:
    """Tune's trial id (from its reports; a trial that never reported is named by its folder)."""
    frame = result.metrics_dataframe
    if frame is not None and "trial_id" in frame and len(frame):
        return str(frame["trial_id"].iloc[0])
    return str(result.metrics.get("trial_id") or Path(result.path).name)


def write_table(table: pd.DataFrame, out_dir: Path) -> Path:
    """RUN/results.csv."""
    path = out_dir / RESULTS_FILE
    table.to_csv(path, index=False)
    return path


def write_best_config(table: pd.DataFrame, cfg: Config, out_dir: Path) -> tuple[Config, Path]:
    """RUN/best.yaml: the full resolved config with the best trial's searched values filled in."""
    best_row = table.iloc[0].to_dict()
    values = {key: _plain(best_row[key]) for key in cfg.tune.space if key in best_row}
    best = trial_config(cfg.to_dict(), values)
    return best, best.save(out_dir / BEST_CONFIG_FILE)


def _plain(value: Any) -> Any:
    """numpy scalars (from pandas) as Python values, so the config validates and YAML stays plain."""
    return value.item() if hasattr(value, "item") else value


def write_plots(grid, table: pd.DataFrame, cfg: Config, out_dir: Path) -> list[Path]:
    """RUN/plots: objective per trial over wall time, and the trials' best objective vs lr and vs λ_kd."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = out_dir / PLOTS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    metric = objective(cfg)
    paths = [_plot_over_time(plt, grid, metric, folder / "objective_over_time.png")]
    stage = cfg.tune.stage
    for key, name in ((f"{stage}.lr", "lr"), ("distill.lambda_kd", "lambda_kd")):
        values = _resolved_values(table, cfg, key)
        best = table[f"best_{metric}"]
        paths.append(_plot_against(plt, values, best, key, metric, folder / f"objective_vs_{name}.png"))
    return paths


def _resolved_values(table: pd.DataFrame, cfg: Config, key: str) -> pd.Series:
    """A key's value per trial: searched, or the base config's when the key was not searched."""
    if key in table:
        return table[key]
    section, field = key.split(".")
    return pd.Series([getattr(getattr(cfg, section), field)] * len(table))


def _plot_over_time(plt, grid, metric: str, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4))
    histories = [(_trial_id(result), _history(result, metric)) for result in grid]
    starts = [h["timestamp"].min() - h["time_this_iter_s"].iloc[0] for _, h in histories if "time_this_iter_s" in h]
    t0 = min(starts) if starts else 0.0
    for trial_id, history in histories:
        if len(history):
            ax.plot(history["timestamp"] - t0, history[metric], marker="o", markersize=3, label=trial_id[-5:])
    ax.set(xlabel="wall time since the search started (s)", ylabel=metric, title="objective per trial")
    if len(histories) <= 12:
        ax.legend(fontsize=7, title="trial")
    return _save(plt, fig, path)


def _plot_against(plt, x: pd.Series, y: pd.Series, key: str, metric: str, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.scatter(x.astype(float), y.astype(float))
    if key.endswith(".lr"):
        ax.set_xscale("log")
    ax.set(xlabel=key, ylabel=f"best {metric}", title=f"objective vs {key}")
    return _save(plt, fig, path)


def _save(plt, fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
