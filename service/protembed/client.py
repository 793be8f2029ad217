"""Python clients for protembed servers: REST and gRPC behind one interface, sync and async.

    from protembed.client import Client, AsyncClient

    with Client("http://localhost:8000") as client:          # or "grpc://localhost:50051"
        vectors = client.embed(["MKTAYIAKQR", "MSEQ..."])    # np.ndarray [2, dim], float32
        residues = client.embed(["MKTAYIAKQR"], per_residue=True)  # list of [length, dim] arrays

    async with AsyncClient("grpc://localhost:50051") as client:
        vectors = await client.embed(sequences)

Large inputs are split into request-sized chunks (``max_items_per_request``, ``max_residues_per_request``,
and for per-residue output ``per_residue_residues_per_request`` since those responses are large); the
async client sends up to ``concurrency`` chunks at once. Overload (HTTP 429 / gRPC RESOURCE_EXHAUSTED)
and unavailability (HTTP 502/503, gRPC UNAVAILABLE, connection refused) are retried with exponential
backoff and jitter; a ``Retry-After`` (HTTP header, or gRPC trailing metadata ``retry-after``) is
honoured exactly. Other failures raise :class:`RemoteError`, which carries the HTTP status or gRPC code,
the error type and, for a bad item, its index in the whole input (not just in its chunk).
"""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import random
import re
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit

import numpy as np

from protembed.errors import ProtembedError
from protembed.packing import Budget, pack, ranges

T = TypeVar("T")

_ITEM_IN_MESSAGE = re.compile(r"item (\d+)\b")
_RETRY_HTTP = frozenset({429, 502, 503})
_RETRY_GRPC = frozenset({"RESOURCE_EXHAUSTED", "UNAVAILABLE"})


class RemoteError(ProtembedError):
    """A request the server refused (after retries, when the failure was retryable)."""

    def __init__(
        self,
        message: str,
        *,
        http_status: int | None = None,
        grpc_code: str | None = None,
        error_type: str = "internal_error",
        index: int | None = None,
        item_id: str | None = None,
        retry_after_s: float | None = None,
        retryable: bool = False,
    ) -> None:
        super().__init__(message)
        if http_status is not None:
            self.http_status = http_status
        if grpc_code is not None:
            self.grpc_code = grpc_code
        self.error_type = error_type
        self.index = index
        self.item_id = item_id
        self.retry_after_s = retry_after_s
        self.retryable = retryable

    def shifted(self, offset: int) -> RemoteError:
        """The same error with ``index`` counted in the whole input rather than in one chunk."""
        if self.index is None or offset == 0:
            return self
        return RemoteError(
            self.message,
            http_status=self.http_status,
            grpc_code=self.grpc_code,
            error_type=self.error_type,
            index=self.index + offset,
            item_id=self.item_id,
            retry_after_s=self.retry_after_s,
            retryable=self.retryable,
        )


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter; a server-given Retry-After replaces the computed delay."""

    max_attempts: int = 6
    backoff_s: float = 0.25
    max_backoff_s: float = 20.0

    def delay(self, attempt: int, retry_after_s: float | None) -> float:
        if retry_after_s is not None:
            return max(0.0, retry_after_s)
        return min(self.max_backoff_s, self.backoff_s * 2**attempt) * random.uniform(0.5, 1.0)


@dataclass
class EmbedResult:
    """One answer for the whole input, in input order."""

    model: str
    model_version: str
    output: str
    dim: int
    per_residue: bool
    model_variant: str = ""  # empty from servers older than the field
    ids: list[str | None] = field(default_factory=list)
    embeddings: list[np.ndarray] = field(default_factory=list)
    cached: list[bool] = field(default_factory=list)
    windows: list[int] = field(default_factory=list)  # model windows per item (over 1: chunked)
    truncated: list[bool] = field(default_factory=list)  # only the first max_length residues embedded

    def array(self) -> np.ndarray | list[np.ndarray]:
        """[n, dim] float32 per protein; a list of [length, dim] arrays per residue."""
        if self.per_residue:
            return list(self.embeddings)
        if not self.embeddings:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack(self.embeddings).astype(np.float32, copy=False)

    def extend(self, other: EmbedResult) -> None:
        self.ids.extend(other.ids)
        self.embeddings.extend(other.embeddings)
        self.cached.extend(other.cached)
        self.windows.extend(other.windows)
        self.truncated.extend(other.truncated)


@dataclass(frozen=True)
class _Options:
    output: str | None
    per_residue: bool
    normalize: bool
    long_sequences: str | None = None  # chunk, truncate or reject; None: the server's setting
    priority: str | None = None  # interactive (the server's default) or bulk


# --- chunking ----------------------------------------------------------------------------------------


def split_chunks(lengths: Sequence[int], max_items: int, max_residues: int) -> list[tuple[int, int]]:
    """[start, stop) ranges of consecutive items, each within both bounds (a single item over the residue
    bound gets a chunk of its own: the server decides whether it is too long)."""
    # The server re-batches what it receives, so a request's bound is its plain residue count (unpadded).
    budget = Budget(max_residues, max_items, padded=False)
    return ranges(pack(range(len(lengths)), budget, lengths.__getitem__))


# --- wire formats ------------------------------------------------------------------------------------


def _rest_body(sequences: Sequence[str], ids: Sequence[str | None], opts: _Options) -> dict[str, Any]:
    items: list[Any] = [
        s if i is None else {"id": i, "sequence": s} for s, i in zip(sequences, ids, strict=True)
    ]
    body: dict[str, Any] = {
        "sequences": items,
        "per_residue": opts.per_residue,
        "normalize": opts.normalize,
        "encoding": "base64",
    }
    if opts.output:
        body["output"] = opts.output
    if opts.long_sequences:
        body["long_sequences"] = opts.long_sequences
    if opts.priority:
        body["priority"] = opts.priority
    return body


def _decode_vector(value: Any, dim: int, per_residue: bool) -> np.ndarray:
    if isinstance(value, str):
        arr = np.frombuffer(base64.b64decode(value), dtype="<f4").astype(np.float32)
    else:
        arr = np.asarray(value, dtype=np.float32)
    return arr.reshape(-1, dim) if per_residue else arr.reshape(dim)


def _parse_rest(payload: dict[str, Any], per_residue: bool) -> EmbedResult:
    dim = int(payload["dim"])
    pr = bool(payload.get("per_residue", per_residue))
    result = EmbedResult(
        model=str(payload["model"]),
        model_version=str(payload.get("model_version", "")),
        output=str(payload.get("output", "")),
        dim=dim,
        per_residue=pr,
        model_variant=str(payload.get("model_variant", "")),
    )
    for item in sorted(payload["data"], key=lambda d: int(d["index"])):
        result.ids.append(item.get("id"))
        result.embeddings.append(_decode_vector(item["embedding"], dim, pr))
        result.cached.append(bool(item.get("cached", False)))
        result.windows.append(int(item.get("windows", 1)))  # absent from servers older than the field
        result.truncated.append(bool(item.get("truncated", False)))
    return result


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        return None  # an HTTP-date: rare for APIs; fall back to our own backoff


def _rest_error(status: int, headers: Any, text: str) -> RemoteError:
    error_type, message, index, item_id = "http_error", text.strip() or f"HTTP {status}", None, None
    try:
        payload = json.loads(text)
    except ValueError:
        payload = None
    if isinstance(payload, dict):
        err = payload.get("error", payload.get("detail", payload))
        if isinstance(err, dict):
            error_type = str(err.get("type", error_type))
            message = str(err.get("message", message))
            index = err.get("index") if isinstance(err.get("index"), int) else None
            item_id = err.get("id") if isinstance(err.get("id"), str) else None
        elif isinstance(err, str):
            message = err
    if index is None and error_type in ("invalid_sequence", "sequence_too_long"):
        found = _ITEM_IN_MESSAGE.match(message)  # the message always names the item: "item 3 ..."
        index = int(found.group(1)) if found else None
    return RemoteError(
        f"HTTP {status}: {message}",
        http_status=status,
        error_type=error_type,
        index=index,
        item_id=item_id,
        retry_after_s=_retry_after(headers.get("retry-after")),
        retryable=status in _RETRY_HTTP,
    )


def _grpc_request(sequences: Sequence[str], ids: Sequence[str | None], opts: _Options) -> Any:
    from protembed.proto import embedder_pb2 as pb

    return pb.EmbedRequest(
        sequences=[pb.Sequence(id=i or "", sequence=s) for s, i in zip(sequences, ids, strict=True)],
        options=pb.EmbedOptions(
            output=opts.output or "",
            per_residue=opts.per_residue,
            normalize=opts.normalize,
            long_sequences=opts.long_sequences or "",
            priority=opts.priority or "",
        ),
    )


def parse_grpc_response(response: Any) -> EmbedResult:
    """An ``EmbedResponse`` message as an :class:`EmbedResult` (also used for stream responses)."""
    result = EmbedResult(
        model=response.model,
        model_version=response.model_version,
        output=response.output,
        dim=response.dim,
        per_residue=response.per_residue,
        model_variant=response.model_variant,
    )
    for e in sorted(response.embeddings, key=lambda e: e.index):
        result.ids.append(e.id or None)
        result.embeddings.append(
            np.frombuffer(e.vector, dtype="<f4").astype(np.float32).reshape(tuple(e.shape))
        )
        result.cached.append(e.cached)
        result.windows.append(e.windows or 1)  # 0 (unset) from servers older than the field
        result.truncated.append(e.truncated)
    return result


def _iter_embeddings(response: Any) -> Iterator[tuple[str, np.ndarray]]:
    parsed = parse_grpc_response(response)
    for rid, vector in zip(parsed.ids, parsed.embeddings, strict=True):
        yield rid or "", vector


async def _aiter(items: Iterable[T] | AsyncIterable[T]) -> AsyncIterator[T]:
    if isinstance(items, AsyncIterable):
        async for item in items:
            yield item
    else:
        for item in items:
            yield item


def _grpc_error(err: Any) -> RemoteError:
    """A grpc.RpcError (sync or aio) as a RemoteError, using the metadata our server attaches."""
    code = err.code().name if err.code() is not None else "UNKNOWN"
    details = err.details() or code
    trailing = {k: v for k, v in (err.trailing_metadata() or ())}
    index_raw = trailing.get("protembed-error-index")
    too_big = code == "RESOURCE_EXHAUSTED" and "larger than max" in details  # a message size limit, not load
    return RemoteError(
        f"{code}: {details}",
        grpc_code=code,
        error_type=str(trailing.get("protembed-error-type", code.lower())),
        index=int(index_raw) if index_raw not in (None, "") else None,
        retry_after_s=_retry_after(trailing.get("retry-after")),
        retryable=code in _RETRY_GRPC and not too_big,
    )


def _grpc_target(url: str) -> tuple[str, bool]:
    parts = urlsplit(url)
    if not parts.hostname or not parts.port:
        raise ValueError(f"{url!r}: a gRPC URL needs a host and a port, e.g. grpc://localhost:50051")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{host}:{parts.port}", parts.scheme == "grpcs"


def _transport_of(url: str) -> str:
    scheme = urlsplit(url).scheme
    if scheme in ("http", "https"):
        return "rest"
    if scheme in ("grpc", "grpcs"):
        return "grpc"
    raise ValueError(f"{url!r}: use an http://, https://, grpc:// or grpcs:// URL")


def _auth_headers(api_key: str | None) -> dict[str, str]:
    return {"authorization": f"Bearer {api_key}"} if api_key else {}


def _grpc_options(max_message_bytes: int) -> list[tuple[str, int]]:
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
    ]


def _info_from_grpc(response: Any) -> dict[str, Any]:
    info: dict[str, Any] = json.loads(response.info_json) if response.info_json else {}
    info.setdefault("model", response.model)
    info.setdefault("model_version", response.model_version)
    info.setdefault("provider", response.provider)
    return info


# --- shared client logic -----------------------------------------------------------------------------


class _ClientBase:
    def __init__(
        self,
        url: str,
        *,
        api_key: str | None = None,
        timeout: float = 60.0,
        retry: RetryPolicy | None = None,
        max_items_per_request: int = 256,
        max_residues_per_request: int = 65536,
        per_residue_residues_per_request: int = 4096,
        grpc_max_message_bytes: int = 64 * 2**20,
    ) -> None:
        self.url = url.rstrip("/")
        self.transport = _transport_of(url)
        self.api_key = api_key
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self.max_items_per_request = max_items_per_request
        self.max_residues_per_request = max_residues_per_request
        self.per_residue_residues_per_request = per_residue_residues_per_request
        self.grpc_max_message_bytes = grpc_max_message_bytes
        self._http: Any = None
        self._channel: Any = None
        self._stub: Any = None

    def _open_grpc(self, channels: Any) -> None:
        """Open the channel and stub; ``channels`` is ``grpc`` or ``grpc.aio`` (same factory names)."""
        import grpc

        from protembed.proto import embedder_pb2_grpc

        target, secure = _grpc_target(self.url)
        options = _grpc_options(self.grpc_max_message_bytes)
        self._channel = (
            channels.secure_channel(target, grpc.ssl_channel_credentials(), options=options)
            if secure
            else channels.insecure_channel(target, options=options)
        )
        self._stub = embedder_pb2_grpc.EmbedderStub(self._channel)

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return tuple(_auth_headers(self.api_key).items())

    def _retry_delay(self, attempt: int, err: RemoteError) -> float:
        """Seconds to wait before the next attempt; re-raises ``err`` when it must not be retried."""
        if not err.retryable or attempt + 1 >= self.retry.max_attempts:
            raise err
        return self.retry.delay(attempt, err.retry_after_s)

    def _unreachable(self, err: Exception) -> RemoteError:
        return RemoteError(f"cannot reach {self.url}: {err}", error_type="unavailable", retryable=True)

    @staticmethod
    def _checked(r: Any) -> Any:
        """An httpx response that must be 200: its parsed JSON body, else the server's error raised."""
        if r.status_code != 200:
            raise _rest_error(r.status_code, r.headers, r.text)
        return r.json()

    def _prepare(
        self, sequences: Sequence[str] | str, ids: Sequence[str | None] | None, per_residue: bool
    ) -> tuple[list[str], list[str | None], list[tuple[int, int]]]:
        if isinstance(sequences, str):
            raise TypeError("embed() takes a list of sequences; wrap a single one in a list")
        seqs = list(sequences)
        id_list: list[str | None] = list(ids) if ids is not None else [None] * len(seqs)
        if len(id_list) != len(seqs):
            raise ValueError(f"got {len(seqs)} sequences but {len(id_list)} ids")
        limit = self.per_residue_residues_per_request if per_residue else self.max_residues_per_request
        chunks = split_chunks([len(s) for s in seqs], self.max_items_per_request, limit)
        return seqs, id_list, chunks

    @staticmethod
    def _merge(parts: list[EmbedResult], opts: _Options) -> EmbedResult:
        if not parts:
            return EmbedResult(
                model="", model_version="", output=opts.output or "", dim=0, per_residue=opts.per_residue
            )
        merged = EmbedResult(
            model=parts[0].model,
            model_version=parts[0].model_version,
            output=parts[0].output,
            dim=parts[0].dim,
            per_residue=parts[0].per_residue,
            # replicas behind one address may serve different files (CPU and GPU nodes under auto)
            model_variant=",".join(sorted({p.model_variant for p in parts})),
        )
        for part in parts:
            merged.extend(part)
        return merged


class Client(_ClientBase):
    """Blocking client; ``Client("http://host:8000")`` for REST, ``Client("grpc://host:50051")`` for gRPC."""

    def __init__(self, url: str, **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        if self.transport == "rest":
            import httpx

            self._http = httpx.Client(
                base_url=self.url, timeout=self.timeout, headers=_auth_headers(self.api_key)
            )
        else:
            import grpc

            self._open_grpc(grpc)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._http is not None:
            self._http.close()
        if self._channel is not None:
            self._channel.close()

    def _with_retry(self, call: Callable[[], T]) -> T:
        for attempt in range(self.retry.max_attempts):
            try:
                return call()
            except RemoteError as err:
                time.sleep(self._retry_delay(attempt, err))
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _call_once(self, seqs: Sequence[str], ids: Sequence[str | None], opts: _Options) -> EmbedResult:
        if self._http is not None:
            import httpx

            try:
                r = self._http.post("/embed", json=_rest_body(seqs, ids, opts))
            except httpx.TransportError as err:
                raise self._unreachable(err) from err
            return _parse_rest(self._checked(r), opts.per_residue)
        import grpc

        try:
            response = self._stub.Embed(
                _grpc_request(seqs, ids, opts), timeout=self.timeout, metadata=self.metadata
            )
        except grpc.RpcError as err:
            raise _grpc_error(err) from None
        return parse_grpc_response(response)

    def embed_result(
        self,
        sequences: Sequence[str],
        ids: Sequence[str | None] | None = None,
        output: str | None = None,
        per_residue: bool = False,
        normalize: bool = False,
        *,
        long_sequences: str | None = None,
        priority: str | None = None,
    ) -> EmbedResult:
        """Embed everything, chunk by chunk, and return vectors with the model's metadata.
        ``long_sequences`` (chunk, truncate or reject) overrides the server's setting for this call;
        ``priority='bulk'`` lets interactive users of the same server go first."""
        opts = _Options(output, per_residue, normalize, long_sequences, priority)
        seqs, id_list, chunks = self._prepare(sequences, ids, per_residue)
        parts = []
        for start, stop in chunks:
            chunk_seqs, chunk_ids = seqs[start:stop], id_list[start:stop]
            try:
                parts.append(
                    self._with_retry(functools.partial(self._call_once, chunk_seqs, chunk_ids, opts))
                )
            except RemoteError as err:
                raise err.shifted(start) from None
        return self._merge(parts, opts)

    def embed(
        self,
        sequences: Sequence[str],
        ids: Sequence[str | None] | None = None,
        output: str | None = None,
        per_residue: bool = False,
        normalize: bool = False,
        *,
        long_sequences: str | None = None,
        priority: str | None = None,
    ) -> np.ndarray | list[np.ndarray]:
        """[n, dim] float32 per protein, or a list of [length, dim] arrays with ``per_residue``."""
        return self.embed_result(
            sequences, ids, output, per_residue, normalize, long_sequences=long_sequences, priority=priority
        ).array()

    def info(self) -> dict[str, Any]:
        if self._http is not None:

            def get() -> dict[str, Any]:
                return dict(self._checked(self._http.get("/info")))

            return self._with_retry(get)
        import grpc

        from protembed.proto import embedder_pb2 as pb

        def call() -> dict[str, Any]:
            try:
                response = self._stub.Info(pb.InfoRequest(), timeout=self.timeout, metadata=self.metadata)
            except grpc.RpcError as err:
                raise _grpc_error(err) from None
            return _info_from_grpc(response)

        return self._with_retry(call)


class AsyncClient(_ClientBase):
    """asyncio client with the same interface; sends up to ``concurrency`` chunks at once."""

    def __init__(self, url: str, *, concurrency: int = 4, **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        self.concurrency = max(1, concurrency)
        if self.transport == "rest":
            import httpx

            self._http = httpx.AsyncClient(
                base_url=self.url, timeout=self.timeout, headers=_auth_headers(self.api_key)
            )
        else:
            import grpc.aio

            self._open_grpc(grpc.aio)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._http is not None:
            await self._http.aclose()
        if self._channel is not None:
            await self._channel.close()

    @property
    def stub(self) -> Any:
        """The gRPC ``EmbedderStub`` (gRPC URLs only), e.g. for ``EmbedStream``."""
        if self._stub is None:
            raise ValueError("stub is only available for grpc:// URLs")
        return self._stub

    async def _with_retry(self, call: Callable[[], Awaitable[T]]) -> T:
        for attempt in range(self.retry.max_attempts):
            try:
                return await call()
            except RemoteError as err:
                await asyncio.sleep(self._retry_delay(attempt, err))
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def _call_once(self, seqs: Sequence[str], ids: Sequence[str | None], opts: _Options) -> EmbedResult:
        if self._http is not None:
            import httpx

            try:
                r = await self._http.post("/embed", json=_rest_body(seqs, ids, opts))
            except httpx.TransportError as err:
                raise self._unreachable(err) from err
            return _parse_rest(self._checked(r), opts.per_residue)
        import grpc

        try:
            response = await self._stub.Embed(
                _grpc_request(seqs, ids, opts), timeout=self.timeout, metadata=self.metadata
            )
        except grpc.RpcError as err:
            raise _grpc_error(err) from None
        return parse_grpc_response(response)

    async def embed_result(
        self,
        sequences: Sequence[str],
        ids: Sequence[str | None] | None = None,
        output: str | None = None,
        per_residue: bool = False,
        normalize: bool = False,
        *,
        long_sequences: str | None = None,
        priority: str | None = None,
    ) -> EmbedResult:
        opts = _Options(output, per_residue, normalize, long_sequences, priority)
        seqs, id_list, chunks = self._prepare(sequences, ids, per_residue)
        gate = asyncio.Semaphore(self.concurrency)

        async def one(start: int, stop: int) -> EmbedResult:
            async with gate:
                try:
                    return await self._with_retry(
                        lambda: self._call_once(seqs[start:stop], id_list[start:stop], opts)
                    )
                except RemoteError as err:
                    raise err.shifted(start) from None

        tasks = [asyncio.ensure_future(one(a, b)) for a, b in chunks]
        try:
            parts = await asyncio.gather(*tasks)
        finally:  # one chunk failed (or we were cancelled): do not leave the others running
            for task in tasks:
                task.cancel()
        return self._merge(list(parts), opts)

    async def embed(
        self,
        sequences: Sequence[str],
        ids: Sequence[str | None] | None = None,
        output: str | None = None,
        per_residue: bool = False,
        normalize: bool = False,
        *,
        long_sequences: str | None = None,
        priority: str | None = None,
    ) -> np.ndarray | list[np.ndarray]:
        result = await self.embed_result(
            sequences, ids, output, per_residue, normalize, long_sequences=long_sequences, priority=priority
        )
        return result.array()

    async def embed_stream(
        self,
        items: Iterable[tuple[str, str]] | AsyncIterable[tuple[str, str]],
        *,
        per_request: int = 64,
        output: str | None = None,
        per_residue: bool = False,
        normalize: bool = False,
    ) -> AsyncIterator[tuple[str, np.ndarray]]:
        """Embed ``(id, sequence)`` pairs over one gRPC ``EmbedStream`` and yield ``(id, vector)`` in
        input order, reading the input lazily (the server's flow control paces it). A bad item raises
        :class:`RemoteError` with its index in the whole input; nothing is retried inside a stream."""
        import grpc

        from protembed.proto import embedder_pb2 as pb

        if self._stub is None:
            raise ValueError("embed_stream needs a grpc:// URL")
        options = pb.EmbedOptions(output=output or "", per_residue=per_residue, normalize=normalize)
        starts: dict[str, int] = {}

        async def requests() -> AsyncIterator[Any]:
            batch: list[tuple[str, str]] = []
            sent = 0

            def message() -> Any:
                request_id = str(len(starts))
                starts[request_id] = sent
                return pb.EmbedStreamRequest(
                    request_id=request_id,
                    sequences=[pb.Sequence(id=i, sequence=s) for i, s in batch],
                    options=options,
                )

            async for pair in _aiter(items):
                batch.append(pair)
                if len(batch) >= per_request:
                    yield message()
                    sent += len(batch)
                    batch = []
            if batch:
                yield message()

        call = self._stub.EmbedStream(requests(), metadata=self.metadata)
        try:
            async for response in call:
                if response.WhichOneof("result") == "error":
                    e = response.error
                    raise RemoteError(
                        f"{e.code}: {e.message}",
                        grpc_code=e.code,
                        error_type=e.type,
                        index=starts[response.request_id] + e.index if e.index >= 0 else None,
                    )
                for vector_result in _iter_embeddings(response.response):
                    yield vector_result
        except grpc.RpcError as err:
            raise _grpc_error(err) from None
        finally:
            call.cancel()

    async def info(self) -> dict[str, Any]:
        if self._http is not None:

            async def get() -> dict[str, Any]:
                return dict(self._checked(await self._http.get("/info")))

            return await self._with_retry(get)
        import grpc

        from protembed.proto import embedder_pb2 as pb

        async def call() -> dict[str, Any]:
            try:
                response = await self._stub.Info(
                    pb.InfoRequest(), timeout=self.timeout, metadata=self.metadata
                )
            except grpc.RpcError as err:
                raise _grpc_error(err) from None
            return _info_from_grpc(response)

        return await self._with_retry(call)
