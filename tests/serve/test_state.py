"""The live state: its caps, the store's versioned changes, and the replicas' mirrors (in-process:
the store's methods are awaited directly, as a Ray actor call would)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np

from raysys.serve import state
from raysys.serve.state import Limits, LiveMirror, LiveState, LiveStore


class Direct:
    """A LiveStoreClient stand-in that calls the store in this event loop."""

    def __init__(self, store: LiveStore) -> None:
        self.store = store

    async def call(self, method: str, *args: Any, timeout_s: float | None = None) -> Any:
        result = getattr(self.store, method)(*args)
        return await result if asyncio.iscoroutine(result) else result


def test_live_state_appends_caps_and_forgets_idle_users() -> None:
    live = LiveState(Limits(max_events_per_user=3, max_users=2))
    assert live.append_events("a", ["1", "2"]) == 2
    assert live.append_events("a", ["3", "4"]) == 3
    live.append_events("b", ["x"])
    live.append_events("a", ["5"])  # a is now the most recently updated
    live.append_events("c", ["y"])  # evicts b, the user idle longest
    snapshot = live.read(["a", "b", "c", "d"], known_items=0)
    assert snapshot.events == {"a": ["3", "4", "5"], "c": ["y"]}
    assert live.add_item("n1", np.ones(4)) and not live.add_item("n1", np.zeros(4))
    live.add_item("n2", np.ones(4))
    later = live.read([], known_items=1)
    assert [i for i, _ in later.new_items] == ["n2"] and later.total_items == 2


def test_a_write_returns_only_once_every_following_mirror_has_it() -> None:
    async def scenario() -> None:
        store = LiveStore(Limits(max_events_per_user=3))
        mirrors = [LiveMirror(Direct(store), f"r{i}") for i in range(2)]
        for mirror in mirrors:
            mirror.start()
        while not all(m.read([], 0, m.epoch) for m in mirrors):
            await asyncio.sleep(0.01)  # first follow: a full copy and a lease
        for n in range(20):
            await store.append_events("u", [f"i{n}"])
            for mirror in mirrors:  # read-your-writes on every replica, with no store call
                assert mirror.read(["u"], 0, mirror.epoch).events == {
                    "u": [f"i{max(0, n - 2) + j}" for j in range(min(3, n + 1))]
                }
        assert await store.add_item("new", np.ones(4)) and not await store.add_item("new", np.ones(4))
        for mirror in mirrors:
            snapshot = mirror.read([], 0, mirror.epoch)
            assert [i for i, _ in snapshot.new_items] == ["new"] and snapshot.total_items == 1
        assert {k: store.stats()[k] for k in ("users", "items", "mirrors")} == {"users": 1, "items": 1, "mirrors": 2}
        for mirror in mirrors:
            mirror.task.cancel()

    asyncio.run(scenario())


def test_a_stalled_mirror_delays_writes_by_a_lease_at_most_and_stops_reading_locally(monkeypatch) -> None:
    monkeypatch.setattr(state, "LEASE_MARGIN_S", 0.1)

    async def scenario() -> None:
        store = LiveStore(lease_s=0.4)
        mirror = LiveMirror(Direct(store), "stalled", lease_s=0.4)
        mirror.start()
        while not mirror.read([], 0, mirror.epoch):
            await asyncio.sleep(0.01)
        mirror.task.cancel()  # it stops following (a stopped process, a lost connection)
        start = time.monotonic()
        await store.append_events("u", ["x"])
        waited = time.monotonic() - start
        assert waited < 0.4 + 0.1 + 0.2
        assert mirror.read(["u"], 0, mirror.epoch) is None  # its lease ran out: it must read the store
        start = time.monotonic()
        await store.append_events("u", ["y"])  # an expired mirror is no longer waited for
        assert time.monotonic() - start < 0.05

    asyncio.run(scenario())


def test_a_new_store_sends_a_full_copy_and_remembers_the_api_key() -> None:
    async def scenario() -> None:
        old = LiveStore()
        mirror = LiveMirror(Direct(old), "r0")
        mirror.current_until = time.monotonic() + 60  # answers are applied by hand below
        await old.append_events("u", ["a"])
        mirror.apply(await old.follow("r0", mirror.epoch, mirror.version, 0.0))
        assert mirror.read(["u"], 0, mirror.epoch).events == {"u": ["a"]}
        new = LiveStore()  # the old one died; Serve created another
        await new.append_events("v", ["b"])
        mirror.apply(await new.follow("r0", mirror.epoch, mirror.version, 0.0))
        assert mirror.epoch == new.epoch and mirror.read(["u", "v"], 0, mirror.epoch).events == {"v": ["b"]}
        # A reader holding another epoch's item count gets every item of this one.
        await new.add_item("n", np.ones(4))
        assert (await new.read([], 5, "another-epoch")).total_items == 1 and len(
            (await new.read([], 5, "another-epoch")).new_items
        ) == 1
        assert new.api_key(None) is None and new.api_key("ab" * 32) == "ab" * 32 and new.api_key(None) == "ab" * 32

    asyncio.run(scenario())


def test_the_store_is_rebuilt_from_the_event_log_and_takes_each_record_once(tmp_path, monkeypatch) -> None:
    from raysys.data.event_log import EventLogWriter, event_record, item_record

    monkeypatch.setattr(state, "TAIL_S", 0.05)

    async def scenario() -> None:
        log = EventLogWriter(tmp_path, "r0")
        log.append([event_record("u", "a", timestamp=1.0), event_record("u", "b", timestamp=2.0)])
        log.append([item_record("new", np.ones(4), timestamp=3.0)])
        store = LiveStore()
        assert await store.append_events("u", ["early"]) == 1  # before it knows the log: dropped at the rebuild
        epoch = store.epoch
        await store.open_log(str(tmp_path))  # what a restarted store does when a replica tells it the log
        assert store.epoch != epoch and store.stats()["items"] == 1
        assert (await store.read(["u"], 0)).events == {"u": ["a", "b"]}
        # A replica writes, then pushes with the records' key: taken in once, whether the push or the
        # tail comes first; a record no push brought (the push failed) arrives through the tail.
        (seq,) = log.append([event_record("u", "c")])
        assert await store.append_events("u", ["c"], ("r0", seq)) == 3
        log.append([event_record("u", "d")])  # never pushed
        deadline = time.monotonic() + 5
        while (await store.read(["u"], 0)).events["u"][-1] != "d" and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert await store.append_events("u", ["d"], ("r0", seq + 1)) == 4  # a late push: already in
        assert (await store.read(["u"], 0)).events == {"u": ["a", "b", "c", "d"]}
        assert not await store.add_item("new", np.ones(4), ("r0", 2))
        log.close()
        store._tail_task.cancel()

    asyncio.run(scenario())


def test_negative_event_types_never_reach_a_history(tmp_path, monkeypatch) -> None:
    from raysys.data.event_log import EventLogWriter, event_record

    monkeypatch.setattr(state, "TAIL_S", 0.05)

    async def scenario() -> None:
        log = EventLogWriter(tmp_path, "r0")
        log.append([event_record("u", "a", "click", 1.0), event_record("u", "b", "skip", 2.0)])
        store = LiveStore()
        await store.open_log(str(tmp_path), ["skip"])  # the rebuild leaves the skip out
        assert (await store.read(["u"], 0)).events == {"u": ["a"]}
        (seq,) = log.append([event_record("u", "c", "skip")])
        assert await store.append_events("u", ["c"], ("r0", seq), positive=False) == 1  # pushed: taken in, not kept
        log.append([event_record("u", "d", "dislike"), event_record("u", "e", "purchase")])  # tailed, never pushed
        deadline = time.monotonic() + 5
        while (await store.read(["u"], 0)).events["u"][-1] != "e" and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert (await store.read(["u"], 0)).events == {"u": ["a", "d", "e"]}  # "dislike" is not negative here
        log.close()
        store._tail_task.cancel()

    asyncio.run(scenario())


def test_memory_is_counted_as_python_holds_it_and_bounded_by_evicting_idle_users() -> None:
    import random
    import string
    import tracemalloc

    def ids(n: int, length: int = 128) -> list[str]:
        return ["".join(random.choices(string.ascii_letters, k=length)) for _ in range(n)]

    unbounded = LiveState(Limits(max_bytes=1 << 40, max_user_bytes=1 << 30))
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for user in range(100):
        for _ in range(5):
            unbounded.append_events(f"user-{user}", ids(20))
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert 0.9 < held / unbounded.bytes < 1.1  # the count is what the objects cost

    live = LiveState(Limits(max_events_per_user=50, max_user_bytes=4 << 10, max_bytes=1 << 20))
    kept = live.append_events("u", ids(40))  # 40 ids of 185 bytes: only the most recent fit in 4 KiB
    assert kept < 40 and live.user_bytes["u"] <= 4 << 10 < live.user_bytes["u"] + 185
    for user in range(2000):  # 2000 users x 4 KiB: eight times the budget
        live.append_events(f"flood-{user}", ids(30))
        assert live.bytes <= 1 << 20
    assert "u" in live.evicted and "flood-1999" in live.events and "flood-0" in live.evicted
    assert live.bytes == sum(live.user_bytes.values())  # no items: every byte is a user's
    live.set_events("u", ["a", "b"])  # a reload: back, and no longer evicted
    assert live.events["u"] == ["a", "b"] and "u" not in live.evicted


def test_an_evicted_user_is_reloaded_from_the_log_when_read_or_posting_again(tmp_path, monkeypatch) -> None:
    from raysys.data.event_log import EventLogWriter, event_record

    monkeypatch.setattr(state, "TAIL_S", 0.05)

    async def scenario() -> None:
        log = EventLogWriter(tmp_path, "r0", seal_records=300)
        store = LiveStore(Limits(max_bytes=1 << 20))
        await store.open_log(str(tmp_path), ["skip"])
        posted: dict[str, list[str]] = {}
        for n in range(3000):  # 60 users x 50 ids of 400 characters: ~1.2 MiB, over the 1 MiB budget
            user, item = f"u{n % 60}", f"{n:06d}" + "x" * 394
            event = "skip" if n % 7 == 0 else "click"
            (seq,) = log.append([event_record(user, item, event, float(n))])
            await store.append_events(user, [item], ("r0", seq), positive=event != "skip")
            if event != "skip":
                posted.setdefault(user, []).append(item)
        stats = store.stats()
        assert stats["bytes"] <= 1 << 20 and stats["evicted"] > 0 and stats["sealed_segments"] >= 9
        assert stats["delta_bytes"] <= (1 << 20) // 4
        gone = next(u for u in posted if u in store.state.evicted)
        assert (await store.read([gone], 0)).events == {gone: posted[gone]}  # through the index
        other = next(u for u in posted if u in store.state.evicted)
        (seq,) = log.append([event_record(other, "new", "click", 1e6)])
        assert await store.append_events(other, ["new"], ("r0", seq)) == len(posted[other]) + 1
        assert store.state.events[other] == [*posted[other], "new"]
        log.close()
        store._tail_task.cancel()

    asyncio.run(scenario())


def test_the_sweep_seals_dead_writers_segments_in_the_ab_log_too(tmp_path, monkeypatch) -> None:
    """A replica that died leaves write-ahead files in the event log and in the A/B log beside it: the store's
    sweep seals both (and the A/B log reads the same before and after)."""
    import json

    from raysys.data.ab_log import AB_DIR, AB_SCHEMA, impression_record
    from raysys.data.event_log import event_record, read_log

    monkeypatch.setattr(state, "SEAL_ORPHANS_S", 0.0)
    ab = tmp_path / AB_DIR
    ab.mkdir()
    records = {tmp_path: event_record("u", "a", timestamp=1.0), ab: impression_record("r1", "u", "b", ["a", "c"], 2.0)}
    for root, record in records.items():  # what a killed writer "dead" left: an open segment each
        (root / "wal-dead-00000000.jsonl").write_text(json.dumps({**record, "writer": "dead", "seq": 0}) + "\n")
    before = read_log(ab, AB_SCHEMA).to_pylist()

    async def scenario() -> None:
        store = LiveStore()
        await store.open_log(str(tmp_path))
        await store._sweep(store._tailer)
        store._tail_task.cancel()

    asyncio.run(scenario())
    for root in records:
        assert [p.name for p in root.glob("*-dead-*")] == ["seg-dead-00000000.parquet"]
    assert read_log(ab, AB_SCHEMA).to_pylist() == before and before[0]["item_ids"] == ["a", "c"]
