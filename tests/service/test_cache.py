"""Cache keys, value encoding, the byte-bounded LRU, and the Redis backend against a real redis-server."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np
import pytest

from protembed.cache import MemoryCache, RedisCache, cache_key, decode_array, encode_array
from protembed.metrics import Metrics


def test_keys_differ_by_model_version_output_and_sequence() -> None:
    base = cache_key("m", "1", "student", "MKT")
    assert base == cache_key("m", "1", "student", "MKT")
    others = {
        cache_key("m2", "1", "student", "MKT"),
        cache_key("m", "2", "student", "MKT"),
        cache_key("m", "1", "unirep1900", "MKT"),
        cache_key("m", "1", "residues", "MKT"),
        cache_key("m", "1", "student", "MKTA"),
        cache_key("m", "1student", "", "MKT"),  # separators: no two tuples share a key
    }
    assert base not in others and len(others) == 6


def test_values_are_raw_little_endian_float32() -> None:
    vec = np.arange(6, dtype=np.float32).reshape(2, 3)
    data = encode_array(vec)
    assert data.endswith(vec.astype("<f4").tobytes())
    assert len(data) == 4 + 1 + 2 * 4 + 6 * 4
    back = decode_array(data)
    assert back is not None and back.dtype == np.float32 and np.array_equal(back, vec)
    assert not back.flags.writeable  # a view on the cached bytes: nobody may change a cached value
    assert decode_array(data[:-1]) is None and decode_array(b"junk") is None


async def test_lru_is_bounded_in_bytes() -> None:
    value = encode_array(np.zeros(100, np.float32))  # ~417 bytes
    per_entry = len("k00") + len(value) + MemoryCache._OVERHEAD
    cache = MemoryCache(max_bytes=3 * per_entry, metrics=Metrics())
    cache.put_many([(f"k{i:02d}", value) for i in range(3)])
    assert len(cache) == 3 and cache.bytes == 3 * per_entry
    assert (await cache.get_many(["k00"]))[0] is not None  # k00 becomes most recently used
    cache.put_many([("k03", value)])
    got = await cache.get_many(["k00", "k01", "k02", "k03"])
    assert [g is not None for g in got] == [True, False, True, True]
    assert cache.bytes <= cache.max_bytes
    cache.put_many([("huge", b"x" * (4 * per_entry))])  # bigger than the whole cache: not stored
    assert len(cache) == 3


async def test_redis_round_trip_ttl_and_one_mget(redis_server: Any) -> None:
    metrics = Metrics()
    cache = RedisCache(redis_server.url, ttl_s=100, timeout_s=0.5, metrics=metrics)
    try:
        cache.put_many([("a", b"1"), ("b", b"22")])
        await cache.flush_writes()
        assert await cache.get_many(["a", "b", "c"]) == [b"1", b"22", None]
        assert 0 < await cache.client.ttl("a") <= 100
        hits = metrics.registry.get_sample_value("protembed_cache_hits_total", {"backend": "redis"})
        assert hits == 2
    finally:
        await cache.close()


async def test_redis_down_counts_errors_and_recovers(redis_server: Any) -> None:
    metrics = Metrics()
    cache = RedisCache(redis_server.url, ttl_s=100, timeout_s=0.2, metrics=metrics, max_backoff_s=0.3)
    try:
        cache.put_many([("a", b"1")])
        await cache.flush_writes()
        redis_server.kill()
        start = time.monotonic()
        assert await cache.get_many(["a"]) == [None]
        assert await cache.get_many(["a"]) == [None]  # inside the back-off: not even tried
        assert time.monotonic() - start < 1.0
        assert metrics.registry.get_sample_value("protembed_cache_errors_total", {"backend": "redis"}) == 1
        redis_server.start()  # same port, empty (no persistence)
        time.sleep(0.35)
        cache.put_many([("a", b"1")])
        await cache.flush_writes()
        assert await cache.get_many(["a"]) == [b"1"]  # reconnected by itself
    finally:
        await cache.close()


@pytest.mark.parametrize("n", [0, 1])
async def test_empty_and_single_lookups(n: int) -> None:
    cache = MemoryCache(1024)
    keys = [f"k{i}" for i in range(n)]
    assert await cache.get_many(keys) == [None] * n


async def test_a_burst_of_failures_backs_off_once_not_to_the_cap(redis_server: Any) -> None:
    metrics = Metrics()
    cache = RedisCache(redis_server.url, ttl_s=100, timeout_s=0.2, metrics=metrics, max_backoff_s=5.0)
    try:
        assert await cache.get_many(["warm"]) == [None]  # connected
        redis_server.kill()
        # Twenty concurrent requests fail together: twenty errors, but one back-off step (0.25 s), not
        # twenty doublings to the 5 s cap.
        burst = await asyncio.gather(*(cache.get_many([f"k{i}"]) for i in range(20)))
        assert burst == [[None]] * 20
        assert metrics.registry.get_sample_value("protembed_cache_errors_total", {"backend": "redis"}) == 20
        start = time.monotonic()
        while await cache.get_many(["k"]) == [None] and cache.errors == 20:
            assert time.monotonic() - start < 1.0, "still backed off after 1 s: the burst escalated"
            await asyncio.sleep(0.05)
        assert cache.errors == 21  # tried again after about 0.25 s; this failure is a new step (0.5 s)
        assert not cache._backoff.available() and 0.4 < cache._backoff.skip_until - time.monotonic() <= 0.5
    finally:
        await cache.close()
