"""`raysys abtest`: analyse the A/B test an endpoint logged (its impressions and feedback).

    raysys abtest --config runs/serve/config.yaml --out runs/abtest          # a `raysys serve` run's log
    raysys abtest --config jobs/configs/serve.yaml abtest.event_log=s3://bucket/log abtest.control=a --out DIR

Reads the A/B log beside `abtest.event_log` (default `serve.event_log`; an s3:// / gs:// log is copied to
the data cache first), keeps the records within [abtest.since, abtest.until), makes one unit per user
(raysys.eval.abtest.user_units) and compares each variant's CTR with the control's (the user-level
delta method; the impression-level two-proportion test beside it). Writes DIR/abtest.json and
DIR/report.html (its A/B section); summary.json holds the same figures:

    {"control", "variants": {name: {"users", "impressions", "clicks", "purchases", "skips", "ctr", "ctr_ci95",
     ["lift", "p_value", "p_value_impressions"]}}, "p_value", "p_value_impressions", "significant", "alpha",
     "left_out", "records", "event_log"}
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pyarrow.compute as pc

from raysys.config import Config
from raysys.console import console
from raysys.errors import RaysysError

DESCRIPTION = "analyse an endpoint's A/B test: CTR per variant with user-level intervals and p-values"
RESULT_FILE = "abtest.json"


def run(cfg: Config, out_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The analysis of the A/B log of `abtest.event_log` (or `serve.event_log`) into out_dir."""
    from raysys.data.ab_log import read_ab_log
    from raysys.eval.abtest import analyze, user_units
    from raysys.report.report import build_report
    from raysys.run import write_summary

    location = cfg.abtest.event_log or cfg.serve.event_log
    if not location:
        raise RaysysError(
            "no event log to read", where="abtest.event_log", hint="set abtest.event_log or serve.event_log"
        )
    log = read_ab_log(location, cfg.data.cache_dir)
    if cfg.abtest.since is not None:
        log = log.filter(pc.greater_equal(log["timestamp"], cfg.abtest.since))
    if cfg.abtest.until is not None:
        log = log.filter(pc.less(log["timestamp"], cfg.abtest.until))
    units, left_out = user_units(log)
    if units.num_rows == 0:
        raise RaysysError(
            f"no impressions logged ({log.num_rows} A/B records in range)",
            where=location,
            hint="serve with serve.log_impressions=true and ask /recommend with a user_id",
        )
    order = [v.name for v in cfg.serve.variants] or None
    control = cfg.abtest.control or (order[0] if order else None)
    if cfg.abtest.control is not None and cfg.abtest.control not in set(units["variant"].to_pylist()):
        raise RaysysError(f"variant {cfg.abtest.control!r} has no impressions", where="abtest.control")
    result = analyze(units, control=control, order=order)
    p = result["p_value"]
    result.update(
        significant=p is not None and p < cfg.abtest.alpha,
        alpha=cfg.abtest.alpha,
        left_out=left_out,
        records=log.num_rows,
        event_log=location,
        unit="user",
        method="CTR = clicks / impressions per variant; user-level delta-method z-test against the control "
        "(Bonferroni over the comparisons); p_value_impressions: impression-level two-proportion z-test",
    )
    (Path(out_dir) / RESULT_FILE).write_text(json.dumps(result, indent=2))
    _print(result)
    write_summary(out_dir, "abtest", result)  # the report reads it (the CLI writes it again, the same)
    build_report(Path(out_dir))
    return result


def _print(result: dict[str, Any]) -> None:
    rows = []
    for name, v in result["variants"].items():
        low, high = v["ctr_ci95"]
        interval = f"[{low:.4f}, {high:.4f}]" if low is not None else "–"
        p = v.get("p_value")
        rows.append(
            [name, str(v["users"]), str(v["impressions"]), str(v["clicks"]), f"{v['ctr']:.4f}", interval,
             "control" if name == result["control"] else (f"{p:.4g}" if p is not None else "–")]
        )  # fmt: skip
    console.table("A/B test (unit: user)", ["variant", "users", "impressions", "clicks", "CTR", "95 % CI", "p"], rows)
    verdict = "significant" if result["significant"] else "not significant"
    console.say(f"p = {result['p_value']} ({verdict} at alpha {result['alpha']})")
