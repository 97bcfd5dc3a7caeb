"""The A/B split: sticky buckets, shares that follow the weights, and weight changes that move only the
buckets changing hands (the pure function; the served app is tests/serve/test_abtest_serving.py)."""

from __future__ import annotations

import hashlib

import pytest

from raysys.config import ServeConfig, load_config
from raysys.errors import RaysysError
from raysys.serve.variants import BUCKETS, DEFAULT_VARIANT, Variant, VariantSplit, bucket

USERS = [f"user-{n}" for n in range(20_000)]


def split(weights: dict[str, float], salt: str = "s") -> VariantSplit:
    return VariantSplit.weighted([Variant(name, f"/m/{name}", w) for name, w in weights.items()], salt)


def test_bucket_is_sha256_of_salt_and_user_mod_10000() -> None:
    for user in ("u1", "42", "ünï"):
        expected = int(hashlib.sha256(("salt" + user).encode()).hexdigest(), 16) % 10_000
        assert bucket(user, "salt") == expected
    assert bucket("u1", "salt") != bucket("u1", "other salt") or bucket("u2", "salt") != bucket("u2", "other salt")


def test_shares_follow_the_weights_and_every_bucket_has_one_variant() -> None:
    s = split({"a": 1, "b": 3})
    assert s.shares() == {"a": 0.25, "b": 0.75}
    assigned = [s.assign(u) for u in USERS]
    assert abs(assigned.count("a") / len(USERS) - 0.25) < 0.01
    assert split({"a": 1, "off": 0, "b": 1}).shares() == {"a": 0.5, "off": 0.0, "b": 0.5}
    assert s.assign(None) == "a"  # no user id: the first variant


def test_a_weight_change_moves_only_the_buckets_that_change_hands() -> None:
    before, after = split({"a": 1, "b": 1}), split({"a": 3, "b": 2})  # 50/50 -> 60/40
    moved = [u for u in USERS if before.assign(u) != after.assign(u)]
    assert all(before.assign(u) == "b" and after.assign(u) == "a" for u in moved)
    assert set(moved) == {u for u in USERS if 5_000 <= bucket(u, "s") < 6_000}
    assert abs(len(moved) / len(USERS) - 0.10) < 0.01
    # Three variants, c from 1/3 to 1/2: the ranges are consecutive, so b's slides too: a [0, 3333) -> [0, 2500),
    # b [3333, 6666) -> [2500, 5000), c [6666, 10000) -> [5000, 10000); buckets 2500..3332 go a -> b, 5000..6665 b -> c
    three = split({"a": 1, "b": 1, "c": 1}), split({"a": 1, "b": 1, "c": 2})
    assert three[0].ends == (3333, 6666, 10_000) and three[1].ends == (2500, 5000, 10_000)
    moved = {u for u in USERS if three[0].assign(u) != three[1].assign(u)}
    assert moved == {u for u in USERS if 2500 <= bucket(u, "s") < 3333 or 5000 <= bucket(u, "s") < 6666}


def test_no_variants_is_one_default_variant_serving_model_dir() -> None:
    s = VariantSplit.of(ServeConfig(), "/m/x")
    assert s.names == [DEFAULT_VARIANT] and s.variants[0].model_dir == "/m/x"
    cfg = ServeConfig(variants=[{"name": "a"}, {"name": "b", "model_dir": "/m/b", "weight": 2}])
    s = VariantSplit.of(cfg, "/m/x")
    assert [(v.name, v.model_dir, v.weight) for v in s.variants] == [("a", "/m/x", 1.0), ("b", "/m/b", 2.0)]
    assert BUCKETS == 10_000 and s.ends == (3333, 10_000)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("serve.variants=[{name: a}, {name: a}]", "unique"),
        ("serve.variants=[{name: a, weight: 0}]", "must not all be 0"),
        ("serve.variants=[{name: a, weight: -1}]", "greater than or equal to 0"),
        ("serve.variants=[{name: 'a b'}]", "pattern"),
        ("serve.variants=[{name: a, share: 1}]", "unknown key"),
    ],
)
def test_bad_variants_are_clear_config_errors(override: str, message: str) -> None:
    with pytest.raises(RaysysError, match=message):
        load_config(None, [override])
