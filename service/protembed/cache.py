"""Embedding cache: an in-process LRU bounded in bytes (default), one Redis, or a Redis Cluster.

Keys are sha256(model id, model version, output kind, normalized sequence), so two models, two versions
or two outputs of one model can never answer for each other. Values are raw little-endian floats behind
a tiny shape header, not JSON: float32 by default, or float16 (``encoding="float16"``: half the memory,
about 1e-3 relative error; see docs/cache.md). The caller always hands the cache float32 values and
reads values with :func:`decode_array`, which reads both; the cache stores them in its encoding, under
a key that names the encoding, so replicas with different encodings never read each other's values.

A request does one lookup round trip per store node (``get_many``: one MGET on a single Redis; on a
cluster one pipelined GET batch per node, all nodes concurrently); writes go through ``put_many``, which
never blocks the response (Redis writes run as background tasks). Redis trouble never fails a request:
the call times out, the error is counted, the model answers, and after a short back-off the next request
tries again (redis-py reconnects by itself; a cluster node is backed off alone, the others keep serving).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import struct
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal, Protocol, get_args

import numpy as np

from protembed.metrics import Metrics

if TYPE_CHECKING:
    from redis.asyncio.cluster import RedisCluster

log = logging.getLogger(__name__)

Encoding = Literal["float32", "float16"]
ENCODINGS: tuple[str, ...] = get_args(Encoding)

_HEADER = struct.Struct("<4sB")  # magic, ndim; then ndim little-endian uint32 dims
# The magic names the element type, so a value decodes correctly whatever encoding wrote it.
_MAGIC: dict[str, bytes] = {"float32": b"PEv1", "float16": b"PEh1"}
_DTYPE: dict[bytes, np.dtype[Any]] = {b"PEv1": np.dtype("<f4"), b"PEh1": np.dtype("<f2")}
_FLOAT16_MAX = float(np.finfo(np.float16).max)  # 65504; anything larger would be stored as infinity
# A float32 key is the bare hash (the keys written before encodings existed stay valid); another
# encoding's key ends in its name.
_KEY_SUFFIX: dict[str, str] = {"float32": "", "float16": ":f16"}

CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}


def cache_key(
    model_id: str, model_version: str, output: str, sequence: str, encoding: Encoding = "float32"
) -> str:
    """Hex sha256 of the four parts, NUL-separated so no two different tuples share a key; a key of a
    non-default encoding ends in its name (``:f16``)."""
    digest = hashlib.sha256("\x00".join((model_id, model_version, output, sequence)).encode("utf-8"))
    return "protembed:" + digest.hexdigest() + _KEY_SUFFIX[encoding]


def encode_array(array: np.ndarray, encoding: Encoding = "float32") -> bytes:
    """Header + raw little-endian values. float16 falls back to float32 for an array float16 cannot
    hold (a value beyond +-65504 would become infinity): such a value is kept exact, never corrupted."""
    if encoding == "float16" and (array.size == 0 or float(np.abs(array).max()) <= _FLOAT16_MAX):
        arr = np.ascontiguousarray(array, dtype="<f2")
    else:
        encoding = "float32"
        arr = np.ascontiguousarray(array, dtype="<f4")
    header = _HEADER.pack(_MAGIC[encoding], arr.ndim) + struct.pack(f"<{arr.ndim}I", *arr.shape)
    return header + arr.tobytes()


def decode_array(data: bytes) -> np.ndarray | None:
    """The stored array as float32, or None for anything malformed (a miss, never an answer)."""
    if len(data) < _HEADER.size:
        return None
    magic, ndim = _HEADER.unpack_from(data)
    dtype = _DTYPE.get(magic)
    if dtype is None or ndim > 4:
        return None
    offset = _HEADER.size + 4 * ndim
    if len(data) < offset:
        return None
    shape = struct.unpack_from(f"<{ndim}I", data, _HEADER.size)
    body = memoryview(data)[offset:]
    if len(body) != dtype.itemsize * math.prod(shape):
        return None
    # float32: a read-only view on the cached bytes, not a copy: every consumer reads it (and normalizing
    # makes a new array), and bytes are immutable, so nothing can change the cached value through it.
    arr = np.frombuffer(body, dtype=dtype).reshape(shape)
    if dtype.itemsize == 2:
        arr = arr.astype(np.float32)
        arr.flags.writeable = False  # read-only like the float32 view, so no consumer relies on writing
    return arr


def _transcode(value: bytes, encoding: Encoding) -> bytes:
    """A float32 value as the cache stores it in ``encoding`` (unreadable bytes are stored as given)."""
    if encoding == "float32":
        return value
    arr = decode_array(value)
    return value if arr is None else encode_array(arr, encoding)


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

    def __init__(
        self, max_bytes: int, metrics: Metrics | None = None, encoding: Encoding = "float32"
    ) -> None:
        self.max_bytes = max_bytes
        self.metrics = metrics
        self.encoding = encoding
        self._suffix = _KEY_SUFFIX[encoding]
        self._data: OrderedDict[str, bytes] = OrderedDict()
        self.bytes = 0

    def _size(self, key: str, value: bytes) -> int:
        return len(key) + len(value) + self._OVERHEAD

    def get_sync(self, keys: Sequence[str]) -> list[bytes | None]:
        out: list[bytes | None] = []
        for key in keys:
            key += self._suffix
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
            key += self._suffix
            value = _transcode(value, self.encoding)
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
            "encoding": self.encoding,
            "max_bytes": self.max_bytes,
            "bytes": self.bytes,
            "entries": len(self),
        }


class _Backoff:
    """After a failure, skip the store for a while (0.25 s, doubling up to ``max_s``), so a dead Redis
    costs one timeout per back-off period instead of one per request.

    Only a call that started after the last back-off decision can escalate it: the calls already in
    flight when a failure set the back-off are the same burst (fifty concurrent requests timing out
    together are one failure of Redis, not fifty doublings straight to the cap)."""

    def __init__(self, max_s: float) -> None:
        self.max_s = max_s
        self.delay_s = 0.0
        self.skip_until = 0.0
        self.decided_at = -math.inf  # when a failure last set the back-off

    def available(self) -> bool:
        return time.monotonic() >= self.skip_until

    def failed(self, started: float) -> bool:
        """A call that started at ``started`` failed; True when that moved the back-off."""
        if started < self.decided_at:
            return False
        self.delay_s = min(self.max_s, max(0.25, self.delay_s * 2))
        self.decided_at = time.monotonic()
        self.skip_until = self.decided_at + self.delay_s
        return True

    def ok(self, started: float) -> None:
        if started >= self.decided_at:  # a straggler from before the last failure proves nothing
            self.delay_s = 0.0


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
        encoding: Encoding = "float32",
    ) -> None:
        self.url = url
        self.ttl_s = ttl_s
        self.timeout_s = timeout_s
        self.metrics = metrics
        self.max_backoff_s = max_backoff_s
        self.encoding = encoding
        self._suffix = _KEY_SUFFIX[encoding]
        self.client = self._connect(url)
        self.errors = 0
        self._backoff = _Backoff(max_backoff_s)
        self._tasks: set[asyncio.Task[None]] = set()

    def _connect(self, url: str) -> Any:
        import redis.asyncio as aioredis

        return aioredis.Redis.from_url(
            url,
            socket_timeout=self.timeout_s,
            socket_connect_timeout=self.timeout_s,
            health_check_interval=30,
        )

    async def _attempt(self, what: str, backoff: _Backoff, call: Awaitable[Any], timeout_s: float) -> Any:
        """``call`` bounded by ``timeout_s``: its result, or None when it failed (counted, backed off)."""
        started = time.monotonic()
        try:
            # wait_for as well as socket timeouts: a connect that hangs in DNS or a pool wait is covered
            result = await asyncio.wait_for(call, timeout_s)
        except (Exception, asyncio.TimeoutError) as exc:
            self.errors += 1
            if self.metrics is not None:
                self.metrics.cache_errors.labels(self.backend).inc()
            # One line per back-off decision, not one per request of a burst.
            level = logging.WARNING if backoff.failed(started) else logging.DEBUG
            log.log(
                level,
                "%s %s failed (%s: %s); answering from the model, retry in %.2fs",
                self.backend,
                what,
                type(exc).__name__,
                exc,
                backoff.delay_s,
            )
            return None
        backoff.ok(started)
        return result

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        if not keys:
            return []
        out = await self._lookup([k + self._suffix for k in keys])
        return _count_lookups(self.metrics, self.backend, out)

    async def _lookup(self, keys: list[str]) -> list[bytes | None]:
        if not self._backoff.available():
            return [None] * len(keys)
        values = await self._attempt("MGET", self._backoff, self.client.mget(keys), self.timeout_s * 2)
        if values is None:
            return [None] * len(keys)
        return [v if isinstance(v, bytes) else None for v in values]

    def put_many(self, items: Sequence[tuple[str, bytes]]) -> None:
        if not items or not self._backoff.available():
            return
        stored = [(k + self._suffix, _transcode(v, self.encoding)) for k, v in items]
        task = asyncio.get_running_loop().create_task(self._write(stored))
        self._tasks.add(task)  # keep a reference: the loop only holds weak ones
        task.add_done_callback(self._tasks.discard)

    async def _write(self, items: list[tuple[str, bytes]]) -> None:
        pipe = self.client.pipeline(transaction=False)
        await self._attempt("SET", self._backoff, self._set_all(pipe, items), self.timeout_s * 4)

    async def _set_all(self, pipe: Any, items: list[tuple[str, bytes]]) -> Any:
        for key, value in items:
            pipe.set(key, value, ex=self.ttl_s or None)
        return await pipe.execute()

    async def flush_writes(self) -> None:
        """Wait for background writes (used at shutdown and by tests)."""
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def ping(self) -> bool:
        return bool(await self._attempt("PING", self._backoff, self.client.ping(), self.timeout_s * 4))

    async def close(self) -> None:
        await self.flush_writes()
        await self.client.aclose()

    def describe(self) -> dict[str, object]:
        # never echo the URL itself: it may carry a password
        return {
            "backend": self.backend,
            "encoding": self.encoding,
            "ttl_s": self.ttl_s,
            "timeout_s": self.timeout_s,
            "errors": self.errors,
        }


def parse_cluster_url(url: str) -> tuple[str, list[tuple[str, int]]]:
    """``redis+cluster://[user:password@]host:port[,host:port...][/0][?options]`` -> (a plain
    ``redis://`` URL of the first node, which carries the credentials and options, and every seed node).

    Any one reachable seed node is enough: the client learns the others from it. ``rediss+cluster://``
    is the same over TLS. A cluster has only database 0."""
    scheme, sep, rest = url.partition("://")
    plain = CLUSTER_SCHEMES.get(scheme.lower())
    if not sep or plain is None:
        raise ValueError(
            f"redis cluster URL {scheme!r}://...: the scheme must be one of {sorted(CLUSTER_SCHEMES)}"
        )
    location, question, query = rest.partition("?")
    netloc, slash, path = location.partition("/")
    userinfo, at, hosts = netloc.rpartition("@")
    if path not in ("", "0"):
        raise ValueError(f"redis cluster URL: database {path!r}: a cluster has only database 0")
    nodes: list[tuple[str, int]] = []
    for part in hosts.split(","):
        host, colon, port = part.strip().rpartition(":")
        if not colon:
            host, port = part.strip(), "6379"
        host = host.strip("[]")  # an IPv6 literal
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"redis cluster URL: seed node {part!r} is not host:port")
        nodes.append((host, int(port)))
    first = f"[{nodes[0][0]}]" if ":" in nodes[0][0] else nodes[0][0]
    return f"{plain}://{userinfo}{at}{first}:{nodes[0][1]}{slash}{path}{question}{query}", nodes


class RedisClusterCache(RedisCache):
    """Redis Cluster through redis-py's cluster client. A cluster refuses an MGET whose keys lie in
    different hash slots (CROSSSLOT), so a lookup groups its keys by the node that serves their slot and
    sends each node one pipelined batch of GETs, all nodes concurrently: one round trip per node, not per
    key. Writes go the same way. Each node has its own back-off, so a dead node costs only its own keys
    (they are computed by the model) while the others keep answering; a moved slot is followed by the
    client (MOVED/ASK redirection and a topology refresh)."""

    backend = "redis-cluster"

    def __init__(self, url: str, **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        # ``self._backoff`` covers the topology (no node known yet, or none reachable); each node that
        # failed a call has its own.
        self._node_backoff: dict[str, _Backoff] = {}

    def _connect(self, url: str) -> RedisCluster:
        from redis.asyncio.cluster import ClusterNode, RedisCluster
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        first, nodes = parse_cluster_url(url)
        return RedisCluster.from_url(
            first,
            startup_nodes=[ClusterNode(host, port) for host, port in nodes[1:]],
            socket_timeout=self.timeout_s,
            socket_connect_timeout=self.timeout_s,
            health_check_interval=30,
            # A cache serves the slots it still has; the client must not refuse a partly covered cluster.
            require_full_coverage=False,
            # One immediate retry after a topology refresh rides over a failover inside one call; more
            # would only spend the request's time budget (the model answers instead).
            retry=Retry(NoBackoff(), 1),
        )

    def _node_backoff_for(self, name: str) -> _Backoff:
        backoff = self._node_backoff.get(name)
        if backoff is None:
            backoff = self._node_backoff[name] = _Backoff(self.max_backoff_s)
        return backoff

    async def _by_node(self, keys: Sequence[str]) -> dict[str, list[int]] | None:
        """Indices of ``keys`` grouped by the name of the node serving their slot, or None when the
        topology is unknown (the first contact failed)."""
        if not self._backoff.available():
            return None
        if not self.client.get_primaries():
            # The first call asks a seed node for the topology; after that the client refreshes it
            # itself when a node answers MOVED or fails (inside the pipelines below).
            topology = self.client.initialize()
            if await self._attempt("CLUSTER SLOTS", self._backoff, topology, self.timeout_s * 2) is None:
                return None
        groups: dict[str, list[int]] = {}
        for i, key in enumerate(keys):
            try:
                node = self.client.get_node_from_key(key)
            except Exception:  # a slot no node serves (a lost master without replica): a miss
                continue
            if node is not None:
                groups.setdefault(node.name, []).append(i)
        return groups

    async def _per_node(
        self,
        what: str,
        groups: dict[str, list[int]],
        run: Callable[[list[int]], Awaitable[Any]],
        timeout_s: float,
    ) -> dict[str, Any]:
        """Run ``run(indices)`` for every node not backed off, all concurrently, each bounded by
        ``timeout_s``; the results of the nodes that answered, by node name."""

        async def one(name: str, idx: list[int]) -> tuple[str, Any]:
            backoff = self._node_backoff_for(name)
            return name, await self._attempt(f"{what} on {name}", backoff, run(idx), timeout_s)

        live = [(n, idx) for n, idx in groups.items() if self._node_backoff_for(n).available()]
        return dict(await asyncio.gather(*(one(n, idx) for n, idx in live)))

    async def _lookup(self, keys: list[str]) -> list[bytes | None]:
        out: list[bytes | None] = [None] * len(keys)
        groups = await self._by_node(keys)
        if not groups:
            return out

        async def get(idx: list[int]) -> list[Any]:
            pipe = self.client.pipeline()
            for i in idx:
                pipe.get(keys[i])
            return list(await pipe.execute())

        answers = await self._per_node("GET", groups, get, self.timeout_s * 2)
        for name, values in answers.items():
            if values is not None:
                for i, v in zip(groups[name], values, strict=True):
                    out[i] = v if isinstance(v, bytes) else None
        return out

    async def _write(self, items: list[tuple[str, bytes]]) -> None:
        groups = await self._by_node([k for k, _ in items])
        if groups:

            async def put(idx: list[int]) -> Any:
                return await self._set_all(self.client.pipeline(), [items[i] for i in idx])

            await self._per_node("SET", groups, put, self.timeout_s * 4)

    def describe(self) -> dict[str, object]:
        out = super().describe()
        # node names are host:port, never credentials; only how many are known and how many backed off
        out["nodes"] = len(self.client.get_primaries())
        out["nodes_backed_off"] = sum(not b.available() for b in self._node_backoff.values())
        return out


def make_cache(
    redis_url: str | None,
    *,
    max_bytes: int,
    ttl_s: int,
    timeout_s: float,
    metrics: Metrics | None = None,
    encoding: Encoding = "float32",
) -> Cache:
    """Redis Cluster for a ``redis+cluster://`` (or ``rediss+cluster://``) URL, one Redis for any other
    URL, else the in-process LRU (or nothing when ``max_bytes`` is 0)."""
    if encoding not in ENCODINGS:
        raise ValueError(f"cache encoding {encoding!r}: expected one of {', '.join(ENCODINGS)}")
    if redis_url:
        cls = RedisClusterCache if redis_url.partition("://")[0].lower() in CLUSTER_SCHEMES else RedisCache
        return cls(redis_url, ttl_s=ttl_s, timeout_s=timeout_s, metrics=metrics, encoding=encoding)
    if max_bytes > 0:
        return MemoryCache(max_bytes, metrics=metrics, encoding=encoding)
    return NullCache()
