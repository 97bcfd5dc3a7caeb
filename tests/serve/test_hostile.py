"""The endpoint tried as a hostile user would, through the shipped ingress (HAProxy): crafted bodies,
lone surrogates, slow headers, open ports, a replica killed under load. Every refusal is JSON
`{"detail": str | [{loc, msg, type}]}` without internals, and nothing is stored from a failed request.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import stat
import time
from collections import Counter
from pathlib import Path

import httpx
import psutil
import pytest
from test_app import post, replica_actors, wait_healthy

from raysys.serve.app import unavailable

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

JSON = {"content-type": "application/json"}
INTERNALS = ("Traceback", "SERVE_", "actor", "ray::", "raylet", 'File "')


def raw(served, path: str, content: bytes, headers: dict | None = None) -> httpx.Response:
    return httpx.post(served.url + path, content=content, headers=JSON if headers is None else headers, timeout=10)


def assert_json_error(response: httpx.Response, status: int) -> None:
    """The one error shape: JSON {"detail": str | [{loc, msg, type}]}, nothing internal in it."""
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json"), response.headers
    detail = response.json()["detail"]
    if isinstance(detail, list):
        assert all(set(error) == {"loc", "msg", "type"} for error in detail), detail
    else:
        assert isinstance(detail, str) and detail
    assert not any(word in response.text for word in INTERNALS), response.text


def test_lone_surrogates_are_422_and_store_nothing(served) -> None:
    served.configure(num_replicas=2)
    surrogate = b'"\\udfff"'
    cases = [
        ("/recommend", b'{"history": [' + surrogate + b"]}"),
        ("/recommend", b'{"history": ["i1"], "exclude": [' + surrogate + b"]}"),
        ("/recommend", b'{"user_id": ' + surrogate + b"}"),
        ("/events", b'{"user_id": ' + surrogate + b', "item_ids": ["i1"]}'),
        ("/events", b'{"user_id": "hostile-u", "item_ids": ["i1", ' + surrogate + b"]}"),
        ("/items", b'{"item_id": "hostile-item", "text": "a ' + surrogate[1:-1] + b' b"}'),
    ]
    for path, body in cases:
        response = raw(served, path, body)
        assert_json_error(response, 422)
        assert "surrogate" in json.dumps(response.json()) or path == "/items"  # text: pydantic's own message
    answer = post(served, "/recommend", {"user_id": "hostile-u", "k": 3})  # nothing of the failed /events
    assert answer.status_code == 200 and answer.json()["fallback"] == "popularity"
    assert post(served, "/recommend", {"history": ["hostile-item"], "k": 3}).json()["unknown_items"] == ["hostile-item"]


def test_every_refusal_is_json_without_internals(served) -> None:
    cases = [
        (raw(served, "/recommend", b"{bad json"), 422),
        (raw(served, "/recommend", b""), 422),
        (raw(served, "/recommend", b"[1, 2]"), 422),
        (raw(served, "/recommend", b'{"history": ["i1"], "k": NaN}'), 422),
        (raw(served, "/recommend", b'{"history": ["i1"], "k": "10"}'), 422),
        (raw(served, "/recommend", b'{"history": ["i1"], "extra": 1}'), 422),
        (raw(served, "/recommend", b'{"history": [' + b'"i1",' * 1001 + b'"i2"]}'), 422),
        (raw(served, "/recommend", b'{"history": ["' + b"x" * 300_000 + b'"]}'), 413),
        (raw(served, "/recommend", b'{"history": ["i1"]}', headers={}), 415),
        (raw(served, "/events", b'{"user_id": "u", "item_ids": ["i1"]}', headers={"content-type": "text/plain"}), 415),
        (httpx.get(served.url + "/no-such-path"), 404),
        (httpx.get(served.url + "/recommend"), 405),
        (httpx.request("PUT", served.url + "/events", json={}), 405),
    ]
    for response, status in cases:
        assert_json_error(response, status)
    missing = raw(served, "/recommend", b'{"history": ["i1"]}', headers={})
    assert "content-type" in missing.json()["detail"]  # the missing header is named
    assert_json_error(raw(served, "/recommend", b'{"history": ["i1"], "k": 3}', headers={"x": "1"}), 415)


def test_the_store_unavailable_answer_names_no_internals() -> None:
    exc = unavailable(RuntimeError("SERVE_DEPLOYMENT_ACTOR::raysys#live_store died; see ray troubleshooting"))
    assert exc.status_code == 503 and exc.headers == {"Retry-After": "1"}
    assert not any(word in exc.detail for word in INTERNALS), exc.detail


def test_exclude_seen_covers_every_history_id_the_api_accepts(served) -> None:
    catalog = [f"i{j}" for j in range(200)]
    history = catalog[:-12]  # 188 ids, most of them beyond what the model reads
    response = post(served, "/recommend", {"history": history * 5 + history[:60], "k": 50})  # 1000 ids
    returned = {item["item_id"] for item in response.json()["items"]}
    assert returned and not returned & set(history), returned & set(history)  # added items may rank too


def test_headers_that_never_finish_are_cut_off_within_5_s(served) -> None:
    """The connection is closed without an answer: at that stage HAProxy could only send its HTML page."""
    host, port = served.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=15) as sock:
        sock.sendall(b"POST /recommend HTTP/1.1\r\nHost: x\r\n")  # and never the rest
        start = time.monotonic()
        answer = sock.recv(4096)
        while sock.recv(4096):
            pass  # read to the close
        waited = time.monotonic() - start
    assert answer == b"" and 4 < waited < 7, (answer[:200], waited)


def test_only_the_http_port_is_reachable_and_the_admin_socket_is_private(served) -> None:
    haproxy = [p for p in psutil.process_iter(["name"]) if p.info["name"] == "haproxy"]
    listening = {c.laddr for p in haproxy for c in p.net_connections("tcp") if c.status == psutil.CONN_LISTEN}
    assert listening and all(address.ip == "127.0.0.1" for address in listening), listening
    sockets = [Path(p.cmdline()[p.cmdline().index("-f") + 1]).parent / "admin.sock" for p in haproxy]
    assert sockets and all(stat.S_IMODE(s.stat().st_mode) == 0o600 for s in sockets if s.exists())
    low, high = (int(os.environ[f"RAY_SERVE_DIRECT_INGRESS_{end}_HTTP_PORT"]) for end in ("MIN", "MAX"))
    replica_ports = {  # the cluster's own block (raysys.serve.ingress.ingress_env)
        c.laddr for p in psutil.process_iter(["name"]) for c in _listening(p) if c.laddr.port in range(low, high + 1)
    }
    assert replica_ports and all(address.ip == "127.0.0.1" for address in replica_ports), replica_ports


def _listening(process: psutil.Process) -> list:
    try:
        return [c for c in process.net_connections("tcp") if c.status == psutil.CONN_LISTEN]
    except psutil.Error:
        return []


async def hammer(url: str, stop: asyncio.Event, clients: int) -> list[tuple[int | str, float, tuple]]:
    """`clients` clients POST /recommend back to back; (status or error name, seconds, (Retry-After,
    whether the body is JSON with a detail)) per request.
    The one retry is the one HTTP allows any client: a keep-alive connection closed before any answer
    (RemoteProtocolError; HAProxy closes idle connections when it reloads for a new replica set)."""
    results: list[tuple[int | str, float, tuple]] = []

    async def client_loop(client: httpx.AsyncClient, worker: int) -> None:
        j = worker
        while not stop.is_set():
            start = time.monotonic()
            body = {"history": [f"i{j % 150}"], "k": 5}
            extra: tuple = ()
            try:
                try:
                    response = await client.post("/recommend", json=body)
                except httpx.RemoteProtocolError:
                    results.append(("closed idle connection, retried", 0.0, ()))
                    response = await client.post("/recommend", json=body)
                status: int | str = response.status_code
                if status != 200:
                    extra = (response.headers.get("retry-after"), _json_detail(response))
            except httpx.TransportError as exc:
                status = type(exc).__name__
            results.append((status, time.monotonic() - start, extra))
            j += clients

    async with httpx.AsyncClient(base_url=url, timeout=30, limits=httpx.Limits(max_connections=clients)) as client:
        await asyncio.gather(*(client_loop(client, w) for w in range(clients)))
    return results


def _json_detail(response: httpx.Response) -> bool:
    try:
        return isinstance(response.json().get("detail"), str | list)
    except ValueError:
        return False


def kill_one_replica_under_load(
    served, clients: int = 20, after_s: float = 1.5, keep_s: float = 3.0
) -> tuple[list, float]:
    """Kill a replica process (SIGKILL) while `clients` post; returns the results and the seconds until
    the deployment had its replicas back and a request through the ingress was answered again."""
    replicas = len(replica_actors())

    async def scenario() -> list[tuple[int, float]]:
        stop = asyncio.Event()
        traffic = asyncio.create_task(hammer(served.url, stop, clients))
        await asyncio.sleep(after_s)
        pid = _replica_pids()[0]
        os.kill(pid, 9)
        await asyncio.sleep(keep_s)
        stop.set()
        return await traffic

    killed_at = time.monotonic()
    results = asyncio.run(scenario())
    wait_healthy(replicas=replicas)
    wait_answering(served)
    return results, time.monotonic() - killed_at - after_s


def wait_answering(served, timeout_s: float = 60) -> None:
    """Until a /recommend through the ingress is answered 200 (HAProxy learns of a new replica a moment
    after Serve reports it running; meanwhile requests wait in Serve's proxy)."""
    deadline = time.monotonic() + timeout_s
    while post(served, "/recommend", {"history": ["i1"], "k": 3}).status_code != 200:
        assert time.monotonic() < deadline, "no answer through the ingress after the replica came back"


def _replica_pids() -> list[int]:
    pids = []
    for process in psutil.Process().children(recursive=True):
        try:
            if any("ServeReplica:raysys:Recommender" in part for part in process.cmdline()):
                pids.append(process.pid)
        except psutil.Error:
            pass
    return pids


def test_killing_one_of_two_replicas_under_20_clients_fails_no_request(served, record_property) -> None:
    served.configure(num_replicas=2)
    wait_healthy(replicas=2)
    results, recovery_s = kill_one_replica_under_load(served)
    statuses = Counter(status for status, *_ in results)
    record_property("recovery_s", round(recovery_s, 1))
    print(f"2 replicas, one killed under 20 clients: {dict(statuses)}, recovered in {recovery_s:.1f} s")
    answers = Counter({s: n for s, n in statuses.items() if isinstance(s, int)})
    assert answers == {200: answers.total()} and answers.total() > 100, statuses
    assert set(statuses) <= {200, "closed idle connection, retried"}, statuses


def test_killing_the_only_replica_answers_fast_503s_with_retry_after(served, record_property) -> None:
    """With no replica alive, every request is answered at once: 200 (before the kill, and once a new
    replica is up) or a JSON 503 with Retry-After, never a wait for the request timeout."""
    served.configure(num_replicas=1)
    wait_healthy(replicas=1)
    results, recovery_s = kill_one_replica_under_load(served, clients=20, after_s=1.5, keep_s=8.0)
    statuses = Counter(status for status, *_ in results)
    slowest = max(seconds for _, seconds, *_ in results)
    unavailable = [extra for status, _, extra in results if status == 503]
    record_property("recovery_s", round(recovery_s, 1))
    print(f"1 replica killed under 20 clients: {dict(statuses)}, slowest {slowest:.2f} s, recovered {recovery_s:.1f} s")
    assert set(statuses) <= {200, 502, 503, "closed idle connection, retried"} and statuses[503] > 0, statuses
    assert all(retry_after == "1" and json_detail for retry_after, json_detail in unavailable)
    # A request in flight on the only replica when it died has no other replica to be retried on: at
    # most one 502 per client (seen once in ~650 answers), JSON like every other answer.
    failed_mid_answer = [extra for status, _, extra in results if status == 502]
    assert len(failed_mid_answer) <= 20 and all(json_detail for _, json_detail in failed_mid_answer), statuses
    # HAProxy answers at 0.5 s (FALLBACK_TIMEOUT_MS); the client's clock also counts its own waits for a
    # CPU while the new replica starts on both cores (0.6 s alone, 1.1 s once in a full CI run). The
    # request timeout here is 3 s: anything near it would mean requests wait for a replica again.
    assert slowest < 2.0, slowest
    assert statuses[200] > 100 and recovery_s < 30
