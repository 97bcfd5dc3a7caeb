"""The A/B analysis: attribution of feedback, the user-level interval against a bootstrap, a real effect
found in its favour, and an A/A test's false positives (simulated populations, raysys.eval.ab_simulation)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from scipy import stats

from raysys.data.ab_log import AB_SCHEMA, feedback_record, impression_record
from raysys.eval.ab_simulation import rejection_rate, simulate_log
from raysys.eval.abtest import analyze, ratio_estimate, user_units


def log_of(records: list[dict]) -> pa.Table:
    rows = [{**r, "writer": "w", "seq": n} for n, r in enumerate(records)]
    return pa.Table.from_pylist([{k: r.get(k) for k in AB_SCHEMA.names} for r in rows], AB_SCHEMA)


def test_feedback_goes_to_the_variant_of_its_impression_and_strays_are_left_out() -> None:
    log = log_of(
        [
            impression_record("r1", "u1", "a", ["i1", "i2"]),
            impression_record("r2", "u1", "a", ["i3"]),
            impression_record("r3", "u2", "b", ["i1"]),
            impression_record("r4", "u3", "a", ["i1"]),
            impression_record("r5", "u3", "b", ["i1"]),  # u3 saw both variants (a weight change): left out
            feedback_record("r1", "u1", "i1", "click", "b"),  # the request's variant (a) wins over the record's
            feedback_record(None, "u1", "i3", "purchase", "a"),  # no request id: the user's variant then
            feedback_record(None, "u2", "i1", "skip", "b"),
            feedback_record(None, "u4", "i1", "click", "a"),  # never shown anything: left out
        ]
    )
    units, left_out = user_units(log)
    rows = {r["user_id"]: r for r in units.to_pylist()}
    assert rows == {
        "u1": {"user_id": "u1", "variant": "a", "impressions": 2, "clicks": 1, "purchases": 1, "skips": 0},
        "u2": {"user_id": "u2", "variant": "b", "impressions": 1, "clicks": 0, "purchases": 0, "skips": 1},
    }
    assert left_out == {"feedback_without_impression": 1, "users_in_several_variants": 1}


def test_the_delta_method_interval_matches_a_user_level_bootstrap() -> None:
    rng = np.random.default_rng(0)
    n = 1 + rng.poisson(6, 400).astype(float)
    c = rng.binomial(n.astype(int), rng.beta(0.5, 3.0, 400)).astype(float)  # users differ a lot
    ratio, var = ratio_estimate(c, n)
    boot = stats.bootstrap((c, n), lambda c, n: c.sum() / n.sum(), paired=True, n_resamples=2000, random_state=0)
    assert ratio == c.sum() / n.sum()
    assert abs(np.sqrt(var) / boot.standard_error - 1) < 0.1


def test_a_better_variant_is_found_significant_in_its_favour() -> None:
    result = analyze(user_units(simulate_log(3000, {"a": 0.10, "b": 0.14}, seed=1))[0], order=["a", "b"])
    a, b = result["variants"]["a"], result["variants"]["b"]
    assert result["control"] == "a" and b["ctr"] > a["ctr"] and b["lift"] > 0
    assert result["p_value"] < 0.05 and b["p_value"] == result["p_value"]
    assert a["ctr_ci95"][0] < a["ctr"] < a["ctr_ci95"][1]
    assert a["users"] + b["users"] == 3000


def test_an_a_a_test_gives_at_most_10_percent_false_positives_where_impressions_overstate() -> None:
    """50 A/A simulations (the same CTR twice), users who differ a lot (Beta concentration 0.5, 20 lists
    each): the user-level test rejects in at most 10 % of them (the nominal 5 %); the impression-level
    test, which takes every impression as independent, rejects far more often."""
    rate = rejection_rate(1000, {"a": 0.1, "b": 0.1}, runs=50, concentration=0.5, impressions=20)
    assert rate["p_value"] <= 0.10
    assert rate["p_value_impressions"] > 2 * max(rate["p_value"], 0.05)


def test_three_variants_are_each_compared_with_the_control_bonferroni_corrected() -> None:
    log = simulate_log(3000, {"a": 0.1, "b": 0.1, "c": 0.2}, seed=2)
    result = analyze(user_units(log)[0], control="a", order=["a", "b", "c"])
    assert set(result["variants"]) == {"a", "b", "c"} and "p_value" not in result["variants"]["a"]
    assert result["p_value"] == min(1.0, round(2 * result["variants"]["c"]["p_value"], 6))
