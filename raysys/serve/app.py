"""The Ray Serve application: a FastAPI ingress over a batched student, bound at module level.

    serve deploy jobs/configs/serve.yaml          # import_path: raysys.serve.app:app
    raysys serve --model runs/distill/model       # the same app on the local Ray cluster

Endpoints (OpenAPI page at /docs): POST /recommend, POST /events, POST /feedback, POST /items,
GET /healthz, GET /metadata. All item and user ids are the original ids of the data.

A/B tests: a replica serves every variant of `serve.variants` (variants.py: a user's variant is a pure
function of its id, so every replica agrees); each /recommend answer carries its variant and a
request_id, and each one with a user_id is logged as an impression in the A/B log beside the event log
(ab_log.py: one append per batch); POST /feedback is logged there too, durably, and as an interaction.

Writes are durable before they are acknowledged: `/events` and `/items` append their records to the
replica's writer of the event log (event_log.py; fsynced, group commit) and only then push them to the
live store, a cache the log rebuilds (state.py). A store that is restarting does not fail a write
whose record is in the log: it takes it in from the log when it is back.

One replica = one `Recommender`. Its live settings arrive through `user_config` (`reconfigure`):
the model directory (a new one is loaded beside the old and swapped in, so a hot reload drops no
request), batching, the history cap, the body size limit and the API key hash (a config naming
none keeps the key in force). Requests for /recommend are grouped by `@serve.batch`; each batch
reads live events and added items from the replica's `LiveMirror` (a local copy the shared
`LiveStore` pushes changes to, see state.py) and runs one forward pass (`ServingModel.predict`,
scoring.py) in a worker thread, so the event loop keeps accepting requests for the next batch.

In front of the replicas is the HTTP ingress (ingress.py: Serve's HAProxy mode by default).
Backpressure is Serve's: `max_ongoing_requests` per replica plus `max_queued_requests`, beyond which
the answer is 503 with `Retry-After` at once; past `request_timeout_s` the ingress answers 408. Bad
input is a 4xx from the strict schemas and the guard below, never a 5xx; every error is JSON.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import re
import time
import uuid
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch
from fastapi import FastAPI, HTTPException, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader
from pydantic import ValidationError
from ray import serve
from ray.serve.config import BackpressureConfig, DeploymentActorConfig
from starlette.middleware.body_limit import RequestBodyLimitResponder
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from raysys import __version__
from raysys.data.ab_log import AB_SCHEMA, ab_location, feedback_record, impression_record
from raysys.data.event_log import EventLogWriter, event_record, item_record
from raysys.data.remote_log import log_location
from raysys.errors import RaysysError
from raysys.models.export import read_model_config
from raysys.serve.metrics import ServeMetrics
from raysys.serve.schemas import (
    EventsRequest,
    EventsResponse,
    FeedbackRequest,
    FeedbackResponse,
    HealthResponse,
    ItemRequest,
    ItemResponse,
    MetadataResponse,
    RecommendRequest,
    RecommendResponse,
    ScoredItem,
    VariantInfo,
)
from raysys.serve.scoring import Query, Recommendation, ServingModel, negative_events
from raysys.serve.settings import DEPLOYMENT_NAME, ReplicaSettings
from raysys.serve.state import (
    STORE_ENV,
    WRITE_TIMEOUT_S,
    Limits,
    LiveMirror,
    LiveSnapshot,
    LiveStore,
    LiveStoreClient,
    StoreUnavailable,
)
from raysys.serve.variants import VariantSplit

logger = logging.getLogger("ray.serve")

LIVE_STORE_NAME = "live_store"
API_KEY_HEADER = "X-API-Key"
REPLICA_HEADER = "x-raysys-replica"  # which replica answered: for debugging and the consistency tests
OPEN_PATHS = ("/healthz", "/docs", "/openapi.json", "/docs/oauth2-redirect", "/redoc")
ENDPOINTS = ("/recommend", "/events", "/feedback", "/items", "/healthz", "/metadata")
RETRY_AFTER_S = 1
DEFAULT_EVENT_LOG = "~/.cache/raysys/event_log"  # serve.event_log None: a bare `serve deploy`


@dataclass(frozen=True)
class Serving:
    """What a replica serves: the A/B split and each variant's model (variants naming one model directory
    share one loaded model). Swapped as one reference, so a batch keeps the split and models it started with."""

    split: VariantSplit
    by_dir: dict[str, ServingModel]

    def model(self, variant: str) -> ServingModel:
        return self.by_dir[next(v.model_dir for v in self.split.variants if v.name == variant)]

    @property
    def first(self) -> ServingModel:
        """The first variant's model: requests without a user_id, the catalog /events and /items check."""
        return self.model(self.split.variants[0].name)


@serve.deployment(
    name=DEPLOYMENT_NAME,
    max_ongoing_requests=128,  # the replica's batcher queues cheaply; the proxy's router does not
    max_queued_requests=32,
    backpressure_config=BackpressureConfig(status_code=503, retry_after_s=RETRY_AFTER_S),
    health_check_period_s=5,
    health_check_timeout_s=10,
    graceful_shutdown_timeout_s=10,
    max_surge_percent=100,  # a code change starts new replicas before stopping old ones
    ray_actor_options={"num_cpus": 0.5},
    deployment_actors=[
        DeploymentActorConfig(
            name=LIVE_STORE_NAME,
            actor_class=ray.remote(LiveStore),
            # Fewer allocator pools (two malloc arenas, Arrow on malloc) keep its memory bound (live_store_max_bytes
            # + 50 MiB): the HTTP flood test (tests/serve/test_durable_events.py, 2 MiB budget) saw the store grow
            # 55.9 MiB with the defaults, within the bound with these.
            actor_options={"num_cpus": 0, "runtime_env": {"env_vars": STORE_ENV}},
        )
    ],
)
@serve.ingress()
class Recommender:
    """One replica: the loaded model, its settings and metrics, and the HTTP routes over them."""

    def __init__(self) -> None:
        self.settings: ReplicaSettings | None = None
        self.serving: Serving | None = None
        self.metrics = ServeMetrics()
        self.store = LiveStoreClient(lambda: serve.get_deployment_actor(LIVE_STORE_NAME))
        self.replica_tag = serve.get_replica_context().replica_tag  # sent back in REPLICA_HEADER
        self.mirror = LiveMirror(self.store, self.replica_tag)  # the store's changes, pushed here
        self._reload_lock = asyncio.Lock()
        self._encoder_task: asyncio.Task | None = None
        self.log: EventLogWriter | None = None  # this replica's writer of the event log
        self.ab_log: EventLogWriter | None = None  # ... and of the A/B log beside it (impressions, feedback)
        self._logging: set[asyncio.Task] = set()  # impression appends in flight

    def __serve_build_asgi_app__(self) -> FastAPI:
        return build_api(self)

    # ---------------------------------------------------------------------------- lifecycle

    @property
    def model(self) -> ServingModel | None:
        return self.serving.first if self.serving is not None else None

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Apply a new `user_config`; a changed model directory (`model_dir`, a variant's) is loaded in a
        thread, then swapped in with the variants' split (weights change live)."""
        try:
            settings = ReplicaSettings.model_validate(user_config)
        except ValidationError as exc:
            raise ValueError(f"invalid user_config for {DEPLOYMENT_NAME}: {exc}") from None
        settings = await self._settle_api_key(settings)
        split = VariantSplit.of(settings, settings.model_dir)
        negative = negative_events(read_model_config(Path(split.variants[0].model_dir)))
        local, remote = log_location(settings.event_log or DEFAULT_EVENT_LOG, settings.event_log_stage)
        await self._open_log(str(local), remote, negative)
        self.mirror.start()
        limits = Limits(settings.live_max_events_per_user, settings.live_max_user_bytes, settings.live_store_max_bytes)
        try:
            await self.store.call("set_limits", limits, timeout_s=30.0)
        except StoreUnavailable as exc:  # a restarted store takes the default limits until the next reconfigure
            logger.warning("live store limits not set: %s", exc)
        torch.set_num_threads(settings.torch_threads)
        self._recommend_batched.set_max_batch_size(settings.max_batch_size)
        self._recommend_batched.set_batch_wait_timeout_s(settings.batch_wait_timeout_s)
        async with self._reload_lock:
            by_dir = await self._load_models(split, settings)
            self.serving = Serving(split, by_dir)  # one reference swap: in-flight batches keep what they started with
            self.settings = settings

    async def _load_models(self, split: VariantSplit, settings: ReplicaSettings) -> dict[str, ServingModel]:
        """Each variant's model directory -> its model: the one loaded already (same precision, and the same
        model version: a directory re-exported in place is loaded again), else loaded in a thread and synced
        with the items the live store holds."""
        same_precision = self.serving is not None and self.settings.int8 == settings.int8
        loaded = self.serving.by_dir if same_precision else {}
        by_dir: dict[str, ServingModel] = {}
        for directory in dict.fromkeys(v.model_dir for v in split.variants):
            model = loaded.get(directory)
            if model is None or read_model_config(Path(directory))["model_version"] != model.version:
                model = await asyncio.to_thread(ServingModel.load, directory, int8=settings.int8)
                self._sync_items(model, await self._read_store_or_empty([], model))
                logger.info("serving model %s from %s", model.version, directory)
            by_dir[directory] = model
        return by_dir

    async def _settle_api_key(self, settings: ReplicaSettings) -> ReplicaSettings:
        """A config naming no key keeps the key in force (this replica's, or the one the store
        remembers for replicas started since); it never turns a key off silently."""
        named = settings.api_key_sha256
        try:
            in_force = await self.store.call("api_key", named)
        except StoreUnavailable:
            in_force = None
        if named is None and in_force is not None:
            settings = settings.model_copy(update={"api_key_sha256": in_force})
        settings = settings.keeping_key_of(self.settings)
        if named is None and settings.key_required:
            logger.warning('user_config names no api_key_sha256: the API key stays on ("off" turns it off)')
        return settings

    async def _open_log(self, root: str, remote: str | None, negative: list[str]) -> None:
        """Write the event log at `root` from now on (this replica's writer, named after it; with `remote`,
        an object-store URI, `root` is its local stage and sealed segments are uploaded) and tell the
        live store, which rebuilds from it if it is not its cache yet (every follow tells it too), with
        the event types it keeps out of histories (`negative`, the model's)."""
        self.mirror.negative_events = negative
        if self.log is not None and (str(self.log.root), self.log.remote) == (root, remote):
            return
        name = re.sub(r"[^A-Za-z0-9_.]", "_", self.replica_tag)
        ab_root, ab_remote = ab_location(root, remote)
        writer = partial(EventLogWriter, root, name, remote=remote)
        ab_writer = partial(EventLogWriter, ab_root, name, remote=ab_remote, schema=AB_SCHEMA)
        old = self.log, self.ab_log
        self.log, self.ab_log = await asyncio.to_thread(writer), await asyncio.to_thread(ab_writer)
        self.mirror.log_root, self.mirror.log_remote = root, remote
        for log in old:
            if log is not None:
                await asyncio.to_thread(log.close)
        try:
            await self.store.call("open_log", root, negative, remote, timeout_s=30.0)
        except StoreUnavailable as exc:
            logger.warning("live store not told of the event log yet (its next follow will): %s", exc)

    def __del__(self) -> None:
        """On shutdown: seal this replica's open segments (else the store seals them later, as after a crash)."""
        for log in (self.log, self.ab_log):
            if log is None:
                continue
            try:
                log.close()
            except Exception as exc:  # noqa: BLE001 - shutting down: log, never raise
                logger.warning("closing the event log writer failed: %s", exc)

    def check_health(self) -> None:
        """Called by the Serve controller; a replica without a model is restarted."""
        if self.model is None or self.settings is None:
            raise RuntimeError("no model loaded")

    # ---------------------------------------------------------------------------- /recommend

    async def recommend(self, request: RecommendRequest) -> RecommendResponse:
        if self.settings.batching:
            return await self._recommend_batched(request)
        return (await self.predict([request]))[0]

    # Two batches in flight: one can wait on the live store while the other computes. Size and wait
    # are live settings (reconfigure sets them).
    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.004, max_concurrent_batches=2)
    async def _recommend_batched(self, requests: list[RecommendRequest]) -> list[RecommendResponse]:
        return await self.predict(requests)

    async def predict(self, batch: list[RecommendRequest]) -> list[RecommendResponse]:
        """Answer a batch: each request by its user's variant's model (`_rank`), each answer with its
        variant and a new request_id; then the impressions are logged (requests with a user_id)."""
        serving, settings = self.serving, self.settings
        variants = [serving.split.assign(r.user_id) for r in batch]
        responses: list[RecommendResponse] = [None] * len(batch)  # type: ignore[list-item] - all set below
        for variant in dict.fromkeys(variants):
            part = [i for i, v in enumerate(variants) if v == variant]
            model = serving.model(variant)
            results = await self._rank(model, [batch[i] for i in part], settings)
            for i, result in zip(part, results, strict=True):
                fell_back, unknown = result.fallback is not None, len(result.unknown_items)
                self.metrics.record_recommendation(model.version, fell_back, unknown)
                responses[i] = RecommendResponse(
                    items=[ScoredItem(item_id=item, score=score) for item, score in result.items],
                    model_version=model.version,
                    fallback=result.fallback,
                    unknown_items=result.unknown_items,
                    variant=variant,
                    request_id=uuid.uuid4().hex,
                )
        if settings.log_impressions:  # in the background: the answers do not wait for the impressions' fsync
            task = asyncio.get_running_loop().create_task(self._log_impressions(batch, responses))
            self._logging.add(task)
            task.add_done_callback(self._logging.discard)
        return responses

    async def _log_impressions(self, batch: list[RecommendRequest], responses: list[RecommendResponse]) -> None:
        """One impression record per answer to a user (one append, one group commit, for the batch), made
        while the answers go out: waiting for its fsync cost 11 % of the req/s and 40 % on p99 (jobs/bench/
        impressions_http.py), so a replica killed within that moment can lose these impressions (nothing
        acknowledged is at stake). A log that cannot be written costs the impressions, not the answers: it
        is logged as a warning."""
        records = [
            impression_record(answer.request_id, request.user_id, answer.variant, [i.item_id for i in answer.items])
            for request, answer in zip(batch, responses, strict=True)
            if request.user_id is not None
        ]
        log = self.ab_log
        if not records or log is None:
            return
        try:
            await asyncio.to_thread(log.append, records)
        except RaysysError as exc:
            logger.warning("%d impressions not logged (the answers are served): %s", len(records), exc)

    async def _rank(
        self, model: ServingModel, batch: list[RecommendRequest], settings: ReplicaSettings
    ) -> list[Recommendation]:
        """Rank a batch with `model`: live events from the local mirror (the store itself only when the
        mirror is not current), then `ServingModel.predict` in a worker thread."""
        users = [r.user_id for r in batch if r.history is None]
        snapshot = self.mirror.read(users, model.synced_store_items, model.synced_store_epoch)
        evicted = [
            u for u in users if snapshot is not None and u not in snapshot.events and u in self.mirror.state.evicted
        ]
        if snapshot is None or evicted:  # the store reloads evicted users from the event log first
            start = time.perf_counter()
            stored = await self._read_store_or_empty(evicted or users, model)
            snapshot = stored if snapshot is None else replace(snapshot, events={**snapshot.events, **stored.events})
            self.metrics.record_store_read(model.version, 1000 * (time.perf_counter() - start))
        self._sync_items(model, snapshot)
        queries = [self._query(r, model, snapshot, settings.max_history) for r in batch]
        return await asyncio.to_thread(model.predict, queries)

    @staticmethod
    def _query(request: RecommendRequest, model: ServingModel, snapshot: LiveSnapshot, max_history: int) -> Query:
        """The history a request means: its own, or the user's stored history plus live events."""
        if request.history is not None:
            history = request.history
        else:
            history = model.user_histories.get(request.user_id, []) + snapshot.events.get(request.user_id, [])
        # exclude_seen covers the whole history; the model reads its most recent `max_history` ids
        return Query(history, request.k, request.exclude_seen, request.exclude, max_inputs=max_history)

    # ---------------------------------------------------------------------------- /events, /items

    async def post_events(self, request: EventsRequest) -> EventsResponse:
        when = float(request.timestamp) if request.timestamp is not None else time.time()
        records = [event_record(request.user_id, i, request.event, timestamp=when) for i in request.item_ids]
        key = await self._write_log(records)
        live = await self._push_events(request.user_id, request.item_ids, request.event, key)
        index = self.model.catalog.index
        unknown = [i for i in request.item_ids if i not in index]
        return EventsResponse(
            user_id=request.user_id,
            appended=len(request.item_ids),
            event=request.event,
            live_events=live,
            unknown_items=unknown,
        )

    async def post_feedback(self, request: FeedbackRequest) -> FeedbackResponse:
        """Log the feedback in the A/B log (with the user's variant now) and as the user's interaction in
        the event log, both durably, then push the interaction to the live store like /events."""
        variant = self.serving.split.assign(request.user_id)
        when = float(request.timestamp) if request.timestamp is not None else time.time()
        user, item, event = request.user_id, request.item_id, request.event
        feedback = feedback_record(request.request_id, user, item, event, variant, timestamp=when)
        key, _ = await asyncio.gather(
            self._write_log([event_record(user, item, event, timestamp=when)]), self._write_log([feedback], self.ab_log)
        )
        live = await self._push_events(user, [item], event, key)
        return FeedbackResponse(
            request_id=request.request_id, user_id=user, item_id=item, event=event, variant=variant, live_events=live
        )

    async def _push_events(self, user_id: str, item_ids: list[str], event: str, key: tuple[str, int]) -> int | None:
        """Hand logged events to the live store; the user's live event count, None when the store is away
        (the events are durable already: it takes them in from the log)."""
        positive = event not in self.model.negative_events
        try:
            return await self.store.call("append_events", user_id, item_ids, key, positive, timeout_s=WRITE_TIMEOUT_S)
        except StoreUnavailable as exc:
            logger.warning("live store unavailable; events logged, not yet live: %s", exc)
            return None

    async def add_item(self, request: ItemRequest) -> ItemResponse:
        model = self.model
        if not model.uses_text:
            raise HTTPException(
                409,
                f"model {model.version} was trained without item text (use_text=false): it has no text tower "
                "to place a new item from its text; serve a model trained with student.use_text=true",
            )
        if request.item_id in model.catalog.index:
            raise HTTPException(409, f"item {request.item_id!r} is already in the catalog")
        embedding = await self._embed_text(request.text)
        key = await self._write_log([item_record(request.item_id, embedding)])
        try:
            added = await self.store.call("add_item", request.item_id, embedding, key, timeout_s=WRITE_TIMEOUT_S)
            snapshot = await self.store.call("read", [], model.synced_store_items, model.synced_store_epoch)
        except StoreUnavailable as exc:  # durable already: this replica takes it now, the others from the log
            logger.warning("live store unavailable; item logged, added here first: %s", exc)
            for each in self.serving.by_dir.values():
                if each.uses_text:
                    each.add_items([(request.item_id, embedding)])
            return ItemResponse(item_id=request.item_id, catalog_size=model.catalog.size, model_version=model.version)
        if not added:
            raise HTTPException(409, f"item {request.item_id!r} was already added")
        for each in self.serving.by_dir.values():
            self._sync_items(each, snapshot)
        return ItemResponse(item_id=request.item_id, catalog_size=model.catalog.size, model_version=model.version)

    async def _write_log(self, records: list[dict[str, Any]], log: EventLogWriter | None = None) -> tuple[str, int]:
        """Append `records` to this replica's event log writer (or `log`), durably; returns the first one's
        key (writer, seq). 503 when the log cannot be written: nothing was acknowledged."""
        log = log or self.log  # a reconfigure may swap it meanwhile: the key names the writer that wrote
        try:
            seqs = await asyncio.to_thread(log.append, records)
        except RaysysError as exc:
            raise unavailable(exc) from None
        return log.writer, seqs[0]

    async def _embed_text(self, text: str) -> np.ndarray:
        """[384] MiniLM embedding of `text`; the encoder is loaded on the first /items call."""
        if self._encoder_task is None:
            from raysys.models.text_encoder import TextEncoder

            self._encoder_task = asyncio.ensure_future(asyncio.to_thread(TextEncoder))
        try:
            encoder = await self._encoder_task
        except Exception:
            self._encoder_task = None  # let the next call try again
            raise
        return (await asyncio.to_thread(encoder.encode, [text]))[0]

    # ---------------------------------------------------------------------------- live store

    async def _read_store_or_empty(self, users: list[str], model: ServingModel) -> LiveSnapshot:
        """The store's snapshot for `users` and what `model` has not taken in, or an empty one when
        the store is unreachable: recommendations then use the training histories only, which beats
        failing the request."""
        known, epoch = model.synced_store_items, model.synced_store_epoch
        try:
            return await self.store.call("read", users, known, epoch)
        except StoreUnavailable as exc:
            logger.warning("live store unavailable, serving without live events: %s", exc)
            return LiveSnapshot(total_items=known, epoch=epoch)

    @staticmethod
    def _sync_items(model: ServingModel, snapshot: LiveSnapshot) -> None:
        """Take the items added since this model last looked into its catalog (all of a new store's:
        `add_items` skips the ids the catalog has)."""
        if snapshot.epoch != model.synced_store_epoch:  # a new store: its items were all read
            model.synced_store_epoch, model.synced_store_items = snapshot.epoch, -1
        if snapshot.total_items <= model.synced_store_items:
            return
        if model.uses_text and snapshot.new_items:
            model.add_items(snapshot.new_items)
        model.synced_store_items = snapshot.total_items

    # ---------------------------------------------------------------------------- small endpoints

    def health(self) -> HealthResponse:
        return HealthResponse(status="ok", model_version=self.model.version)

    def metadata(self) -> MetadataResponse:
        serving = self.serving
        model, shares = serving.first, serving.split.shares()
        variants = [
            VariantInfo(name=v.name, weight=v.weight, share=shares[v.name], model_version=serving.model(v.name).version)
            for v in serving.split.variants
        ]
        return MetadataResponse(
            model_version=model.version,
            trained_at=model.trained_at,
            catalog_size=model.catalog.size,
            added_items=model.added_items,
            uses_text=model.uses_text,
            max_len=model.max_len,
            batching=self.settings.batching,
            variants=variants,
            log_impressions=self.settings.log_impressions,
        )

    # ---------------------------------------------------------------------------- guard hooks

    def authorized(self, scope: Scope) -> bool:
        """True when no API key is configured, the path is open, or the request's key matches."""
        if self.settings is None or not self.settings.key_required or scope["path"] in OPEN_PATHS:
            return True
        expected = self.settings.api_key_sha256
        given = dict(scope["headers"]).get(API_KEY_HEADER.lower().encode(), b"")
        return hmac.compare_digest(hashlib.sha256(given).hexdigest(), expected)

    @property
    def max_body_bytes(self) -> int:
        return self.settings.max_body_bytes if self.settings else ReplicaSettings.model_fields["max_body_bytes"].default

    def record_request(self, path: str, status: int, latency_ms: float) -> None:
        version = self.model.version if self.model else "none"
        endpoint = path if path in ENDPOINTS else "other"  # bounded label values
        self.metrics.record_request(endpoint, status, version, latency_ms)


def unavailable(exc: Exception) -> HTTPException:
    """503 with Retry-After; the reason goes to the log, not to the client (it names internals)."""
    logger.warning("unavailable (event log or live store): %s", exc)
    return HTTPException(503, "the event store is unavailable; retry shortly", {"Retry-After": str(RETRY_AFTER_S)})


class Guard:
    """ASGI middleware in front of every route: API key (401), JSON content type (415), body size limit
    (413), the request counter / latency histogram and the replica header. It runs before the body is
    read or parsed, and every error it answers is JSON like the app's own."""

    def __init__(self, app: ASGIApp, service: Recommender) -> None:
        self.app = app
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), 500  # stays 500 if the app raises before responding
        too_large = False

        async def send_and_note_status(message: Message) -> None:
            nonlocal status, too_large
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [*message.get("headers", []), (REPLICA_HEADER.encode(), self.service.replica_tag.encode())]
                too_large = status == 413 and (b"content-type", b"text/plain; charset=utf-8") in headers
                if too_large:  # starlette's body limit answers in plain text
                    headers = [h for h in headers if h[0] not in (b"content-type", b"content-length")]
                    headers += [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(TOO_LARGE))]
                message = {**message, "headers": headers}
            elif message["type"] == "http.response.body" and too_large:
                message = {**message, "body": TOO_LARGE}
            await send(message)

        try:
            refusal = self.refusal(scope)
            if refusal is not None:
                await JSONResponse({"detail": refusal[1]}, refusal[0])(scope, receive, send_and_note_status)
                return
            limited = RequestBodyLimitResponder(self.app, self.service.max_body_bytes)
            await limited(scope, receive, send_and_note_status)
        except asyncio.CancelledError:
            status = 499  # the client went away (or the proxy timed the request out): not a server error
            raise
        finally:
            self.service.record_request(scope["path"], status, 1000 * (time.perf_counter() - start))

    def refusal(self, scope: Scope) -> tuple[int, str] | None:
        """(status, detail) for a request refused before its body is read, else None."""
        if not self.service.authorized(scope):
            return 401, f"missing or wrong API key: send it in the {API_KEY_HEADER} header"
        if scope["method"] == "POST" and scope["path"] in ENDPOINTS:
            content_type = dict(scope["headers"]).get(b"content-type", b"").decode("latin-1")
            if content_type.split(";")[0].strip().lower() != "application/json":
                given = f"got {content_type!r}" if content_type else "none given"
                return 415, f"content-type must be application/json ({given})"
        return None


TOO_LARGE = b'{"detail":"request body too large (serve.max_body_bytes)"}'


async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    """422 naming each bad field; the offending input is not echoed (it may not even be JSON-safe,
    e.g. NaN, and echoing it would turn a 4xx into a 5xx)."""
    errors = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")} for e in exc.errors()]
    return JSONResponse({"detail": errors}, 422)


def build_api(service: Recommender) -> FastAPI:
    """The FastAPI app of one replica; routes are thin and call the service."""
    api = FastAPI(
        title="raysys recommender",
        version=__version__,
        description="Real-time top-K next-item recommendation (original item ids throughout).",
    )
    api.add_middleware(Guard, service=service)
    api.add_exception_handler(RequestValidationError, validation_error)
    key = [Security(APIKeyHeader(name=API_KEY_HEADER, auto_error=False))]  # documents the header; Guard checks it

    @api.post("/recommend", response_model=RecommendResponse, dependencies=key)
    async def recommend(body: RecommendRequest) -> RecommendResponse:
        """Top-k items for a history, or for a user's stored history plus live events."""
        return await service.recommend(body)

    @api.post("/events", response_model=EventsResponse, dependencies=key)
    async def events(body: EventsRequest) -> EventsResponse:
        """Append a user's new interactions; every later /recommend for the user reflects them."""
        return await service.post_events(body)

    @api.post("/feedback", response_model=FeedbackResponse, dependencies=key)
    async def feedback(body: FeedbackRequest) -> FeedbackResponse:
        """What the user did with a recommended item (click, purchase, skip): logged for the A/B analysis
        (`raysys abtest`) and as an interaction, like /events."""
        return await service.post_feedback(body)

    @api.post("/items", response_model=ItemResponse, dependencies=key)
    async def items(body: ItemRequest) -> ItemResponse:
        """Add an item from its text (models trained with item text); recommendable at once."""
        return await service.add_item(body)

    @api.get("/healthz", response_model=HealthResponse)
    async def healthz() -> HealthResponse:
        return service.health()

    @api.get("/metadata", response_model=MetadataResponse, dependencies=key)
    async def metadata() -> MetadataResponse:
        """Model version, catalog size, training time."""
        return service.metadata()

    return api


app = Recommender.bind()
