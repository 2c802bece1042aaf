"""Prometheus metrics of the HTTP layer, served as text by ``GET /metrics``.

One registry per app instance (one per ingress replica). Batch sizes are reported back by the
model replicas with each batch's first part, so every batch is counted once across ingresses.
Ray Serve's own metrics (``ray_serve_*``, including ``@serve.batch`` queue lengths) are exported
separately by Ray's metrics agent.
"""
from __future__ import annotations

import prometheus_client
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# The ``*_created`` timestamp series double the output and no dashboard of ours reads them.
prometheus_client.disable_created_metrics()

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_TEXT_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
BATCH_TOKEN_BUCKETS = (16, 64, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768)


class ServeMetrics:
    """Counters, histograms and gauges of one app instance.

    Args:
        routes: the route paths used as the ``route`` label; anything else is ``other``, so
            that random paths cannot blow up the label set.
    """

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, routes: set[str]):
        self.routes = set(routes)
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("embedray_requests", "HTTP requests by route and status code",
                                ["route", "status"], registry=r)
        self.latency = Histogram("embedray_request_latency_seconds", "HTTP request latency",
                                 ["route"], buckets=LATENCY_BUCKETS, registry=r)
        self.batch_texts = Histogram("embedray_batch_texts", "Texts per model batch",
                                     buckets=BATCH_TEXT_BUCKETS, registry=r)
        self.batch_tokens = Histogram("embedray_batch_tokens", "Tokens per model batch",
                                      buckets=BATCH_TOKEN_BUCKETS, registry=r)
        self.queue_depth = Gauge("embedray_queue_depth",
                                 "Batch parts sent to the model replicas and not yet answered", registry=r)
        self.inflight = Gauge("embedray_inflight_requests", "HTTP requests being handled", registry=r)
        self.texts = Counter("embedray_embedded_texts", "Texts embedded", registry=r)
        self.tokens = Counter("embedray_embedded_tokens", "Tokens embedded", registry=r)

    def route_label(self, path: str) -> str:
        return path if path in self.routes else "other"

    def observe_request(self, path: str, status: int, seconds: float) -> None:
        route = self.route_label(path)
        self.requests.labels(route=route, status=str(status)).inc()
        self.latency.labels(route=route).observe(seconds)

    def observe_batch(self, texts: int, tokens: int) -> None:
        self.batch_texts.observe(texts)
        self.batch_tokens.observe(tokens)

    def render(self) -> bytes:
        """The Prometheus text exposition of all metrics."""
        return generate_latest(self.registry)
