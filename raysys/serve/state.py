"""The live state every replica must agree on: events posted since training, items added since.

One `LiveStore` actor per deployment (a Serve *deployment-scoped actor*: created with the
deployment, shared by all its replicas, removed with it) holds the truth, a `LiveState`:

- per user, the item ids posted to `/events` (most recent last, the last `max_events_per_user`);
- the items posted to `/items`, in arrival order, with their 384-d text embeddings.

Every replica keeps a `LiveMirror`: a local copy the store pushes changes to, so a `/recommend`
batch reads memory instead of making an actor call. The push is a long poll: each mirror keeps one
`follow(since=version)` call open; the store answers it as soon as something changes, with the
changes (`Delta`s) after `version`, and the mirror's next `follow` acknowledges them.

Read-your-writes across replicas holds through leases. A write (`append_events`, `add_item`) returns
only once every mirror holding a lease has acknowledged it, or its lease ran out. A mirror reads
locally only while its own lease runs (from the *sending* time of its last answered follow, so it
always expires before the store's view of it); outside it, the replica reads the store (the old path,
one actor call per batch). A stalled replica therefore delays writes by at most a lease, never
serves stale data, and a fresh store (after a crash; its `epoch` changes) sends each mirror a full
copy. Events are keyed by original ids, so they survive a hot reload to a model with another
vocabulary.

Memory is bounded (`Limits`, from serve.live_*): per user the most recent ids within a count and a
byte cap, and in all a byte budget past which the users updated longest ago are evicted; an evicted
user's events come back from the log through the store's per-segment user index when it is read or
posts again (`LiveStore.read`, `append_events`).

The store is a cache of the durable event log (event_log.py): replicas write each record to the log
before they acknowledge it, then push it here with its log key (writer, seq). The store learns the
log's directory from the replicas (`open_log`, also sent with every `follow`), rebuilds its state from
the log then (so a restarted store comes back with every acknowledged event and item), and from then
on tails the log, taking in what no push brought (a push that failed, a replica that died between its
write and its push); the keys make every record count once. It also seals the open segments of
replicas that died.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable, Collection
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from raysys.config import DataConfig
from raysys.data.ab_log import AB_SCHEMA, ab_location
from raysys.data.event_log import LogTailer, UserIndex, seal_orphans
from raysys.data.remote_log import pull_segments, push_segments
from raysys.errors import RaysysError

logger = logging.getLogger("ray.serve")

LEASE_S = 2.0  # how long a mirror's acknowledged state counts as current
LEASE_MARGIN_S = 0.5  # the store's view of a lease outlasts the mirror's by this much
FOLLOW_WAIT_S = 0.5  # a follow call is answered after at most this long, changes or not
MAX_DELTAS = 10_000  # changes kept for mirrors that are behind; older: a full copy
MAX_DELTA_BYTES = 16 << 20  # ... and at most this much of them (or a quarter of max_bytes): they can hold
# ids the state has evicted, so this is what the store may hold beyond live_store_max_bytes
TAIL_S = 1.0  # how often the store reads the log on (records no push brought)
STORE_ENV = {"MALLOC_ARENA_MAX": "2", "ARROW_DEFAULT_MEMORY_POOL": "system"}  # the store actor's allocators
SEAL_ORPHANS_S = 10.0  # how often it seals the open segments of writers that died


@dataclass(frozen=True)
class LiveSnapshot:
    """What one read returns: the asked users' live events and the items added after `known_items`."""

    events: dict[str, list[str]] = field(default_factory=dict)
    new_items: list[tuple[str, np.ndarray]] = field(default_factory=list)  # (item_id, [384] float32)
    total_items: int = 0  # items added so far (the next read's `known_items`)
    epoch: str = ""  # which store incarnation: item counts of another epoch do not compare


@dataclass(frozen=True)
class Limits:
    """What the live state may hold (serve.live_*): events per user, in count and bytes, and the bytes of
    every user's events and added item together; past them the users idle longest are evicted."""

    max_events_per_user: int = 1000
    max_user_bytes: int = 256 << 10
    max_bytes: int = 256 << 20
    max_users: int = 1_000_000


@dataclass
class LiveState:
    """Events per user and added items, within `Limits`; the same code runs in the store and in every
    mirror, so applying the store's changes in order reproduces its state exactly.

    Memory is counted as the Python objects cost (`id_bytes`, USER_BYTES, ITEM_BYTES): a user's events
    keep their most recent ids within max_events_per_user and max_user_bytes, and when everything passes
    max_bytes the users updated longest ago are evicted (their ids go to `evicted`, so a reader knows to
    have the store reload them from the event log: `LiveStore.read`)."""

    limits: Limits = field(default_factory=Limits)
    events: OrderedDict[str, list[str]] = field(default_factory=OrderedDict)  # least recently updated first
    user_bytes: dict[str, int] = field(default_factory=dict)
    items: list[tuple[str, np.ndarray]] = field(default_factory=list)
    item_ids: set[str] = field(default_factory=set)
    evicted: set[str] = field(default_factory=set)  # users with logged events not held here
    bytes: int = 0  # events and items held (evicted ids are counted apart, in evicted_bytes)
    evicted_bytes: int = 0

    def append_events(self, user_id: str, item_ids: list[str]) -> int:
        """Append `item_ids` (oldest first) to the user's events; returns how many the user now has."""
        return self.set_events(user_id, self._pop(user_id) + list(item_ids))

    def set_events(self, user_id: str, item_ids: list[str]) -> int:
        """The user's events become the most recent of `item_ids` that fit the per-user limits (a user
        reloaded from the log); evict others if the state passes max_bytes. Returns the count kept."""
        self._pop(user_id)
        kept = item_ids[-self.limits.max_events_per_user :]
        sizes = [id_bytes(i) for i in kept]
        size, first = USER_BYTES + id_bytes(user_id) + sum(sizes), 0
        while size > self.limits.max_user_bytes and first < len(kept) - 1:
            size, first = size - sizes[first], first + 1
        kept = kept[first:]
        self.events[user_id], self.user_bytes[user_id] = kept, size
        self.bytes += size
        if user_id in self.evicted:
            self.evicted.remove(user_id)
            self.evicted_bytes -= id_bytes(user_id) + SET_SLOT_BYTES
        self._evict(keep=user_id)
        return len(kept)

    def add_item(self, item_id: str, text_embedding: np.ndarray) -> bool:
        """Add an item; False (and no change) if an item with this id was added before."""
        if item_id in self.item_ids:
            return False
        self.item_ids.add(item_id)
        vector = np.asarray(text_embedding, dtype=np.float32)
        self.items.append((item_id, vector))
        self.bytes += ITEM_BYTES + id_bytes(item_id) + vector.nbytes  # items stay: they are the catalog
        self._evict()
        return True

    def read(self, user_ids: list[str], known_items: int, epoch: str = "") -> LiveSnapshot:
        """The events of `user_ids` (users without events are left out) and the items added after
        the first `known_items`."""
        events = {u: list(self.events[u]) for u in set(user_ids) if u in self.events}
        return LiveSnapshot(events, self.items[known_items:], len(self.items), epoch)

    def copy(self) -> LiveState:
        events = OrderedDict((user, list(ids)) for user, ids in self.events.items())
        return LiveState(
            self.limits,
            events,
            dict(self.user_bytes),
            list(self.items),
            set(self.item_ids),
            set(self.evicted),
            self.bytes,
            self.evicted_bytes,
        )

    def apply(self, delta: Delta) -> None:
        if delta.kind == "events":
            self.append_events(delta.key, delta.payload)
        elif delta.kind == "user":
            self.set_events(delta.key, delta.payload)
        else:
            self.add_item(delta.key, delta.payload)

    def _pop(self, user_id: str) -> list[str]:
        self.bytes -= self.user_bytes.pop(user_id, 0)
        return self.events.pop(user_id, [])

    def forget(self, user_id: str) -> None:
        """Drop the user's events from memory, remembering that the log holds them (`evicted`). The ids
        remembered so cost at most a quarter of max_bytes; past it, arbitrary ones are dropped (such a
        user's live history restarts with its next event; the log keeps everything)."""
        self._pop(user_id)
        if user_id not in self.evicted:
            self.evicted.add(user_id)
            self.evicted_bytes += id_bytes(user_id) + SET_SLOT_BYTES
        while self.evicted_bytes > self.limits.max_bytes // 4 or len(self.evicted) > self.limits.max_users:
            self.evicted_bytes -= id_bytes(dropped := self.evicted.pop()) + SET_SLOT_BYTES
            if dropped == user_id:
                break

    def _evict(self, keep: str | None = None) -> None:
        """Forget the users updated longest ago while the state is over its limits (never `keep`)."""
        while self.events and (self.bytes > self.limits.max_bytes or len(self.events) > self.limits.max_users):
            user = next(iter(self.events))
            if user == keep:
                break
            self.forget(user)


USER_BYTES = 232  # a user's entry: its list, dict slots and counters (CPython, measured with tracemalloc)
ITEM_BYTES = 220  # an added item's tuple, array header and set slot
SET_SLOT_BYTES = 40  # an id's slot in the evicted set (the set grows by doubling: 16 to 32 bytes an entry, +slack)


def id_bytes(item_id: str) -> int:
    """What one id costs in a list: the str object and its list slot."""
    return sys.getsizeof(item_id) + 8


@dataclass(frozen=True)
class Delta:
    """One change: events appended for user `key`, or item `key` added with its embedding."""

    version: int
    kind: Literal["events", "user", "item"]  # appended to a user's events, a user's events set, item added
    key: str
    payload: Any


@dataclass(frozen=True)
class Update:
    """A follow's answer: the changes after the asker's version, or (`full`) the whole state."""

    epoch: str
    version: int
    deltas: list[Delta] = field(default_factory=list)
    full: LiveState | None = None


class LiveStore:
    """The truth, shared by every replica (run as an async Ray actor: calls interleave only at
    `await`, so each write is applied and versioned atomically)."""

    def __init__(self, limits: Limits | None = None, lease_s: float = LEASE_S) -> None:
        self.state = LiveState(limits or Limits())
        self.epoch = uuid.uuid4().hex
        self.version = 0
        self.lease_s = lease_s
        self._deltas: deque[Delta] = deque(maxlen=MAX_DELTAS)
        self._delta_bytes = 0  # what the kept deltas cost (capped: `_publish`)
        self._followers: dict[str, tuple[int, float]] = {}  # mirror -> (acknowledged version, lease end)
        self._changed: asyncio.Condition | None = None  # created on the actor's event loop
        self._api_key_sha256: str | None = None  # the last one a replica was configured with
        self.log_root: str | None = None  # the event log this store is a cache of (None: not told yet)
        self.log_remote: str | None = None  # its object-store URI, when root is a stage (remote_log.py)
        self.negative_events: frozenset[str] = frozenset(DataConfig().negative_events)  # kept out of histories
        self._tailer: LogTailer | None = None
        self._index = UserIndex()  # where each user's records are in the log (reloads of evicted users)
        self._log_lock: asyncio.Lock | None = None  # one reader of the log at a time: the tail or a reload
        self._reader: ThreadPoolExecutor | None = None  # the thread that reads the log (`_io`)
        self._tail_task: asyncio.Task | None = None
        self._opening: asyncio.Lock | None = None

    def api_key(self, configured: str | None) -> str | None:
        """The API key hash in force: `configured` when given (it becomes the one in force), else
        the last one given, so a replica started under a config that names none keeps it too."""
        if configured is not None:
            self._api_key_sha256 = configured
        return self._api_key_sha256

    # ------------------------------------------------------------------ the interface replicas call

    async def append_events(
        self, user_id: str, item_ids: list[str], key: tuple[str, int] | None = None, positive: bool = True
    ) -> int:
        """Append `item_ids` for `user_id`; returns the user's event count once every mirror has it.
        `key` (writer, seq of the first item): the log records they are; any already taken in are skipped.
        positive=False (a negative event type): the records are marked taken in, nothing is appended."""
        item_ids = [i for n, i in enumerate(item_ids) if self._new_record(key, n)]
        if user_id in self.state.evicted:  # all its logged events, these included (written before the push)
            await self._reload(user_id)
        elif item_ids and positive:
            self.state.append_events(user_id, item_ids)
            await self._publish("events", user_id, list(item_ids))
        return len(self.state.events.get(user_id, ()))

    async def add_item(self, item_id: str, text_embedding: np.ndarray, key: tuple[str, int] | None = None) -> bool:
        """Add an item (False if the id was added before); returns once every mirror has it."""
        self._new_record(key, 0)
        if not self.state.add_item(item_id, text_embedding):
            return False
        await self._publish("item", item_id, self.state.items[-1][1])
        return True

    async def open_log(self, root: str, negative_events: list[str] | None = None, remote: str | None = None) -> None:
        """Become the cache of the event log at `root`: rebuild the state from it (a new epoch, so every
        mirror gets a full copy) and tail it. No-op when already so. negative_events: the event types
        kept out of histories (the served model's), from now on. remote: the log's object-store URI
        (`root` is its local stage): the segments the stage lacks are downloaded first.

        The rebuild reads the log a chunk at a time into the user index and takes in the added items;
        every user with events starts evicted, so its events come back through the index (in time order,
        from every writer) when it is first read or posts: memory stays bounded however long the log."""
        if negative_events is not None:
            self.negative_events = frozenset(negative_events)
        if root == self.log_root:
            return
        if self._opening is None:
            self._opening = asyncio.Lock()
        async with self._opening:
            if root == self.log_root:
                return
            index = UserIndex()
            tailer = LogTailer(root, index)
            await self._io(seal_orphans, root)
            if remote is not None:
                await self._sync_remote(root, remote)
            state = LiveState(self.state.limits)
            while True:
                for record in await self._io(tailer.poll):
                    if record["kind"] == "item":
                        state.add_item(record["item_id"], np.asarray(record["text_embedding"], dtype=np.float32))
                    elif record["event"] not in self.negative_events:
                        state.forget(record["user_id"])
                if not tailer.behind:
                    break
            self.state, self._tailer, self._index, self.log_root, self.log_remote = state, tailer, index, root, remote
            self.epoch, self.version = uuid.uuid4().hex, self.version + 1
            self._deltas.clear()
            self._delta_bytes = 0
            users, items = len(state.evicted), len(state.items)
            logger.info("live store: %d users (loaded when used), %d items from the event log %s", users, items, root)
            if self._tail_task is not None:
                self._tail_task.cancel()
            self._tail_task = asyncio.get_running_loop().create_task(self._tail())

    async def read(self, user_ids: list[str], known_items: int, epoch: str | None = None) -> LiveSnapshot:
        """A direct read, for a replica whose mirror is not current or that holds users evicted from
        memory (they are reloaded from the event log first). `known_items` counts the items of store
        `epoch` the reader has (with another epoch's count, every item is new)."""
        for user in set(user_ids) & self.state.evicted:
            await self._reload(user)
        return self.state.read(user_ids, known_items if epoch in (None, self.epoch) else 0, self.epoch)

    async def set_limits(self, limits: Limits) -> None:
        """Hold the state within `limits` from now on (a replica's live settings); a change starts a new
        epoch, so every mirror takes a full copy under the same limits."""
        if limits == self.state.limits:
            return
        state = LiveState(limits)
        for user, ids in self.state.events.items():  # least recently updated first: the same order
            state.set_events(user, ids)
        for item_id, vector in self.state.items:
            state.add_item(item_id, vector)
        for user in self.state.evicted:
            state.forget(user)
        self.state, self.epoch, self.version = state, uuid.uuid4().hex, self.version + 1
        self._deltas.clear()
        self._delta_bytes = 0

    async def follow(
        self,
        mirror: str,
        epoch: str,
        since: int,
        wait_s: float = FOLLOW_WAIT_S,
        log_root: str | None = None,
        negative_events: list[str] | None = None,
        log_remote: str | None = None,
    ) -> Update:
        """Acknowledge `since` for `mirror` and renew its lease; answer with the changes after it as
        soon as there are any, or after `wait_s` with none. `log_root`: the event log the replica
        writes (a store that is no log's cache yet, e.g. just restarted, becomes its cache first; a
        change of log comes through `open_log`, from a reconfigured replica)."""
        if negative_events is not None:
            self.negative_events = frozenset(negative_events)
        if log_root is not None and self.log_root is None:
            await self.open_log(log_root, remote=log_remote)
        acknowledged = since if epoch == self.epoch else -1
        self._followers[mirror] = (acknowledged, time.monotonic() + self.lease_s + LEASE_MARGIN_S)
        async with self._condition():
            self._changed.notify_all()  # writers waiting for this acknowledgement
            if acknowledged == self.version:
                try:
                    await asyncio.wait_for(self._changed.wait_for(lambda: self.version > since), wait_s)
                except asyncio.TimeoutError:
                    pass
        return self._update(epoch, since)

    def stats(self) -> dict[str, int]:
        """Counts for tests and benchmarks: users with events, added items, mirrors holding a lease, the
        state's counted bytes, evicted users, the kept deltas' bytes and the log index's."""
        now = time.monotonic()
        mirrors = sum(end > now for _, end in self._followers.values())
        return {
            "users": len(self.state.events),
            "items": len(self.state.items),
            "mirrors": mirrors,
            "bytes": self.state.bytes,
            "evicted": len(self.state.evicted),
            "evicted_bytes": self.state.evicted_bytes,
            "delta_bytes": self._delta_bytes,
            **self._index.stats(),
        }

    # ------------------------------------------------------------------ internals

    async def _reload(self, user_id: str) -> None:
        """Put an evicted user's events back: every one of its durable records, read through the user
        index once the log's new records are taken in (the user's own are left to the index)."""
        try:
            async with self._lock_log():
                if self._tailer is not None:
                    await self._take_in(skip_user=user_id)
                await self._set_from_index(user_id)
        except Exception as exc:  # noqa: BLE001 - the events stay in the log; the user stays evicted
            logger.warning("live store: reloading user %r from the event log failed: %s", user_id, exc)

    async def _set_from_index(self, user_id: str) -> None:
        records = await self._io(self._index.events, user_id)
        ids = [r["item_id"] for r in records if r["event"] not in self.negative_events]
        self.state.set_events(user_id, ids)
        await self._publish("user", user_id, self.state.events[user_id])

    async def _take_in(self, skip_user: str | None = None) -> None:
        """Poll the log and apply its new records (the caller holds the log lock): evicted users are
        set from the index (which the poll brought up to date), `skip_user`'s events are left out."""
        while True:  # a chunk at a time: a long tail is parsed in bounded pieces
            records = await self._io(self._tailer.poll)
            for kind, key, payload in group_records(records, self.negative_events):
                if kind == "events" and key == skip_user:
                    continue
                if kind == "events" and key in self.state.evicted:
                    await self._set_from_index(key)
                    continue
                if kind == "events":
                    self.state.append_events(key, payload)
                elif not self.state.add_item(key, payload):
                    continue
                await self._publish(kind, key, payload if kind == "events" else self.state.items[-1][1])
            if not self._tailer.behind:
                return

    async def _io(self, fn: Callable[..., Any], *args: Any) -> Any:
        """`fn(*args)` on the store's one reading thread: the log is read one call at a time, and its
        transient allocations stay in one extra malloc arena."""
        if self._reader is None:
            self._reader = ThreadPoolExecutor(1, thread_name_prefix="live-store-log")
        return await asyncio.get_running_loop().run_in_executor(self._reader, fn, *args)

    def _lock_log(self) -> asyncio.Lock:
        if self._log_lock is None:
            self._log_lock = asyncio.Lock()
        return self._log_lock

    def _new_record(self, key: tuple[str, int] | None, offset: int) -> bool:
        """Whether log record (writer, seq + offset) is new here (always, for a store not tailing a log)."""
        if key is None or self._tailer is None:
            return True
        return self._tailer.seen(key[0], key[1] + offset)

    async def _tail(self) -> None:
        """Take in the log's records that no push brought, every TAIL_S; seal dead writers' segments."""
        last_sweep = time.monotonic()
        tailer = self._tailer
        while True:
            await asyncio.sleep(TAIL_S)
            try:
                if time.monotonic() - last_sweep > SEAL_ORPHANS_S:
                    await self._sweep(tailer)
                    last_sweep = time.monotonic()
                async with self._lock_log():
                    if self._tailer is tailer:
                        await self._take_in()
            except Exception as exc:  # noqa: BLE001 - a bad read must not end the tailing
                logger.warning("live store: reading the event log failed: %s", exc)

    async def _sweep(self, tailer: LogTailer) -> None:
        """Seal the open segments of dead writers, in the event log and the A/B log beside it; with a URI,
        upload what the stages hold (and download the event log's segments the stage lacks)."""
        ab_root, ab_remote = ab_location(tailer.root, self.log_remote)
        await self._io(seal_orphans, tailer.root)
        await self._io(seal_orphans, ab_root, AB_SCHEMA)
        if self.log_remote is None or self._tailer is not tailer:
            return
        await self._sync_remote(str(tailer.root), self.log_remote)
        try:
            await self._io(push_segments, ab_root, ab_remote)
        except RaysysError as exc:
            logger.warning("live store: uploading the A/B log to %s failed: %s", ab_remote, exc)

    async def _sync_remote(self, root: str, remote: str) -> None:
        """Upload the stage's sealed segments the URI lacks (dead writers' too) and download the ones the
        stage lacks (other nodes' writers'); an unreachable store is logged, the stage serves meanwhile."""
        try:
            pushed = await self._io(push_segments, root, remote)
            pulled = await self._io(pull_segments, remote, root)
        except RaysysError as exc:
            logger.warning("live store: syncing the event log with %s failed: %s", remote, exc)
            return
        if pushed or pulled:
            logger.info("live store: %s: %d segments uploaded, %d downloaded", remote, len(pushed), len(pulled))

    def _condition(self) -> asyncio.Condition:
        if self._changed is None:
            self._changed = asyncio.Condition()
        return self._changed

    def _update(self, epoch: str, since: int) -> Update:
        oldest = self._deltas[0].version if self._deltas else self.version + 1
        if epoch != self.epoch or since < oldest - 1 or since > self.version:
            return Update(self.epoch, self.version, full=self.state.copy())
        return Update(self.epoch, self.version, deltas=[d for d in self._deltas if d.version > since])

    async def _publish(self, kind: Literal["events", "user", "item"], key: str, payload: Any) -> None:
        """Version the change, wake the mirrors, wait until each leased one acknowledged it. The kept
        changes cost at most MAX_DELTA_BYTES or a quarter of max_bytes (a mirror further behind takes a full
        copy)."""
        self.version += 1
        target = self.version
        if len(self._deltas) == self._deltas.maxlen:
            self._delta_bytes -= delta_bytes(self._deltas[0])
        self._deltas.append(Delta(target, kind, key, payload))
        self._delta_bytes += delta_bytes(self._deltas[-1])
        while self._delta_bytes > min(self.state.limits.max_bytes // 4, MAX_DELTA_BYTES) and len(self._deltas) > 1:
            self._delta_bytes -= delta_bytes(self._deltas.popleft())
        async with self._condition():
            self._changed.notify_all()
            while True:
                now = time.monotonic()
                pending = [end for acked, end in self._followers.values() if acked < target and end > now]
                if not pending:
                    break
                try:
                    await asyncio.wait_for(self._changed.wait(), min(pending) - now)
                except asyncio.TimeoutError:
                    pass
        self._followers = {m: f for m, f in self._followers.items() if f[1] > time.monotonic()}


class StoreUnavailable(Exception):
    """The live store did not answer in time or is being recreated."""


class LiveStoreClient:
    """A replica's view of the store: resolves the actor handle lazily and again after a failure
    (Serve recreates a dead deployment-scoped actor under the same name), with a deadline per call."""

    def __init__(self, resolve: Callable[[], Any], timeout_s: float = 2.0) -> None:
        self._resolve = resolve
        self._handle: Any = None
        self.timeout_s = timeout_s

    async def call(self, method: str, *args: Any, timeout_s: float | None = None) -> Any:
        """`await store.<method>(*args)`, raising StoreUnavailable on failure. A dead or unnamed
        actor is retried once with a fresh handle; a timeout is not (the call may have happened)."""
        from ray.exceptions import RayActorError

        timeout_s = timeout_s or self.timeout_s
        try:
            return await self._call_once(method, args, timeout_s)
        except (RayActorError, ValueError):
            self._handle = None  # ValueError: the name is not registered (yet) after a restart
        except asyncio.TimeoutError:
            raise StoreUnavailable(f"no answer to {method} within {timeout_s} s") from None
        try:
            return await self._call_once(method, args, timeout_s)
        except (RayActorError, ValueError, asyncio.TimeoutError) as exc:
            self._handle = None
            raise StoreUnavailable(f"{method} failed: {type(exc).__name__}: {exc}") from None

    async def _call_once(self, method: str, args: tuple[Any, ...], timeout_s: float) -> Any:
        if self._handle is None:
            self._handle = self._resolve()
        return await asyncio.wait_for(getattr(self._handle, method).remote(*args), timeout_s)


WRITE_TIMEOUT_S = 2.0 + LEASE_S + LEASE_MARGIN_S  # a write may wait out one stalled mirror's lease


class LiveMirror:
    """A replica's local copy of the store, kept current by one long-poll loop (`run`)."""

    def __init__(self, client: LiveStoreClient, name: str, lease_s: float = LEASE_S) -> None:
        self.client = client
        self.name = name  # unique per replica: the store tracks acknowledgements by it
        self.lease_s = lease_s
        self.state = LiveState()
        self.epoch = ""
        self.version = 0
        self.current_until = 0.0  # monotonic time until which local reads are allowed
        self.lost = False  # the last follow failed (logged once per outage)
        self.log_root: str | None = None  # the event log the replica writes, told to the store with each follow
        self.log_remote: str | None = None  # its object-store URI (log_root is then its stage)
        self.negative_events: list[str] | None = None  # the served model's, told likewise
        self.task: asyncio.Task | None = None

    def start(self) -> None:
        """Start following the store (call from the replica's event loop; idempotent)."""
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self.run())

    def read(self, user_ids: list[str], known_items: int, epoch: str) -> LiveSnapshot | None:
        """The local snapshot (as `LiveStore.read`), or None when the lease ran out: read the store."""
        if time.monotonic() >= self.current_until:
            return None
        return self.state.read(user_ids, known_items if epoch == self.epoch else 0, self.epoch)

    async def run(self) -> None:
        while True:
            sent = time.monotonic()
            try:
                log = (self.log_root, self.negative_events, self.log_remote)
                args = (self.name, self.epoch, self.version, FOLLOW_WAIT_S, *log)
                update = await self.client.call("follow", *args, timeout_s=FOLLOW_WAIT_S + 2.0)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the store is restarting or unreachable: read it directly meanwhile
                if not self.lost:  # once per outage, not every retry
                    logger.warning("live store mirror %s lost the store: %s", self.name, exc)
                self.current_until, self.lost = 0.0, True
                await asyncio.sleep(0.2)
                continue
            self.apply(update)
            self.current_until, self.lost = sent + self.lease_s, False

    def apply(self, update: Update) -> None:
        """Take in a follow's answer: the whole state (new store, or far behind) or the changes."""
        if update.full is not None:
            self.state = update.full
        else:
            for delta in update.deltas:
                self.state.apply(delta)
        self.epoch, self.version = update.epoch, update.version


def delta_bytes(delta: Delta) -> int:
    """What a kept change costs in memory (its ids or embedding, as LiveState counts them)."""
    if delta.kind == "item":
        return ITEM_BYTES + delta.payload.nbytes
    return USER_BYTES + sum(id_bytes(i) for i in delta.payload)


def group_records(
    records: list[dict[str, Any]], negative_events: Collection[str] = ()
) -> list[tuple[Literal["events", "item"], str, Any]]:
    """Log records -> state changes: ("events", user, [item ids]) for each run of one user's event
    records (events of a type in `negative_events` left out), ("item", item id, [text_dim] float32
    embedding) for each item record."""
    out: list[tuple[Literal["events", "item"], str, Any]] = []
    for r in records:
        if r["kind"] == "event" and r.get("event") in negative_events:
            continue
        if r["kind"] == "item":
            out.append(("item", r["item_id"], np.asarray(r["text_embedding"], dtype=np.float32)))
        elif out and out[-1][0] == "events" and out[-1][1] == r["user_id"]:
            out[-1][2].append(r["item_id"])
        else:
            out.append(("events", r["user_id"], [r["item_id"]]))
    return out
