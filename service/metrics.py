"""Prometheus metrics: per-endpoint request counts and latency, per-stage timings.

Each app owns its registry, so several apps in one process (tests) never share counters.
With several uvicorn workers `python -m service` points PROMETHEUS_MULTIPROC_DIR at a
shared folder; then every process writes its samples there and /metrics adds them up.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)

# Seconds; the service answers in milliseconds on a GPU and in tens to hundreds on a CPU.
LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    """The service's metrics, registered on a registry of their own."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.requests = Counter(
            "vsepp_http_requests",
            "HTTP requests answered, by route template and status code.",
            ["method", "endpoint", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "vsepp_http_request_duration_seconds",
            "Time from request to the end of the response, by route template.",
            ["method", "endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.stages = Histogram(
            "vsepp_stage_duration_seconds",
            "Time spent in one stage of a search (decode, encode, search).",
            ["stage", "modality"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.text_batch_size = Histogram(
            "vsepp_text_batch_size",
            "Text queries encoded together in one encode_texts call.",
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )

    def observe_request(self, method: str, endpoint: str, status: int, seconds: float) -> None:
        """Count one answered request and record its latency."""
        self.requests.labels(method, endpoint, str(status)).inc()
        self.latency.labels(method, endpoint).observe(seconds)

    @contextmanager
    def stage(self, stage: str, modality: str) -> Iterator[None]:
        """Time the body of the `with` block as one `stage` of a `modality` search."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.stages.labels(stage, modality).observe(time.perf_counter() - start)

    def render(self) -> tuple[bytes, str]:
        """The metrics in Prometheus text format, and that format's content type."""
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
