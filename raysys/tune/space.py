"""The search space: `tune.space` (dotted config key -> distribution) as Ray Tune domains, and back.

    space = param_space(cfg.tune)           # {"distill.lr": tune.loguniform(2e-4, 1e-2), ...}
    trial_cfg = trial_config(base, config)  # the full Config with a trial's sampled values filled in

Trial configs are flat dicts keyed by dotted config keys, so Tune's results table, Optuna's parameter
names and PBT's mutations all speak the same names as `--config` overrides do.
"""

from __future__ import annotations

from typing import Any

from raysys.config import Config, SearchDimension, TuneConfig, config_from_dict, get_dotted
from raysys.errors import RaysysError


def param_space(tune_cfg: TuneConfig) -> dict[str, Any]:
    """Tune's `param_space`: one domain per searched key; searcher "grid" turns `grid` lists into grid_search."""
    return {key: _domain(key, dim, grid=tune_cfg.searcher == "grid") for key, dim in tune_cfg.space.items()}


def pbt_mutations(tune_cfg: TuneConfig) -> dict[str, Any]:
    """PBT's `hyperparam_mutations`: the same distributions (PBT resamples from them or scales by 1.2/0.8)."""
    return {key: _domain(key, dim, grid=False) for key, dim in tune_cfg.space.items()}


def trial_config(base: dict[str, Any], values: dict[str, Any]) -> Config:
    """The resolved `Config`: `base` (Config.to_dict()) with each dotted key of `values` set."""
    raw = _deep_copy(base)
    for key, value in values.items():
        node = raw
        *parents, leaf = key.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = value
    return config_from_dict(raw, where="tune trial config")


def config_point(cfg: Config) -> dict[str, Any] | None:
    """The config's own value of every searched key, as a starting point for the searcher; None when
    one of them lies outside its dimension (a searcher may reject such a point)."""
    base = cfg.to_dict()
    point = {key: get_dotted(base, key) for key in cfg.tune.space}
    inside = all(_inside(point[key], dim) for key, dim in cfg.tune.space.items())
    return point if inside else None


def searched_values(config: dict[str, Any], tune_cfg: TuneConfig) -> dict[str, Any]:
    """The searched keys of a trial's config (Tune may add its own keys beside them)."""
    return {key: config[key] for key in tune_cfg.space if key in config}


def check_space(cfg: Config) -> None:
    """Fail before any trial starts: every key must name a config field, and both ends of every
    range (and every listed value) must give a valid config."""
    tune_cfg = cfg.tune
    if not tune_cfg.space:
        raise RaysysError("the search space is empty", where="tune.space", hint="see jobs/configs/tune_ml100k.yaml")
    base = cfg.to_dict()
    for key, dim in tune_cfg.space.items():
        where = f"tune.space.{key}"
        if not _has_key(base, key):
            raise RaysysError(f"{key!r} is not a config key", where=where, hint="use dotted keys like distill.lr")
        for value in _candidates(key, dim):
            try:
                trial_config(base, {key: value})
            except RaysysError as exc:
                raise RaysysError(f"value {value!r} is not valid ({exc})", where=where) from None
    _check_teacher(cfg)
    if tune_cfg.searcher == "grid" and not any(dim.grid or dim.kind == "choice" for dim in tune_cfg.space.values()):
        raise RaysysError("searcher grid needs `grid` values on at least one key", where="tune.space")


def _domain(key: str, dim: SearchDimension, *, grid: bool) -> Any:
    from ray import tune

    if grid and dim.grid:
        return tune.grid_search(list(dim.grid))
    if dim.kind == "choice":
        if grid:
            return tune.grid_search(list(dim.values or []))
        return tune.choice(list(dim.values or []))
    low, high = float(dim.low), float(dim.high)  # type: ignore[arg-type]  # checked by _candidates
    return tune.loguniform(low, high) if dim.kind == "loguniform" else tune.uniform(low, high)


def _candidates(key: str, dim: SearchDimension) -> list[Any]:
    """The values `check_space` validates: the range ends, choice values and grid values."""
    where = f"tune.space.{key}"
    if dim.kind == "choice":
        if not dim.values:
            raise RaysysError("kind choice needs a non-empty `values` list", where=where)
        return [*dim.values, *(dim.grid or [])]
    if dim.low is None or dim.high is None or not dim.low < dim.high:
        raise RaysysError(f"kind {dim.kind} needs low < high (got {dim.low}, {dim.high})", where=where)
    if dim.kind == "loguniform" and dim.low <= 0:
        raise RaysysError("kind loguniform needs low > 0", where=where, hint="use kind uniform for a range from 0")
    return [dim.low, dim.high, *(dim.grid or [])]


def _check_teacher(cfg: Config) -> None:
    """A distill search without a teacher cannot weigh the teacher's losses."""
    if cfg.tune.stage != "distill" or cfg.distill.teacher is not None:
        return
    for key in ("distill.lambda_kd", "distill.lambda_hidden"):
        if key in cfg.tune.space:
            raise RaysysError(
                f"{key} is searched but distill.teacher is not set",
                where=f"tune.space.{key}",
                hint="set distill.teacher=RUN/model, or drop the key from tune.space",
            )


def _inside(value: Any, dim: SearchDimension) -> bool:
    if dim.kind == "choice":
        return value in (dim.values or [])
    return isinstance(value, (int, float)) and not isinstance(value, bool) and dim.low <= value <= dim.high  # type: ignore[operator]


_MISSING = object()


def _has_key(raw: dict[str, Any], key: str) -> bool:
    value = get_dotted(raw, key, _MISSING)
    return value is not _MISSING and not isinstance(value, dict)


def _deep_copy(raw: dict[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, dict) else v for k, v in raw.items()}
