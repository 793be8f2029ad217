"""Embedding cache: an in-process LRU bounded in bytes (default) or Redis shared between replicas.

Keys are sha256(model id, model version, output kind, normalized sequence), so two models, two versions
or two outputs of one model can never answer for each other. Values are raw little-endian float32 bytes
behind a tiny shape header, not JSON. A request does one lookup round trip (``get_many`` = one MGET);
writes go through ``put_many`` which never blocks the response (Redis writes run as background tasks).
Redis trouble never fails a request: the call times out, the error is counted, the model answers, and
after a short back-off the next request tries Redis again (redis-py reconnects its pool by itself).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import struct
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from protembed.metrics import Metrics

log = logging.getLogger(__name__)

_HEADER = struct.Struct("<4sB")  # magic, ndim; then ndim little-endian uint32 dims
_MAGIC = b"PEv1"


def cache_key(model_id: str, model_version: str, output: str, sequence: str) -> str:
    """Hex sha256 of the four parts, NUL-separated so no two different tuples share a key."""
    digest = hashlib.sha256("\x00".join((model_id, model_version, output, sequence)).encode("utf-8"))
    return "protembed:" + digest.hexdigest()


def encode_array(array: np.ndarray) -> bytes:
    arr = np.ascontiguousarray(array, dtype="<f4")
    return _HEADER.pack(_MAGIC, arr.ndim) + struct.pack(f"<{arr.ndim}I", *arr.shape) + arr.tobytes()


def decode_array(data: bytes) -> np.ndarray | None:
    """The stored array, or None for anything malformed (treated as a miss, never as an answer)."""
    if len(data) < _HEADER.size:
        return None
    magic, ndim = _HEADER.unpack_from(data)
    if magic != _MAGIC or ndim > 4:
        return None
    offset = _HEADER.size + 4 * ndim
    if len(data) < offset:
        return None
    shape = struct.unpack_from(f"<{ndim}I", data, _HEADER.size)
    body = memoryview(data)[offset:]
    if len(body) != 4 * math.prod(shape):
        return None
    # A read-only view on the cached bytes, not a copy: every consumer reads it (and normalizing makes a
    # new array), and bytes are immutable, so nothing can change the cached value through it.
    return np.frombuffer(body, dtype="<f4").reshape(shape)


def _count_lookups(metrics: Metrics | None, backend: str, out: list[bytes | None]) -> list[bytes | None]:
    """Count the hits and misses of one ``get_many`` answer; returns it unchanged."""
    if metrics is not None:
        hits = sum(v is not None for v in out)
        # Zero increments are skipped: each costs a lock, and this runs on every request.
        if hits:
            metrics.child(metrics.cache_hits, backend).inc(hits)
        if hits < len(out):
            metrics.child(metrics.cache_misses, backend).inc(len(out) - hits)
    return out


class Cache(Protocol):
    backend: str

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]: ...

    def put_many(self, items: Sequence[tuple[str, bytes]]) -> None: ...

    async def close(self) -> None: ...

    def describe(self) -> dict[str, object]: ...


class NullCache:
    backend = "none"

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        return [None] * len(keys)

    def put_many(self, items: Sequence[tuple[str, bytes]]) -> None:
        return None

    async def close(self) -> None:
        return None

    def describe(self) -> dict[str, object]:
        return {"backend": self.backend}


class MemoryCache:
    """LRU bounded by the bytes of keys plus values (not by entry count: per-residue values vary a lot)."""

    backend = "memory"
    _OVERHEAD = 64  # rough per-entry bookkeeping, so millions of tiny values still count

    def __init__(self, max_bytes: int, metrics: Metrics | None = None) -> None:
        self.max_bytes = max_bytes
        self.metrics = metrics
        self._data: OrderedDict[str, bytes] = OrderedDict()
        self.bytes = 0

    def _size(self, key: str, value: bytes) -> int:
        return len(key) + len(value) + self._OVERHEAD

    def get_sync(self, keys: Sequence[str]) -> list[bytes | None]:
        out: list[bytes | None] = []
        for key in keys:
            value = self._data.get(key)
            if value is not None:
                self._data.move_to_end(key)
            out.append(value)
        return out

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        out = self.get_sync(keys)
        _count_lookups(self.metrics, self.backend, out)
        return out

    def put_many(self, items: Sequence[tuple[str, bytes]]) -> None:
        for key, value in items:
            size = self._size(key, value)
            if size > self.max_bytes:
                continue  # one value larger than the whole cache: caching it would evict everything
            old = self._data.pop(key, None)
            if old is not None:
                self.bytes -= self._size(key, old)
            self._data[key] = value
            self.bytes += size
            while self.bytes > self.max_bytes:
                k, v = self._data.popitem(last=False)
                self.bytes -= self._size(k, v)
        if self.metrics is not None:
            self.metrics.cache_bytes.set(self.bytes)

    def __len__(self) -> int:
        return len(self._data)

    async def close(self) -> None:
        self._data.clear()
        self.bytes = 0

    def describe(self) -> dict[str, object]:
        return {
            "backend": self.backend,
            "max_bytes": self.max_bytes,
            "bytes": self.bytes,
            "entries": len(self),
        }


class RedisCache:
    """Redis via redis-py asyncio: one MGET per lookup, pipelined SET EX writes in the background."""

    backend = "redis"

    def __init__(
        self,
        url: str,
        *,
        ttl_s: int,
        timeout_s: float,
        metrics: Metrics | None = None,
        max_backoff_s: float = 5.0,
    ) -> None:
        import redis.asyncio as aioredis

        self.url = url
        self.ttl_s = ttl_s
        self.timeout_s = timeout_s
        self.metrics = metrics
        self.max_backoff_s = max_backoff_s
        self.client = aioredis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, health_check_interval=30
        )
        self.errors = 0
        self._skip_until = 0.0  # after an error, don't try Redis again until then (no per-request timeouts)
        self._backoff_s = 0.0
        self._tasks: set[asyncio.Task[None]] = set()

    def _available(self) -> bool:
        return time.monotonic() >= self._skip_until

    def _failed(self, what: str, exc: BaseException) -> None:
        self.errors += 1
        if self.metrics is not None:
            self.metrics.cache_errors.labels(self.backend).inc()
        self._backoff_s = min(self.max_backoff_s, max(0.25, self._backoff_s * 2))
        self._skip_until = time.monotonic() + self._backoff_s
        log.warning(
            "redis %s failed (%s: %s); answering from the model, retry in %.2fs",
            what,
            type(exc).__name__,
            exc,
            self._backoff_s,
        )

    def _ok(self) -> None:
        self._backoff_s = 0.0

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        if not keys:
            return []
        if not self._available():
            return _count_lookups(self.metrics, self.backend, [None] * len(keys))
        try:
            # wait_for as well as socket timeouts: a connect that hangs in DNS or a pool wait is covered too
            values = await asyncio.wait_for(self.client.mget(list(keys)), self.timeout_s * 2)
        except (Exception, asyncio.TimeoutError) as exc:
            self._failed("MGET", exc)
            return _count_lookups(self.metrics, self.backend, [None] * len(keys))
        self._ok()
        out = [v if isinstance(v, bytes) else None for v in values]
        _count_lookups(self.metrics, self.backend, out)
        return out

    def put_many(self, items: Sequence[tuple[str, bytes]]) -> None:
        if not items or not self._available():
            return
        task = asyncio.get_running_loop().create_task(self._write(list(items)))
        self._tasks.add(task)  # keep a reference: the loop only holds weak ones
        task.add_done_callback(self._tasks.discard)

    async def _write(self, items: list[tuple[str, bytes]]) -> None:
        try:
            pipe = self.client.pipeline(transaction=False)
            for key, value in items:
                pipe.set(key, value, ex=self.ttl_s or None)
            await asyncio.wait_for(pipe.execute(), self.timeout_s * 4)
        except (Exception, asyncio.TimeoutError) as exc:
            self._failed("SET", exc)

    async def flush_writes(self) -> None:
        """Wait for background writes (used at shutdown and by tests)."""
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def ping(self) -> bool:
        try:
            return bool(await asyncio.wait_for(self.client.ping(), self.timeout_s * 4))
        except (Exception, asyncio.TimeoutError) as exc:
            self._failed("PING", exc)
            return False

    async def close(self) -> None:
        await self.flush_writes()
        await self.client.aclose()

    def describe(self) -> dict[str, object]:
        # never echo the URL itself: it may carry a password
        return {
            "backend": self.backend,
            "ttl_s": self.ttl_s,
            "timeout_s": self.timeout_s,
            "errors": self.errors,
        }


def make_cache(
    redis_url: str | None, *, max_bytes: int, ttl_s: int, timeout_s: float, metrics: Metrics | None = None
) -> Cache:
    if redis_url:
        return RedisCache(redis_url, ttl_s=ttl_s, timeout_s=timeout_s, metrics=metrics)
    if max_bytes > 0:
        return MemoryCache(max_bytes, metrics=metrics)
    return NullCache()
