"""A simulated A/B test population, for the analysis' tests and the power benchmark.

    log = simulate_log(2000, {"a": 0.10, "b": 0.12}, seed=0)    # an A/B log table (ab_log.AB_SCHEMA)
    rate = rejection_rate(2000, {"a": 0.1, "b": 0.1}, runs=50)  # A/A: the false-positive rate

Users are split the way the endpoint splits them (variants.py); each sees 1 + Poisson(impressions - 1)
recommendation lists and has its own click propensity, Beta-distributed around its variant's CTR with
concentration `concentration` (small: users differ a lot, the case an impression-level test gets wrong).
Each impression is clicked with the user's propensity; a click is feedback naming the impression's
request_id.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from raysys.data.ab_log import AB_SCHEMA
from raysys.eval.abtest import analyze, user_units
from raysys.serve.variants import Variant, VariantSplit


def simulate_log(
    num_users: int,
    ctr: dict[str, float],
    *,
    weights: dict[str, float] | None = None,
    impressions: float = 5.0,
    concentration: float = 2.0,
    salt: str = "simulated",
    seed: int = 0,
) -> pa.Table:
    """An A/B log of `num_users` users over the variants of `ctr` (name -> true CTR), split by `weights`."""
    rng = np.random.default_rng(seed)
    split = VariantSplit.weighted([Variant(n, "", (weights or {}).get(n, 1.0)) for n in ctr], salt)
    users = [f"sim-{seed}-{u}" for u in range(num_users)]
    variant = np.array([split.assign(u) for u in users])
    mean = np.array([ctr[v] for v in variant])
    propensity = rng.beta(mean * concentration, (1 - mean) * concentration)
    shown = 1 + rng.poisson(impressions - 1, num_users)
    user_of = np.repeat(np.arange(num_users), shown)  # one entry per impression
    clicked = rng.random(len(user_of)) < propensity[user_of]
    request_ids = [f"r{seed}-{i}" for i in range(len(user_of))]
    n, k = len(user_of), int(clicked.sum())
    user_ids = np.array(users)
    return pa.table(
        {
            "writer": ["sim"] * (n + k),
            "seq": np.arange(n + k),
            "kind": ["impression"] * n + ["feedback"] * k,
            "request_id": request_ids + [request_ids[i] for i in np.flatnonzero(clicked)],
            "user_id": np.concatenate([user_ids[user_of], user_ids[user_of[clicked]]]),
            "variant": np.concatenate([variant[user_of], variant[user_of[clicked]]]),
            "item_ids": [["i1", "i2"]] * n + [None] * k,
            "item_id": [None] * n + ["i1"] * k,
            "event": [None] * n + ["click"] * k,
            "timestamp": np.arange(n + k, dtype=np.float64),
        },
        schema=AB_SCHEMA,
    )


def rejection_rate(num_users: int, ctr: dict[str, float], runs: int, alpha: float = 0.05, **kwargs) -> dict[str, float]:
    """Over `runs` simulated tests: the share in which the user-level test rejects at `alpha` in favour of
    the better variant (with equal CTRs: in either direction, the false-positive rate), and the same for
    the impression-level test."""
    names = list(ctr)
    best = max(names, key=lambda n: ctr[n])
    tie = len(set(ctr.values())) == 1
    hits = {"p_value": 0, "p_value_impressions": 0}
    for run in range(runs):
        result = analyze(user_units(simulate_log(num_users, ctr, seed=run, **kwargs))[0], order=names)
        ctrs = {n: v["ctr"] for n, v in result["variants"].items()}
        favours = max(ctrs, key=lambda n: ctrs[n])
        for key in hits:
            p = result[key]
            hits[key] += p is not None and p < alpha and (tie or favours == best)
    return {key: value / runs for key, value in hits.items()}
