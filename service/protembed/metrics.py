"""Prometheus metrics, one ``Metrics`` object per engine/app.

Each instance owns its own ``CollectorRegistry`` (not the global default), so several apps can be
created in one process (tests) without "duplicated timeseries" errors. Names follow Prometheus
conventions: ``_total`` counters, ``_seconds`` durations, low-cardinality labels only.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
_TOKEN_BUCKETS = tuple(2**i for i in range(4, 19))
_RATIO_BUCKETS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)

CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None, prefix: str = "protembed") -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r, p = self.registry, prefix
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        # transports
        self.http_requests = Counter(
            f"{p}_http_requests_total",
            "HTTP requests by route and status.",
            ["route", "method", "status"],
            registry=r,
        )
        self.http_latency = Histogram(
            f"{p}_http_request_duration_seconds",
            "HTTP request latency by route and status.",
            ["route", "method", "status"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.grpc_requests = Counter(
            f"{p}_grpc_requests_total",
            "gRPC calls by method and status code.",
            ["method", "code"],
            registry=r,
        )
        self.grpc_latency = Histogram(
            f"{p}_grpc_request_duration_seconds",
            "gRPC call latency by method and status code.",
            ["method", "code"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.embedded_items = Counter(
            f"{p}_embedded_items_total",
            "Items answered, by output and source (cache or model).",
            ["output", "source"],
            registry=r,
        )
        self.embedded_residues = Counter(
            f"{p}_embedded_residues_total", "Residues in answered items.", registry=r
        )
        self.overloaded = Counter(
            f"{p}_overloaded_total", "Requests refused because the queue was full.", registry=r
        )
        # batcher
        self.batch_size = Histogram(
            f"{p}_batch_size", "Items per inference batch.", buckets=_SIZE_BUCKETS, registry=r
        )
        self.batch_padded_tokens = Histogram(
            f"{p}_batch_padded_tokens",
            "Tokens per batch including padding (batch size x longest item).",
            buckets=_TOKEN_BUCKETS,
            registry=r,
        )
        self.batch_padding_ratio = Histogram(
            f"{p}_batch_padding_ratio",
            "Share of a batch's tokens that are padding.",
            buckets=_RATIO_BUCKETS,
            registry=r,
        )
        self.queue_items = Gauge(f"{p}_queue_items", "Items waiting for a batch.", registry=r)
        self.queue_tokens = Gauge(f"{p}_queue_tokens", "Residues waiting for a batch.", registry=r)
        self.queue_priority_tokens = Gauge(
            f"{p}_queue_priority_tokens",
            "Residues waiting for a batch, by request priority (interactive, bulk).",
            ["priority"],
            registry=r,
        )
        self.queue_wait = Histogram(
            f"{p}_batcher_wait_seconds",
            "Time from queueing a request's model work to its last vector, by priority.",
            ["priority"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.dropped_items = Counter(
            f"{p}_dropped_items_total",
            "Queued items dropped before the model, by reason.",
            ["reason"],
            registry=r,
        )
        self.dedup_items = Counter(
            f"{p}_deduplicated_items_total",
            "Items served by an identical sequence already in flight.",
            registry=r,
        )
        self.inference_seconds = Histogram(
            f"{p}_inference_duration_seconds",
            "Model run time per batch.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        # cache
        self.cache_hits = Counter(f"{p}_cache_hits_total", "Cache hits by backend.", ["backend"], registry=r)
        self.cache_misses = Counter(
            f"{p}_cache_misses_total", "Cache misses by backend.", ["backend"], registry=r
        )
        self.cache_errors = Counter(
            f"{p}_cache_errors_total", "Cache errors and timeouts by backend.", ["backend"], registry=r
        )
        self.cache_bytes = Gauge(f"{p}_cache_bytes", "Bytes held by the in-process cache.", registry=r)
        # model
        self.model_info = Info(
            f"{p}_model", "Served model: id, version, variant, execution provider.", registry=r
        )
        self.ready = Gauge(f"{p}_ready", "1 once the model is loaded and warmed up.", registry=r)
        # the warm-up self-check against the card's reference vectors (absent when the card has none)
        self.self_check_max_abs = Gauge(
            f"{p}_self_check_max_abs_diff",
            "Largest absolute difference from the card's reference vectors at warm-up.",
            registry=r,
        )
        self.self_check_min_cosine = Gauge(
            f"{p}_self_check_min_cosine",
            "Lowest cosine to the card's reference vectors at warm-up.",
            registry=r,
        )
        self.self_check_failed = Gauge(
            f"{p}_self_check_failed",
            "1 when the warm-up self-check failed (the server stays not ready), else 0.",
            registry=r,
        )
        # NaN until a check has run (or when the card has no reference vectors)
        self.self_check_max_abs.set(float("nan"))
        self.self_check_min_cosine.set(float("nan"))

    def child(self, metric: Any, *values: str) -> Any:
        """``metric.labels(*values)``, memoized. ``labels()`` takes a lock and rebuilds its key on every
        call, which showed up as a real share of a cache hit's cost; label sets here are small and bounded
        (routes, statuses, outputs, backends), so the memo stays small too."""
        key = (id(metric), values)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*values)
        return found

    def observe_self_check(self, check: Any) -> None:
        """Record a ``reference.SelfCheck`` (nothing when it was skipped: no reference to compare)."""
        if check.max_abs is None:
            return
        self.self_check_max_abs.set(check.max_abs)
        self.self_check_min_cosine.set(check.min_cosine)
        self.self_check_failed.set(0 if check.ok else 1)

    def render(self) -> bytes:
        return generate_latest(self.registry)
