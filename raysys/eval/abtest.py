"""The A/B test's analysis: click-through rate per variant, with the user as the unit.

    units = user_units(read_ab_log(...))        # one row per user: variant, impressions, clicks, purchases, skips
    result = analyze(units, control="a")        # {"control", "variants": {name: {...}}, "p_value", ...}

Users are what is randomised (a user's variant is fixed by its id), so the user is the unit of analysis:
a variant's CTR is the ratio of its users' clicks to their impressions, sum(c) / sum(n), and its variance
comes from the users' (c, n) pairs by the delta method (the standard error of a ratio of means), which
keeps the interval honest when some users click far more than others. Two variants are compared by the
difference of their CTRs over its delta-method standard error (a z-test; with more than two, each against
the control, Bonferroni-corrected for the headline `p_value`). The impression-level two-proportion test is
reported beside it (`p_value_impressions`): it treats every impression as independent, which it is not,
and is too confident when users differ.

What counts: impressions are the logged /recommend answers with a user_id; a click is a feedback record with
event "click" (purchases and skips are counted apart). Feedback is attributed to the variant of the
impression its request_id names, else to the variant the user was in when it was sent. Users seen in more
than one variant (weights changed during the test) are left out, and counted.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from scipy import stats

Z95 = float(stats.norm.ppf(0.975))
FEEDBACK_EVENTS = ("click", "purchase", "skip")


def user_units(log: pa.Table) -> tuple[pa.Table, dict[str, int]]:
    """(one row per user: user_id, variant, impressions, clicks, purchases, skips; what was left out)."""
    impressions = log.filter(pc.equal(log["kind"], "impression"))
    feedback = log.filter(pc.equal(log["kind"], "feedback"))
    shown_by = dict(zip(impressions["request_id"].to_pylist(), impressions["variant"].to_pylist(), strict=True))
    counts: dict[tuple[str, str], list[int]] = {}
    for user, variant in zip(impressions["user_id"].to_pylist(), impressions["variant"].to_pylist(), strict=True):
        counts.setdefault((user, variant), [0, 0, 0, 0])[0] += 1
    left_out = {"feedback_without_impression": 0, "users_in_several_variants": 0}
    for user, request, variant, event in zip(
        *(feedback[c].to_pylist() for c in ("user_id", "request_id", "variant", "event")), strict=True
    ):
        variant = shown_by.get(request, variant)
        row = counts.get((user, variant))
        if row is None or event not in FEEDBACK_EVENTS:  # the user was never shown anything in that variant
            left_out["feedback_without_impression"] += 1
            continue
        row[1 + FEEDBACK_EVENTS.index(event)] += 1
    per_user: dict[str, int] = {}
    for user, _ in counts:
        per_user[user] = per_user.get(user, 0) + 1
    several = {user for user, n in per_user.items() if n > 1}
    left_out["users_in_several_variants"] = len(several)
    rows = [(u, v, *c) for (u, v), c in counts.items() if u not in several]
    names = ["user_id", "variant", "impressions", "clicks", "purchases", "skips"]
    columns = list(zip(*rows, strict=True)) if rows else [[] for _ in names]
    types = [pa.string(), pa.string(), pa.int64(), pa.int64(), pa.int64(), pa.int64()]
    return pa.table({n: pa.array(c, t) for n, c, t in zip(names, columns, types, strict=True)}), left_out


def ratio_estimate(clicks: np.ndarray, impressions: np.ndarray) -> tuple[float, float]:
    """(sum(c) / sum(n), its delta-method variance) over users' (clicks c, impressions n)."""
    m = len(impressions)
    if m == 0 or impressions.sum() == 0:
        return float("nan"), float("nan")
    ratio = clicks.sum() / impressions.sum()
    if m < 2:
        return float(ratio), float("nan")
    mean_n = impressions.mean()
    residual = clicks - ratio * impressions  # var(c - R n) = var c - 2 R cov(c, n) + R^2 var n
    return float(ratio), float(residual.var(ddof=1) / (m * mean_n**2))


def analyze(units: pa.Table, control: str | None = None, order: list[str] | None = None) -> dict[str, Any]:
    """Per variant: users, impressions, clicks (purchases, skips), ctr, ctr_ci95; against the control (the
    first of `order`, else the first variant by name): lift, p_value (user level) and p_value_impressions.
    The headline p_value is the smallest comparison's, Bonferroni-corrected."""
    variants = order or sorted(set(units["variant"].to_pylist()))
    variants = [v for v in variants if v in set(units["variant"].to_pylist())]
    if not variants:
        return {"control": control, "variants": {}, "p_value": None, "p_value_impressions": None}
    control = control if control in variants else variants[0]
    columns = {v: _columns(units, v) for v in variants}
    out: dict[str, Any] = {}
    for name, col in columns.items():
        ctr, var = ratio_estimate(col["clicks"], col["impressions"])
        half = Z95 * math.sqrt(var) if var == var else float("nan")
        out[name] = {
            "users": int(len(col["impressions"])),
            "impressions": int(col["impressions"].sum()),
            "clicks": int(col["clicks"].sum()),
            "purchases": int(col["purchases"].sum()),
            "skips": int(col["skips"].sum()),
            "ctr": _round(ctr),
            "ctr_ci95": [_round(ctr - half), _round(ctr + half)],
        }
        out[name]["_var"] = var
    others = [v for v in variants if v != control]
    for name in others:
        out[name].update(compare(out[control], out[name]))
    for entry in out.values():
        entry.pop("_var")
    p_values = [out[n]["p_value"] for n in others if out[n]["p_value"] is not None]
    p_imps = [out[n]["p_value_impressions"] for n in others if out[n]["p_value_impressions"] is not None]
    corrected = len(others)
    return {
        "control": control,
        "variants": out,
        "p_value": _round(min(1.0, corrected * min(p_values))) if p_values else None,
        "p_value_impressions": _round(min(1.0, corrected * min(p_imps))) if p_imps else None,
    }


def compare(control: dict[str, Any], treatment: dict[str, Any]) -> dict[str, Any]:
    """The treatment against the control: relative lift, the user-level z-test's p-value and the
    impression-level two-proportion test's."""
    diff_var = control["_var"] + treatment["_var"]
    c0, c1 = control["ctr"], treatment["ctr"]
    p_user = None
    if diff_var == diff_var and diff_var > 0:
        p_user = float(2 * stats.norm.sf(abs(c1 - c0) / math.sqrt(diff_var)))
    elif diff_var == 0 and c0 is not None:
        p_user = 1.0 if c1 == c0 else 0.0
    n0, n1 = control["impressions"], treatment["impressions"]
    k0, k1 = min(control["clicks"], n0), min(treatment["clicks"], n1)
    pooled = (k0 + k1) / (n0 + n1) if n0 + n1 else float("nan")
    se = math.sqrt(pooled * (1 - pooled) * (1 / n0 + 1 / n1)) if n0 and n1 else 0.0
    p_imp = float(2 * stats.norm.sf(abs(k1 / n1 - k0 / n0) / se)) if se > 0 else None
    return {
        "lift": _round(c1 / c0 - 1) if c0 else None,
        "p_value": _round(p_user),
        "p_value_impressions": _round(p_imp),
    }


def _columns(units: pa.Table, variant: str) -> dict[str, np.ndarray]:
    rows = units.filter(pc.equal(units["variant"], variant))
    return {c: rows[c].to_numpy().astype(np.float64) for c in ("impressions", "clicks", "purchases", "skips")}


def _round(value: float | None, digits: int = 6) -> float | None:
    if value is None or value != value:
        return None
    return round(float(value), digits)
