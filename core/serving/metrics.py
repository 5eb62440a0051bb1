"""Prometheus metrics with one CollectorRegistry per app, so three apps in one process (and many
apps across tests) never clash on the global registry."""

from __future__ import annotations

from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,  # noqa: F401  (re-exported for the /metrics route)
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class ServiceMetrics:
    def __init__(self, app: str) -> None:
        self.app = app
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("triptych_requests", "HTTP requests", ["app", "method", "route", "status"], registry=r)
        self.latency = Histogram(
            "triptych_request_seconds", "HTTP request latency", ["app", "method", "route"], buckets=_LATENCY_BUCKETS, registry=r
        )
        self.batch_size = Histogram("triptych_batch_size", "items per model call", ["app", "runner"], buckets=_BATCH_BUCKETS, registry=r)
        self.batch_seconds = Histogram(
            "triptych_batch_seconds", "model call duration", ["app", "runner"], buckets=_LATENCY_BUCKETS, registry=r
        )
        self.queue_depth = Gauge("triptych_queue_depth", "requests waiting for a batch", ["app", "runner"], registry=r)
        self.items = Counter("triptych_batch_items", "items by outcome", ["app", "runner", "outcome"], registry=r)
        self.model_info = Gauge("triptych_model_info", "loaded model bundles", ["app", "runner", "version", "sha256"], registry=r)
        self.ready = Gauge("triptych_ready", "1 once models are loaded", ["app"], registry=r)

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(self.app, method, route, str(status)).inc()
        self.latency.labels(self.app, method, route).observe(seconds)

    def batch_observer(self, runner: str):
        def observe(event: str, **values: Any) -> None:
            if event == "batch":
                self.batch_size.labels(self.app, runner).observe(values["size"])
                self.batch_seconds.labels(self.app, runner).observe(values["seconds"])
            elif event == "queue":
                self.queue_depth.labels(self.app, runner).set(values["depth"])
            elif event == "item":
                self.items.labels(self.app, runner, values["outcome"]).inc()

        return observe

    def model_loaded(self, runner: str, version: str, sha256: str) -> None:
        self.model_info.labels(self.app, runner, version, sha256).set(1)

    def render(self) -> bytes:
        return generate_latest(self.registry)
