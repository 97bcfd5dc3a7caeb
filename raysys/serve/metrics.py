"""Serving metrics, exported through Ray's metrics agent as Prometheus series (`ray_raysys_*`).

Every series carries the model version that answered, so a hot reload shows up as one series
ending and another starting; Serve adds the deployment, replica and application tags itself.
"""

from __future__ import annotations

from ray.serve.metrics import Counter, Histogram

# Milliseconds: fine steps around the 50 ms p99 target, a few coarse ones for stalls.
LATENCY_BOUNDARIES_MS = [1, 2, 5, 10, 20, 30, 50, 75, 100, 200, 500, 1000, 2000, 5000]


class ServeMetrics:
    """The counters and the latency histogram of one replica."""

    def __init__(self) -> None:
        self.requests = Counter(
            "raysys_serve_requests",
            description="HTTP requests answered by a replica, by endpoint and status code.",
            tag_keys=("endpoint", "status", "model_version"),
        )
        self.fallbacks = Counter(
            "raysys_serve_fallbacks",
            description="Recommendations served by the popularity fallback (empty or all-unknown history).",
            tag_keys=("model_version",),
        )
        self.unknown_items = Counter(
            "raysys_serve_unknown_items",
            description="Item ids in requests that the served catalog does not know (ignored).",
            tag_keys=("model_version",),
        )
        self.latency_ms = Histogram(
            "raysys_serve_latency_ms",
            description="Time from the request reaching the replica to the response, in milliseconds.",
            boundaries=LATENCY_BOUNDARIES_MS,
            tag_keys=("endpoint", "model_version"),
        )

        self.store_read_ms = Histogram(
            "raysys_serve_live_store_read_ms",
            description="A direct read of the shared live store, in ms (only while a replica's mirror is not current).",
            boundaries=LATENCY_BOUNDARIES_MS,
            tag_keys=("model_version",),
        )

    def record_request(self, endpoint: str, status: int, model_version: str, latency_ms: float) -> None:
        self.requests.inc(tags={"endpoint": endpoint, "status": str(status), "model_version": model_version})
        self.latency_ms.observe(latency_ms, tags={"endpoint": endpoint, "model_version": model_version})

    def record_store_read(self, model_version: str, latency_ms: float) -> None:
        self.store_read_ms.observe(latency_ms, tags={"model_version": model_version})

    def record_recommendation(self, model_version: str, fallback: bool, unknown_items: int) -> None:
        if fallback:
            self.fallbacks.inc(tags={"model_version": model_version})
        if unknown_items:
            self.unknown_items.inc(unknown_items, tags={"model_version": model_version})
