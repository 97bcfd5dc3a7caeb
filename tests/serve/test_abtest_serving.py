"""A/B tests in the served app over real HTTP: sticky variants across requests, replicas, a live weight
change and a restart; impressions and feedback in the A/B log; a simulated population analysed by
`raysys abtest`; `raysys update`'s swap of one variant's model."""

from __future__ import annotations

import asyncio
import json
import random
import time
from pathlib import Path

import httpx
import pytest
from test_app import APP, post

from raysys.config import VariantConfig
from raysys.data.ab_log import read_ab_log
from raysys.data.event_log import interactions, read_log
from raysys.serve.variants import Variant, VariantSplit, bucket

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

REPLICA_HEADER = "x-raysys-replica"
SALT = "raysys-ab"  # serve.ab_salt's default


def two_variants(served, a: float = 1, b: float = 1, b_model: str = "plain") -> list[VariantConfig]:
    """a serves the app's model (text-v1), b the plain model (plain-v2) unless told otherwise."""
    return [
        VariantConfig(name="a", weight=a),
        VariantConfig(name="b", model_dir=str(served.model_dirs[b_model]), weight=b),
    ]


def expected_split(a: float, b: float) -> VariantSplit:
    return VariantSplit.weighted([Variant("a", "", a), Variant("b", "", b)], SALT)


def answers(served, users: list[str], repeats: int) -> tuple[dict[str, set[tuple[str, str]]], set[str]]:
    """user -> the (variant, model_version) pairs its answers carried; the replicas that answered."""
    seen: dict[str, set[tuple[str, str]]] = {u: set() for u in users}
    replicas: set[str] = set()
    with httpx.Client(base_url=served.url, timeout=10) as client:
        for _ in range(repeats):
            for user in users:
                r = client.post("/recommend", json={"user_id": user, "k": 3})
                assert r.status_code == 200, r.text
                seen[user].add((r.json()["variant"], r.json()["model_version"]))
                replicas.add(r.headers[REPLICA_HEADER])
    return seen, replicas


def variant_by_user(served, users: list[str], split: VariantSplit, timeout_s: float = 30) -> dict[str, str]:
    """Each user's variant once every answer agrees with `split` (replicas reconfigure one after the other)."""
    deadline = time.monotonic() + timeout_s
    while True:
        seen, _ = answers(served, users, repeats=2)
        if all(len(s) == 1 for s in seen.values()) and all(next(iter(seen[u]))[0] == split.assign(u) for u in users):
            return {u: next(iter(s))[0] for u, s in seen.items()}
        assert time.monotonic() < deadline, "the replicas never agreed on the new split"
        time.sleep(0.5)


def ab_records_with(served, request_id: str, timeout_s: float = 10) -> list[dict]:
    """The A/B log's records once the impression of `request_id` is in it (impressions are appended while
    the answer goes out; feedback is in the log before its answer)."""
    deadline = time.monotonic() + timeout_s
    while True:
        rows = read_ab_log(served.base.event_log).to_pylist()  # write-ahead files included
        if any(r["kind"] == "impression" and r["request_id"] == request_id for r in rows):
            return rows
        assert time.monotonic() < deadline, f"no impression of {request_id} logged"
        time.sleep(0.2)


def test_a_user_keeps_its_variant_across_requests_replicas_and_a_restart_and_weights_move_only_their_share(
    served,
) -> None:
    from ray import serve

    users = [f"ab-user-{n}" for n in range(200)]
    served.configure(num_replicas=2, variants=two_variants(served))
    try:
        served.wait_routed(2)
        seen, replicas = answers(served, users, repeats=3)
        assert len(replicas) == 2  # both replicas answered
        versions = {"a": "text-v1", "b": "plain-v2"}
        split = expected_split(1, 1)
        for user, pairs in seen.items():  # one variant per user, the one its bucket names, served by its model
            assert pairs == {(split.assign(user), versions[split.assign(user)])}
        assert {v for pairs in seen.values() for v, _ in pairs} == {"a", "b"}
        meta = httpx.get(served.url + "/metadata").json()
        assert [(v["name"], v["weight"], v["share"], v["model_version"]) for v in meta["variants"]] == [
            ("a", 1.0, 0.5, "text-v1"),
            ("b", 1.0, 0.5, "plain-v2"),
        ]
        before = {u: next(iter(p))[0] for u, p in seen.items()}

        served.configure(num_replicas=2, variants=two_variants(served, a=3, b=2))  # 60/40, live (reconfigure)
        after = variant_by_user(served, users, expected_split(3, 2))
        moved = {u for u in users if before[u] != after[u]}
        assert moved == {u for u in users if 5000 <= bucket(u, SALT) < 6000} and moved  # b -> a, 10 % of buckets
        assert all(before[u] == "b" and after[u] == "a" for u in moved)

        serve.delete(APP)  # a restart: new replicas, new processes
        served.deployed = {}
        served.configure(num_replicas=2, variants=two_variants(served, a=3, b=2))
        served.wait_routed(2)
        assert variant_by_user(served, users, expected_split(3, 2), timeout_s=5) == after
    finally:
        served.configure(num_replicas=2)


def test_impressions_and_feedback_are_logged_and_feedback_is_an_interaction(served) -> None:
    served.configure(num_replicas=2, variants=two_variants(served))
    try:
        served.wait_routed(2)
        shown = post(served, "/recommend", {"user_id": "fb-user", "k": 4})
        anonymous = post(served, "/recommend", {"history": ["i1", "i2"], "k": 4})  # no user: variant a, no impression
        assert shown.status_code == anonymous.status_code == 200 and anonymous.json()["variant"] == "a"
        answer = shown.json()
        item = answer["items"][0]["item_id"]
        body = {"request_id": answer["request_id"], "user_id": "fb-user", "item_id": item, "event": "click"}
        feedback = post(served, "/feedback", body)
        assert feedback.status_code == 200, feedback.text
        assert feedback.json()["variant"] == answer["variant"] and feedback.json()["request_id"] == answer["request_id"]
        skip = post(served, "/feedback", {"user_id": "fb-user", "item_id": "i7", "event": "skip", "timestamp": 1e9})
        assert skip.status_code == 200 and skip.json()["request_id"] is None

        rows = ab_records_with(served, answer["request_id"])
        impressions = [r for r in rows if r["kind"] == "impression" and r["request_id"] == answer["request_id"]]
        assert len(impressions) == 1 and impressions[0]["user_id"] == "fb-user"
        assert impressions[0]["item_ids"] == [i["item_id"] for i in answer["items"]]
        assert impressions[0]["variant"] == answer["variant"]
        assert not [r for r in rows if r["request_id"] == anonymous.json()["request_id"]]
        mine = {(r["request_id"], r["item_id"], r["event"], r["variant"]) for r in rows if r["kind"] == "feedback"
                and r["user_id"] == "fb-user"}  # fmt: skip
        assert mine == {
            (answer["request_id"], item, "click", answer["variant"]),
            (None, "i7", "skip", answer["variant"]),
        }
        events = interactions(read_log(served.base.event_log)).to_pylist()  # and the user's interactions
        logged = {(e["item_id"], e["event"]) for e in events if e["user_id"] == "fb-user"}
        assert logged == {(item, "click"), ("i7", "skip")}
        for bad in (
            {"user_id": "u", "item_id": "i1", "event": "like"},
            {"item_id": "i1", "event": "click"},
            {"user_id": "u", "item_id": "i1", "event": "click", "request_id": ""},
            {"user_id": "u", "item_id": "i1", "event": "click", "extra": 1},
        ):
            refused = post(served, "/feedback", bad)
            assert refused.status_code == 422, (bad, refused.text)
    finally:
        served.configure(num_replicas=2)


def test_a_simulated_population_that_prefers_b_makes_raysys_abtest_find_b_better(served, tmp_path: Path) -> None:
    """200 users, 4 recommendation lists each; a user clicks the first item shown with probability 0.15 in
    variant a and 0.45 in b. `raysys abtest` on the endpoint's log finds b better, significantly."""
    from raysys.cli import main

    # Both variants serve the same model: only the clicks differ
    served.configure(num_replicas=2, variants=two_variants(served, b_model="text"))
    click = {"a": 0.15, "b": 0.45}
    since = time.time()
    try:
        served.wait_routed(2)

        async def user(client: httpx.AsyncClient, name: str, rng: random.Random) -> None:
            for _ in range(4):
                r = await client.post("/recommend", json={"user_id": name, "k": 5})
                assert r.status_code == 200, r.text
                answer = r.json()
                if rng.random() < click[answer["variant"]]:
                    body = {"request_id": answer["request_id"], "user_id": name,
                            "item_id": answer["items"][0]["item_id"], "event": "click"}  # fmt: skip
                    assert (await client.post("/feedback", json=body)).status_code == 200

        async def population() -> None:
            rng, limit = random.Random(0), asyncio.Semaphore(8)
            async with httpx.AsyncClient(base_url=served.url, timeout=15) as client:

                async def one(n: int) -> None:
                    async with limit:
                        await user(client, f"sim-user-{n}", rng)

                await asyncio.gather(*(one(n) for n in range(200)))

        asyncio.run(population())
    finally:
        served.configure(num_replicas=2)
    out = tmp_path / "abtest"
    argv = ["abtest", f"abtest.event_log={served.base.event_log}", f"abtest.since={since}",
            "serve.variants=[{name: a}, {name: b}]", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    result = json.loads((out / "abtest.json").read_text())
    a, b = result["variants"]["a"], result["variants"]["b"]
    assert a["users"] + b["users"] == 200 and a["impressions"] + b["impressions"] == 800
    assert b["ctr"] > a["ctr"] and result["significant"] and result["p_value"] < 0.05


def test_an_update_can_swap_one_variant_s_model(served) -> None:
    from raysys.errors import RaysysError
    from raysys.serve.deploy import swap_model

    served.configure(num_replicas=2, variants=two_variants(served, b_model="text"))
    try:
        swap = swap_model(APP, str(served.model_dirs["plain"]), variant="b")
        assert swap["variant"] == "b" and swap["previous"] == str(served.model_dirs["text"])
        deadline = time.monotonic() + 30
        while True:
            meta = httpx.get(served.url + "/metadata").json()
            if [v["model_version"] for v in meta["variants"]] == ["text-v1", "plain-v2"]:
                break
            assert time.monotonic() < deadline, meta
            time.sleep(0.5)
        with pytest.raises(RaysysError, match="no variant 'c'"):
            swap_model(APP, str(served.model_dirs["plain"]), variant="c")
    finally:
        served.deployed = {}  # swap_model changed the deployed config behind the fixture's back
        served.configure(num_replicas=2)
