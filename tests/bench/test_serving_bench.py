"""jobs/bench/serving.py without Ray: parsing wrk's output, the sustained rule, maxima, ratios and
targets, the request bodies, and both Lua scripts run for real by wrk against a small local server."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]

WRK_OUTPUT = """Running 15s test @ http://127.0.0.1:8000/recommend
  2 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    48.20ms   10.11ms 210.00ms   80.00%
    Req/Sec   331.00     20.00   400.00     70.00%
  Latency Distribution
     50%   45.00ms
     75%   50.00ms
     90%   60.00ms
     99%   95.00ms
  9930 requests in 15.00s, 3.00MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 30
Requests/sec:    662.00
Transfer/sec:    204.80KB
RAYSYS_WRK {"threads":2,"requests":9930,"duration_s":15.0,"requests_per_s":662.0,"statuses":{"200":9900,"503":30},\
"errors":{"connect":0,"read":2,"write":0,"status":30,"timeout":1},\
"latency_ms":{"p50":45.0,"p90":60.0,"p99":95.0,"max":210.0,"mean":48.2}}
"""


def _bench_serving():
    spec = importlib.util.spec_from_file_location("bench_serving", REPO / "jobs" / "bench" / "serving.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bench = _bench_serving()


def paced(offered: float, achieved: float, p99: float | None, non_2xx: int = 0, socket_errors: int = 0) -> dict:
    point = {"offered_rps": offered, "achieved_rps": achieved, "p99_ms": p99}
    return {**point, "non_2xx": non_2xx, "socket_errors": socket_errors}


def closed(connections: int, rps: float, p99: float = 20.0, clean: bool = True) -> dict:
    point = {"connections": connections, "rps": rps, "p99_ms": p99, "clean": clean}
    return {**point, "non_2xx": 0 if clean else 5, "socket_errors": 0}


# ------------------------------------------------------------------------------------ pure parts


def test_parse_wrk_reads_the_script_line_and_wrks_own_rate() -> None:
    figures = bench.parse_wrk(WRK_OUTPUT)
    assert figures["wrk_rps"] == 662.0
    assert figures["statuses"] == {"200": 9900, "503": 30}
    assert figures["non_2xx"] == 30
    assert figures["socket_errors"] == 3  # read 2 + timeout 1; `status` is not a socket error
    point = bench.closed_point(32, figures)
    assert (point["rps"], point["p50_ms"], point["p99_ms"]) == (662.0, 45.0, 95.0)
    assert not point["clean"]


def test_parse_wrk_without_the_script_line_is_an_error() -> None:
    with pytest.raises(bench.BenchError, match="no RAYSYS_WRK line"):
        bench.parse_wrk(WRK_OUTPUT.split("RAYSYS_WRK")[0])


@pytest.mark.parametrize(
    ("point", "sustained"),
    [
        (paced(400, 398, 40.0), True),
        (paced(400, 380, 250.0), True),  # exactly 95 % and 250 ms
        (paced(400, 379, 40.0), False),  # below 95 % of offered
        (paced(400, 398, 250.1), False),  # the queue grows
        (paced(400, 398, 40.0, non_2xx=1), False),
        (paced(400, 398, 40.0, socket_errors=1), False),
        (paced(400, 0, None), False),  # nothing answered
    ],
)
def test_sustained_rule(point: dict, sustained: bool) -> None:
    assert bench.is_sustained(point) is sustained


def test_max_rps_is_the_best_clean_point() -> None:
    points = [closed(16, 500.0), closed(32, 640.0), closed(64, 700.0, clean=False)]
    assert bench.max_rps(points) == {"rps": 640.0, "connections": 32, "raw_rps": 700.0, "raw_connections": 64}


def modes(proxy_max: float, haproxy_points: list[dict], haproxy_paced: list[dict]) -> dict[str, Any]:
    proxy_points = [closed(16, proxy_max), closed(32, proxy_max - 10)]
    return {
        "proxy": {"closed_loop": proxy_points, "paced": [], "max_rps": bench.max_rps(proxy_points)},
        "haproxy": {"closed_loop": haproxy_points, "paced": haproxy_paced, "max_rps": bench.max_rps(haproxy_points)},
    }


def test_ratios_and_targets_met() -> None:
    runs = modes(80.0, [closed(16, 600.0), closed(32, 700.0, p99=90.0)], [{**paced(400, 399, 45.0), "sustained": True}])
    ratio = bench.ratios(runs, {"batch32_qps": 1400.0})
    assert ratio["ratio_max_rps"] == round(700 / 80, 2)
    assert ratio["ratio_by_connections"] == {"16": 7.5, "32": 10.0}
    assert ratio["max_rps_over_floor_batch32"] == {"proxy": round(80 / 1400, 2), "haproxy": 0.5}
    met = bench.targets(runs, ratio)
    assert [t["met"] for t in met.values()] == [True, True, True]
    assert met["b_closed_c32"]["rps"] == 700.0 and met["c_paced_400"]["p99_ms"] == 45.0


def test_targets_not_met_or_not_measured() -> None:
    slow_c32 = closed(32, 700.0, p99=120.0)
    runs = modes(100.0, [closed(16, 650.0), slow_c32], [{**paced(300, 299, 30.0), "sustained": True}])
    met = bench.targets(runs, bench.ratios(runs, {"batch32_qps": 1400.0}))
    assert (met["a_max_rps_ratio"]["value"], met["a_max_rps_ratio"]["met"]) == (7.0, False)  # 700 / 100
    assert not met["b_closed_c32"]["met"]  # p99 120 ms > 100 ms
    assert met["c_paced_400"] == {"target": met["c_paced_400"]["target"], "met": False}  # the ladder never got there
    errors_c32 = modes(50.0, [closed(32, 900.0, clean=False)], [])
    assert not bench.targets(errors_c32, bench.ratios(errors_c32, {"batch32_qps": 1.0}))["b_closed_c32"]["met"]


def test_request_bodies_are_distinct_catalog_histories(tmp_path: Path) -> None:
    ids = [f"i{j}" for j in range(50)]
    histories = bench.request_histories(ids, count=200)
    assert len(histories) == 200 and len({tuple(h) for h in histories}) == 200
    bodies = bench.write_bodies(histories, tmp_path / "bodies.txt").read_text().splitlines()
    first = json.loads(bodies[0])
    assert first["k"] == 10 and len(set(first["history"])) == 3 and set(first["history"]) <= set(ids)
    with pytest.raises(bench.BenchError, match="needs 3"):
        bench.request_histories(["i0", "i1"])


# ------------------------------------------------------------------------------------ wrk for real


class SlowServer:
    """An HTTP/1.1 keep-alive server on 127.0.0.1 in a thread: answers every request after `delay_s`
    with 200, or 503 for every `fail_every`-th; remembers the bodies it got."""

    def __init__(self, delay_s: float, fail_every: int = 0) -> None:
        self.delay_s, self.fail_every = delay_s, fail_every
        self.bodies: list[bytes] = []
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        start = asyncio.start_server(self.handle, "127.0.0.1", 0)
        self.server = asyncio.run_coroutine_threadsafe(start, self.loop).result(timeout=10)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = (await reader.readuntil(b"\r\n\r\n")).lower()
                length = int(head.split(b"content-length:")[1].split(b"\r\n")[0])
                self.bodies.append(await reader.readexactly(length))
                await asyncio.sleep(self.delay_s)
                failed = self.fail_every and len(self.bodies) % self.fail_every == 0
                status = b"503 Service Unavailable" if failed else b"200 OK"
                writer.write(b"HTTP/1.1 %s\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}" % status)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass  # the client left, or the server is shutting down
        finally:
            writer.close()

    async def shutdown(self) -> None:
        self.server.close()
        handlers = asyncio.all_tasks() - {asyncio.current_task()}
        for task in handlers:
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.shutdown(), self.loop).result(timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


@pytest.fixture
def bodies(tmp_path: Path) -> Path:
    if shutil.which("wrk") is None or shutil.which("taskset") is None:
        pytest.skip("wrk or taskset is not installed (apt-get install wrk)")
    return bench.write_bodies(bench.request_histories([f"i{j}" for j in range(100)], count=50), tmp_path / "b.txt")


@pytest.fixture
def server(request: pytest.FixtureRequest) -> Iterator[SlowServer]:
    running = SlowServer(*request.param)
    yield running
    running.close()


CPU = (os.cpu_count() or 1) - 1


@pytest.mark.parametrize("server", [(0.005,)], indirect=True)
def test_paced_script_keeps_the_schedule(server: SlowServer, bodies: Path) -> None:
    raw = bench.run_wrk(server.url, bench.PACED_SCRIPT, 4, 4, 2, [str(bodies), "100", "4"], CPU)
    point = bench.paced_point(100.0, 4, raw)
    assert 90 <= point["sent_rps"] <= 105 and 90 <= point["achieved_rps"] <= 105
    assert 5.0 <= point["p50_ms"] < 50.0  # the server's 5 ms plus the loopback
    assert point["p50_ms"] <= point["p95_ms"] <= point["p99_ms"] <= point["max_ms"]
    assert point["statuses"] == {"200": point["answered"]} and point["sustained"]
    assert len(set(server.bodies)) == 50  # every body of the file was sent


@pytest.mark.parametrize("server", [(0.02,)], indirect=True)
def test_paced_latency_counts_the_wait_for_a_busy_connection(server: SlowServer, bodies: Path) -> None:
    # 2 connections with 20 ms answers carry at most ~100 req/s: at 200 req/s each request waits longer
    # than the one before it, which only latency from the scheduled send time shows.
    raw = bench.run_wrk(server.url, bench.PACED_SCRIPT, 2, 2, 2, [str(bodies), "200", "2"], CPU)
    point = bench.paced_point(200.0, 2, raw)
    assert point["achieved_rps"] < 0.7 * 200 and not point["sustained"]
    assert raw["latency_ms"]["p50"] < 100.0  # wrk's own latency: from the actual send
    assert point["p99_ms"] > 300.0  # from the schedule: the backlog grows to ~1 s over 2 s


@pytest.mark.parametrize("server", [(0.001, 5)], indirect=True)
def test_post_script_counts_statuses(server: SlowServer, bodies: Path) -> None:
    raw = bench.run_wrk(server.url, bench.POST_SCRIPT, 2, 4, 1, [str(bodies)], CPU)
    assert raw["requests"] > 50 and raw["wrk_rps"] > 0
    assert set(raw["statuses"]) == {"200", "503"}
    assert raw["non_2xx"] == raw["errors"]["status"] == raw["statuses"]["503"]
    assert abs(raw["statuses"]["503"] / raw["requests"] - 0.2) < 0.05
    point = bench.closed_point(4, raw)
    assert not point["clean"] and point["p50_ms"] >= 1.0
