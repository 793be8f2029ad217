"""Cache hit vs miss latency: each sequence once (computed), then repeated (answered from the cache)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from protembed_bench.serve.clients import BlockingHttpClient, Call, check_http, with_transport
from protembed_bench.serve.config import ServeBenchConfig
from protembed_bench.serve.server import ServerProcess


def _cache_plan(sequences: Sequence[str], repeats: int) -> list[tuple[str, bool]]:
    """(sequence, expected to be a hit): each sequence once (a miss, computed), then ``repeats`` times."""
    return [(seq, i > 0) for seq in sequences for i in range(repeats + 1)]


def _record(latency: float, cached: bool, expect_hit: bool, misses: list[float], hits: list[float]) -> None:
    if cached != expect_hit:
        raise RuntimeError(
            "a repeated request was not a cache hit; is the server cache disabled?"
            if expect_hit
            else "a first request was answered from the cache; is the sequence reused?"
        )
    (hits if expect_hit else misses).append(latency)


def _cache_summary(
    sequences: Sequence[str], misses: list[float], hits: list[float], client: str
) -> dict[str, Any]:
    miss_ms, hit_ms = statistics.median(misses) * 1000, statistics.median(hits) * 1000
    return {
        "client": client,
        "sequences": len(sequences),
        "length_median": statistics.median(len(s) for s in sequences),
        "miss_median_ms": miss_ms,
        "hit_median_ms": hit_ms,
        "miss_p95_ms": float(np.percentile(np.array(misses) * 1000, 95)),
        "hit_p95_ms": float(np.percentile(np.array(hits) * 1000, 95)),
        "speedup": miss_ms / hit_ms,
    }


def cache_latency(server: ServerProcess, cfg: ServeBenchConfig, sequences: Sequence[str]) -> dict[str, Any]:
    """Sequential HTTP over :class:`BlockingHttpClient`: the headline hit/miss figures."""
    misses: list[float] = []
    hits: list[float] = []
    client = BlockingHttpClient("127.0.0.1", server.port)
    try:
        for seq, expect_hit in _cache_plan(sequences, cfg.cache_repeats):
            payload = {"sequences": [seq], "encoding": cfg.http_encoding}
            t0 = time.perf_counter()
            cached = check_http(*client.post_json("/embed", payload), cfg.http_encoding)
            _record(time.perf_counter() - t0, cached, expect_hit, misses, hits)
    finally:
        client.close()
    return _cache_summary(sequences, misses, hits, "blocking socket")


async def cache_latency_async(
    server: ServerProcess, cfg: ServeBenchConfig, sequences: Sequence[str]
) -> dict[str, Any]:
    """The same through the load levels' asyncio client (kept beside the headline for comparison)."""
    misses: list[float] = []
    hits: list[float] = []

    async def body(call: Call) -> None:
        for seq, expect_hit in _cache_plan(sequences, cfg.cache_repeats):
            t0 = time.perf_counter()
            cached = await call(seq)
            _record(time.perf_counter() - t0, cached, expect_hit, misses, hits)

    await with_transport("http", server, cfg, body, 1)
    return _cache_summary(sequences, misses, hits, f"asyncio ({cfg.http_client})")
