"""The live state every replica must agree on: events posted since training, items added since.

One `LiveStore` actor per deployment (a Serve *deployment-scoped actor*: created with the
deployment, shared by all its replicas, removed with it) holds

- per user, the item ids posted to `/events` (most recent last, the last `max_events_per_user`);
- the items posted to `/items`, in arrival order, with their 384-d text embeddings.

Why one actor read per batch rather than broadcasting to replicas: a `POST /events` returns only
after the actor has appended, and every `/recommend` batch reads the actor before scoring, so the
next request sees the event whichever replica serves it (read-your-writes across replicas) with no
fan-out, acknowledgement protocol or replica membership to track. The price is one actor round
trip per *batch* (not per request), measured by jobs/bench/serving.py. The same round trip carries
the items added since the replica last looked (`known_items`), so catalogs stay in step too.

Events are keyed by original ids, so they survive a hot reload to a model with another vocabulary.
The store is memory only: a restarted store starts empty, and replicas fall back to the training
histories until events arrive again.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class LiveSnapshot:
    """What one read returns: the asked users' live events and the items added after `known_items`."""

    events: dict[str, list[str]] = field(default_factory=dict)
    new_items: list[tuple[str, np.ndarray]] = field(default_factory=list)  # (item_id, [384] float32)
    total_items: int = 0  # items added so far (the next read's `known_items`)


class LiveStore:
    """Per-user live events and added items, shared by every replica (run as a Ray actor).

    Calls are served one at a time (a synchronous actor), which is what makes an append visible to
    every later read; each call is a few dict operations, so the actor is not a bottleneck.
    """

    def __init__(self, max_events_per_user: int = 1000, max_users: int = 1_000_000) -> None:
        self.max_events_per_user = max_events_per_user
        self.max_users = max_users
        self._events: OrderedDict[str, list[str]] = OrderedDict()  # least recently updated first
        self._items: list[tuple[str, np.ndarray]] = []
        self._item_ids: set[str] = set()

    def append_events(self, user_id: str, item_ids: list[str]) -> int:
        """Append `item_ids` (oldest first) to the user's events; returns how many the user now has."""
        events = self._events.pop(user_id, [])
        events = (events + list(item_ids))[-self.max_events_per_user :]
        self._events[user_id] = events
        while len(self._events) > self.max_users:
            self._events.popitem(last=False)  # forget the user idle longest: memory stays bounded
        return len(events)

    def add_item(self, item_id: str, text_embedding: np.ndarray) -> bool:
        """Add an item; False (and no change) if an item with this id was added before."""
        if item_id in self._item_ids:
            return False
        self._item_ids.add(item_id)
        self._items.append((item_id, np.asarray(text_embedding, dtype=np.float32)))
        return True

    def read(self, user_ids: list[str], known_items: int) -> LiveSnapshot:
        """The events of `user_ids` (users without events are left out) and the items added after
        the first `known_items`."""
        events = {u: list(self._events[u]) for u in set(user_ids) if u in self._events}
        return LiveSnapshot(events=events, new_items=self._items[known_items:], total_items=len(self._items))

    def stats(self) -> dict[str, int]:
        """Counts for /metadata and tests: users with events, and added items."""
        return {"users": len(self._events), "items": len(self._items)}


class StoreUnavailable(Exception):
    """The live store did not answer in time or is being recreated."""


class LiveStoreClient:
    """A replica's view of the store: resolves the actor handle lazily and again after a failure
    (Serve recreates a dead deployment-scoped actor under the same name), with a deadline per call."""

    def __init__(self, resolve: Callable[[], Any], timeout_s: float = 2.0) -> None:
        self._resolve = resolve
        self._handle: Any = None
        self.timeout_s = timeout_s

    async def call(self, method: str, *args: Any) -> Any:
        """`await store.<method>(*args)`, raising StoreUnavailable on failure. A dead or unnamed
        actor is retried once with a fresh handle; a timeout is not (the call may have happened)."""
        from ray.exceptions import RayActorError

        try:
            return await self._call_once(method, args)
        except (RayActorError, ValueError):
            self._handle = None  # ValueError: the name is not registered (yet) after a restart
        except asyncio.TimeoutError:
            raise StoreUnavailable(f"no answer to {method} within {self.timeout_s} s") from None
        try:
            return await self._call_once(method, args)
        except (RayActorError, ValueError, asyncio.TimeoutError) as exc:
            self._handle = None
            raise StoreUnavailable(f"{method} failed: {type(exc).__name__}: {exc}") from None

    async def _call_once(self, method: str, args: tuple[Any, ...]) -> Any:
        if self._handle is None:
            self._handle = self._resolve()
        return await asyncio.wait_for(getattr(self._handle, method).remote(*args), self.timeout_s)
