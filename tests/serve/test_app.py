"""The Serve application over real HTTP on a local Ray cluster: parity with a brute-force ranking, bad
input, API key, live events across replicas, new items, metrics, a killed replica, hot reload,
overload and request timeouts.

Tests run in file order to keep replica starts few: the two-replica tests first, then the ones that
scale down to one replica.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import Counter

import httpx
import numpy as np
import pytest
import torch

from raysys.models.export import load_model_dir

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

APP, DEPLOYMENT = "raysys", "Recommender"


def post(served, path: str, body: dict, **kwargs) -> httpx.Response:
    return httpx.post(served.url + path, json=body, timeout=10, **kwargs)


def ranked(response: httpx.Response) -> list[str]:
    assert response.status_code == 200, response.text
    return [item["item_id"] for item in response.json()["items"]]


async def load(url: str, bodies: list[dict], concurrency: int, retries: int = 0) -> list[tuple[int, dict | None]]:
    """POST every body to /recommend with `concurrency` in flight; a failed request (non-200 or a
    transport error, status 0) is retried up to `retries` times. Returns the final (status, json)."""
    limit = asyncio.Semaphore(concurrency)

    async def one(client: httpx.AsyncClient, body: dict) -> tuple[int, dict | None]:
        async with limit:
            status, payload = 0, None
            for attempt in range(retries + 1):
                await asyncio.sleep(0.25 * attempt)
                try:
                    r = await client.post("/recommend", json=body)
                    status, payload = r.status_code, r.json() if r.status_code == 200 else None
                except httpx.TransportError:
                    status, payload = 0, None
                if status == 200:
                    break
            return status, payload

    async with httpx.AsyncClient(base_url=url, timeout=15) as client:
        return await asyncio.gather(*(one(client, b) for b in bodies))


async def load_until(url: str, stop: asyncio.Event, concurrency: int) -> list[tuple[int, dict | None]]:
    """`concurrency` clients POST /recommend back to back until `stop`; (status, json) in finishing order."""
    results: list[tuple[int, dict | None]] = []

    async def client_loop(client: httpx.AsyncClient, worker: int) -> None:
        j = worker
        while not stop.is_set():
            r = await client.post("/recommend", json={"history": [f"i{j % 150}"], "k": 5})
            results.append((r.status_code, r.json() if r.status_code == 200 else None))
            j += concurrency

    async with httpx.AsyncClient(base_url=url, timeout=15) as client:
        await asyncio.gather(*(client_loop(client, w) for w in range(concurrency)))
    return results


def replica_actors() -> list:
    import ray

    names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)]
    return [ray.get_actor(n, namespace="serve") for n in names if n.startswith(f"SERVE_REPLICA::{APP}#{DEPLOYMENT}#")]


def wait_healthy(replicas: int, timeout_s: float = 120) -> None:
    from ray import serve

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        deployment = serve.status().applications[APP].deployments[DEPLOYMENT]
        if deployment.status == "HEALTHY" and deployment.replica_states.get("RUNNING", 0) == replicas:
            return
        time.sleep(0.5)
    raise AssertionError(f"deployment not healthy with {replicas} replicas: {deployment}")


# ------------------------------------------------------------------------------------ two replicas


def test_served_top_k_equals_a_brute_force_ranking(served, brute_force) -> None:
    served.configure(num_replicas=2)
    offline = load_model_dir(served.model_dirs["text"])
    history = offline.user_histories["u5"]
    cases = [
        ({"history": history, "k": 10}, dict(history=history, k=10)),
        (
            {"history": ["i1", "zzz", 4], "k": 5, "exclude": ["i2"]},
            dict(history=["i1", "zzz", "4"], k=5, exclude=["i2"]),
        ),
        ({"history": history, "k": 1000, "exclude_seen": False}, dict(history=history, k=1000, exclude_seen=False)),
        ({"user_id": "u5", "k": 8}, dict(history=history, k=8)),  # the user's stored history
    ]
    for body, call in cases:
        response = post(served, "/recommend", body)
        expected, _ = brute_force(offline, call.pop("history"), **call)
        assert ranked(response) == [i for i, _ in expected]
        scores = [item["score"] for item in response.json()["items"]]
        np.testing.assert_allclose(scores, [s for _, s in expected], atol=1e-4)
        assert response.json()["model_version"] == "text-v1"
    assert len(ranked(post(served, "/recommend", cases[2][0]))) == 200  # k clipped to the catalog

    cold = post(served, "/recommend", {"history": ["nope", "nix"], "k": 3}).json()
    popular = offline.popularity["item_id"].to_pylist()[:3]
    assert cold["fallback"] == "popularity" and [i["item_id"] for i in cold["items"]] == popular
    assert cold["unknown_items"] == ["nope", "nix"]
    new_user = post(served, "/recommend", {"user_id": "never-seen", "k": 3}).json()
    assert new_user["fallback"] == "popularity"
    meta = httpx.get(served.url + "/metadata").json()
    assert meta["catalog_size"] == 200 and meta["model_version"] == "text-v1" and meta["trained_at"]
    assert httpx.get(served.url + "/healthz").json() == {"status": "ok", "model_version": "text-v1"}
    assert "/recommend" in httpx.get(served.url + "/openapi.json").json()["paths"]
    assert httpx.get(served.url + "/docs").status_code == 200


BAD_INPUT = [
    # (description, body bytes or JSON, content type, expected status)
    ("k zero", {"history": ["i1"], "k": 0}, None, 422),
    ("k too large", {"history": ["i1"], "k": 1001}, None, 422),
    ("k as string", {"history": ["i1"], "k": "5"}, None, 422),
    ("k as float", {"history": ["i1"], "k": 5.5}, None, 422),
    ("k NaN", b'{"history": ["i1"], "k": NaN}', "application/json", 422),
    ("k Infinity", b'{"history": ["i1"], "k": Infinity}', "application/json", 422),
    ("id NaN", b'{"history": [NaN]}', "application/json", 422),
    ("id float", {"history": [1.5]}, None, 422),
    ("id bool", {"history": [True]}, None, 422),
    ("id object", {"history": [{"id": 1}]}, None, 422),
    ("history not a list", {"history": "i1"}, None, 422),
    ("history too long", {"history": ["i1"] * 1001}, None, 422),
    ("unknown field", {"history": ["i1"], "colour": "red"}, None, 422),
    ("neither user nor history", {"k": 5}, None, 422),
    ("exclude_seen as string", {"history": ["i1"], "exclude_seen": "yes"}, None, 422),
    ("not JSON", b"{history: [", "application/json", 422),
    ("JSON array", [1, 2], None, 422),
    ("empty body", b"", "application/json", 422),
    ("invalid UTF-8", b'{"history": ["\xff\xfe"]}', "application/json", 400),
    ("deeply nested", b"[" * 50_000 + b"]" * 50_000, "application/json", 400),
    ("body over the limit", {"history": ["i1"], "pad": "x" * 300_000}, None, 413),
    ("events without items", {"user_id": "u1", "item_ids": []}, "events", 422),
    ("item with empty text", {"item_id": "n", "text": ""}, "items", 422),
]


def test_bad_input_is_a_clear_4xx_never_a_5xx(served) -> None:
    served.configure(num_replicas=2)
    for name, body, kind, expected in BAD_INPUT:
        path = {"events": "/events", "items": "/items"}.get(kind, "/recommend")
        if isinstance(body, bytes):
            response = httpx.post(served.url + path, content=body, headers={"content-type": kind}, timeout=10)
        else:
            response = post(served, path, body)
        assert response.status_code == expected, f"{name}: {response.status_code} {response.text[:200]}"
        if expected == 422:
            detail = response.json()["detail"]
            assert detail and all("loc" in d and "msg" in d for d in detail), name
    assert httpx.get(served.url + "/recommend").status_code == 405
    assert httpx.get(served.url + "/nowhere").status_code == 404
    assert post(served, "/recommend", {"history": ["i1"], "k": 1000}).status_code == 200


def test_api_key_is_enforced_when_configured(served) -> None:
    served.configure(num_replicas=2, api_key="s3cret")
    try:
        body = {"history": ["i1"], "k": 3}
        assert post(served, "/recommend", body).status_code == 401
        assert post(served, "/recommend", body, headers={"X-API-Key": "wrong"}).status_code == 401
        assert post(served, "/recommend", body, headers={"X-API-Key": "s3cret"}).status_code == 200
        assert httpx.get(served.url + "/metadata").status_code == 401
        assert httpx.get(served.url + "/healthz").status_code == 200  # probes need no key
        served.configure(num_replicas=2)  # a redeploy that names no key (api_key_sha256: null) keeps it
        assert post(served, "/recommend", body).status_code == 401
        assert post(served, "/recommend", body, headers={"X-API-Key": "s3cret"}).status_code == 200
    finally:
        served.configure(num_replicas=2, api_key="off")  # turning it off takes saying so
        served.configure(num_replicas=2)
    assert post(served, "/recommend", {"history": ["i1"], "k": 3}).status_code == 200


def test_events_are_reflected_by_every_replica_at_once(served, brute_force) -> None:
    served.configure(num_replicas=2)
    offline = load_model_dir(served.model_dirs["text"])
    user, events = "u7", ["i150", "i151", "i152"]
    before = ranked(post(served, "/recommend", {"user_id": user, "k": 10}))
    answer = post(served, "/events", {"user_id": user, "item_ids": [*events, "unknown-item"]}).json()
    assert answer["appended"] == 4 and answer["unknown_items"] == ["unknown-item"]
    expected = [i for i, _ in brute_force(offline, [*offline.user_histories[user], *events, "unknown-item"], 10)[0]]
    assert expected != before
    replicas = set()
    for _ in range(20):
        response = post(served, "/recommend", {"user_id": user, "k": 10})
        assert ranked(response) == expected
        assert not set(events) & set(ranked(response))  # seen through the events
        replicas.add(response.headers["x-raysys-replica"])
    assert len(replicas) == 2, "the 20 requests should have reached both replicas"


def test_negative_events_are_logged_with_their_type_and_time_but_stay_out_of_the_history(served, brute_force) -> None:
    from raysys.data.event_log import interactions, read_log

    served.configure(num_replicas=2)
    offline = load_model_dir(served.model_dirs["text"])
    user = "u9"
    history = offline.user_histories[user]
    before = ranked(post(served, "/recommend", {"user_id": user, "k": 10}))
    skipped = post(served, "/events", {"user_id": user, "item_ids": ["i160"], "event": "skip", "timestamp": 1.7e9})
    assert skipped.status_code == 200 and skipped.json()["event"] == "skip"
    bought = post(served, "/events", {"user_id": user, "item_ids": ["i161"], "event": "purchase"}).json()
    assert bought["live_events"] == skipped.json()["live_events"] + 1
    expected = [i for i, _ in brute_force(offline, [*history, "i161"], 10)[0]]
    for _ in range(6):
        assert ranked(post(served, "/recommend", {"user_id": user, "k": 10})) == expected != before
    logged = interactions(read_log(served.base.event_log)).to_pylist()
    mine = [(r["item_id"], r["event"]) for r in logged if r["user_id"] == user]
    assert mine[-2:] == [("i160", "skip"), ("i161", "purchase")]
    assert next(r["timestamp"] for r in logged if r["item_id"] == "i160" and r["user_id"] == user) == 1.7e9
    for bad in ({"event": "Skip!"}, {"event": ""}, {"timestamp": -1}, {"timestamp": 1.7e12}, {"timestamp": "now"}):
        answer = post(served, "/events", {"user_id": user, "item_ids": ["i162"], **bad})
        assert answer.status_code == 422, (bad, answer.text)


def test_a_new_item_is_recommendable_at_once_on_every_replica(served) -> None:
    served.configure(num_replicas=2)
    from raysys.models.text_encoder import TextEncoder

    text = "A slow, quiet film about a lighthouse keeper and the sea."
    answer = post(served, "/items", {"item_id": "lighthouse", "text": text})
    assert answer.status_code == 200, answer.text
    assert answer.json()["catalog_size"] == 201
    offline = load_model_dir(served.model_dirs["text"])
    history = ["i1", "i2", "i3"]
    with torch.inference_mode():
        state = offline.model.user_state(torch.tensor([[offline.item_index[i] for i in history]]))[0]
        emb = torch.from_numpy(TextEncoder().encode([text])[0])
        expected = float(state @ offline.model.items.text_projection(emb))
    replicas = set()
    for _ in range(10):
        response = post(served, "/recommend", {"history": history, "k": 1000})
        scores = {i["item_id"]: i["score"] for i in response.json()["items"]}
        assert scores["lighthouse"] == pytest.approx(expected, abs=1e-3)
        replicas.add(response.headers["x-raysys-replica"])
    assert len(replicas) == 2
    assert post(served, "/items", {"item_id": "lighthouse", "text": text}).status_code == 409
    assert post(served, "/items", {"item_id": "i1", "text": text}).status_code == 409
    seen = post(served, "/recommend", {"history": [*history, "lighthouse"], "k": 1000})
    assert "lighthouse" not in ranked(seen) and not seen.json()["unknown_items"]


def test_metrics_reach_the_ray_metrics_endpoint(served) -> None:
    import ray

    served.configure(num_replicas=2)
    post(served, "/recommend", {"history": ["zz-unknown"], "k": 3})  # a fallback and an unknown item
    port = ray.nodes()[0]["MetricsExportPort"]
    wanted = (
        "ray_raysys_serve_requests",
        "ray_raysys_serve_fallbacks",
        "ray_raysys_serve_unknown_items",
        "ray_raysys_serve_latency_ms_bucket",
    )
    deadline, found = time.monotonic() + 60, {}
    while time.monotonic() < deadline:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        found = {w: [line for line in text.splitlines() if line.startswith(w)] for w in wanted}
        if all(found.values()):
            break
        time.sleep(2)
    assert all(found.values()), {w: len(v) for w, v in found.items()}
    requests = [line for line in found["ray_raysys_serve_requests"] if 'endpoint="/recommend"' in line]
    assert any('model_version="text-v1"' in line and 'status="200"' in line for line in requests)
    assert any('status="422"' in line for line in found["ray_raysys_serve_requests"])


def test_a_killed_replica_costs_no_request_with_client_retries(served) -> None:
    import ray

    served.configure(num_replicas=2)
    bodies = [{"history": [f"i{j % 150}", f"i{(j * 7) % 150}"], "k": 10} for j in range(300)]

    async def scenario() -> list[tuple[int, dict | None]]:
        traffic = asyncio.create_task(load(served.url, bodies, concurrency=4, retries=8))
        await asyncio.sleep(1.0)
        ray.kill(replica_actors()[0], no_restart=True)
        return await traffic

    results = asyncio.run(scenario())
    assert Counter(status for status, _ in results) == {200: len(bodies)}
    wait_healthy(replicas=2)
    assert post(served, "/recommend", {"history": ["i1"], "k": 3}).status_code == 200


def test_hot_reload_under_load_fails_no_request(served) -> None:
    served.configure(num_replicas=2)

    async def scenario() -> list[tuple[int, dict | None]]:
        stop = asyncio.Event()
        traffic = asyncio.create_task(load_until(served.url, stop, concurrency=4))
        await asyncio.sleep(1.0)
        await asyncio.to_thread(served.configure, "plain", num_replicas=2)  # user_config.model_dir changes
        await asyncio.sleep(1.0)
        stop.set()
        return await traffic

    try:
        results = asyncio.run(scenario())
        assert Counter(status for status, _ in results) == {200: len(results)} and len(results) > 50
        versions = [body["model_version"] for _, body in results]
        assert versions[0] == "text-v1" and set(versions[-10:]) == {"plain-v2"}
        assert httpx.get(served.url + "/metadata").json()["model_version"] == "plain-v2"
        refused = post(served, "/items", {"item_id": "fresh", "text": "anything"})
        assert refused.status_code == 409 and "text tower" in refused.json()["detail"]
    finally:
        served.configure(num_replicas=2)


# ------------------------------------------------------------------------------------ one replica


def test_autoscaling_deployment_serves(served) -> None:
    from ray import serve

    served.configure(num_replicas=1, max_replicas=2, target_ongoing_requests=2)
    try:
        deployment = serve.status().applications[APP].deployments[DEPLOYMENT]
        assert deployment.status == "HEALTHY" and 1 <= deployment.replica_states.get("RUNNING", 0) <= 2
        assert post(served, "/recommend", {"history": ["i1"], "k": 3}).status_code == 200
    finally:
        served.configure(num_replicas=1)


def test_overload_answers_only_200_or_503_with_retry_after(served, brute_force) -> None:
    served.configure(num_replicas=1, max_ongoing_requests=2, max_queued_requests=2)
    offline = load_model_dir(served.model_dirs["text"])
    history = offline.user_histories["u1"]
    bodies = [{"history": history, "k": 1000}] * 150

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=served.url, timeout=15, limits=httpx.Limits(max_connections=200)) as c:
            return await asyncio.gather(*(c.post("/recommend", json=b) for b in bodies))

    responses = asyncio.run(burst())
    statuses = Counter(r.status_code for r in responses)
    assert set(statuses) == {200, 503}, statuses
    assert all(r.headers.get("retry-after") == "1" for r in responses if r.status_code == 503)
    # Every accepted request completed in full: the same items, scores equal up to float error
    # (batches of different sizes take different BLAS paths).
    answers = [{i["item_id"]: i["score"] for i in r.json()["items"]} for r in responses if r.status_code == 200]
    assert len(answers[0]) >= len(brute_force(offline, history, 1000)[0])  # (+ items added by earlier tests)
    for answer in answers:
        assert answer.keys() == answers[0].keys()
        np.testing.assert_allclose([answer[i] for i in answers[0]], list(answers[0].values()), atol=1e-4)


def replica_pid(timeout_s: float = 60) -> int:
    """The pid of this session's only replica process (the local cluster's processes descend from
    the test process; waits for replicas still shutting down to exit)."""
    import psutil

    deadline = time.monotonic() + timeout_s
    while True:
        pids = []
        for process in psutil.Process().children(recursive=True):
            try:
                if any(f"ServeReplica:{APP}:{DEPLOYMENT}" in part for part in process.cmdline()):
                    pids.append(process.pid)
            except psutil.Error:
                pass  # exited meanwhile
        if len(pids) == 1 or time.monotonic() > deadline:
            assert len(pids) == 1, pids
            return pids[0]
        time.sleep(0.5)


def test_a_request_past_the_timeout_gets_408_and_the_next_succeeds(served) -> None:
    served.configure(num_replicas=1)
    wait_healthy(replicas=1)
    pid = replica_pid()
    served.wait_routed(replicas=1)  # else the request goes to the fallback, which answers 503 at 0.5 s
    assert post(served, "/recommend", {"history": ["i1"], "k": 3}).status_code == 200  # the replica answers
    os.kill(pid, signal.SIGSTOP)  # a stalled replica (GC pause, starved CPU): the proxy's clock runs on
    try:
        start = time.monotonic()
        stalled = post(served, "/recommend", {"history": ["i1"], "k": 3})
        waited = time.monotonic() - start
    finally:
        os.kill(pid, signal.SIGCONT)
    assert stalled.status_code == 408 and 2.5 < waited < 8, (stalled.status_code, waited)
    assert post(served, "/recommend", {"history": ["i1"], "k": 3}).status_code == 200
    wait_healthy(replicas=1)
