"""The benchmark's clients: a minimal asyncio HTTP/1.1 client, a blocking one for single timed requests,
httpx and gRPC, each wrapped as a :data:`Call` (send one sequence, say whether it was a cache hit)."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

if TYPE_CHECKING:
    from protembed_bench.serve.config import ServeBenchConfig
    from protembed_bench.serve.server import ServerProcess

T = TypeVar("T")


def run_client(coro: Awaitable[T]) -> T:
    """Run a client coroutine on uvloop when it is installed (uvicorn[standard] brings it): the stock
    asyncio loop's own per-request cost was a visible share of a cache hit's measured latency, and the
    benchmark is meant to time the server, not its client."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)  # type: ignore[arg-type]
    return uvloop.run(coro)  # type: ignore[arg-type]


Call = Callable[[str], Awaitable[bool]]  # send one sequence; True if it was answered from the cache


class RawHttpClient:
    """A minimal HTTP/1.1 keep-alive client (asyncio streams), one connection per request in flight.

    The benchmark must measure the server, not the client: httpx's async connection pool saturated
    first here (about 120 requests/s at 64 in flight against a server that answered about 1,400/s to
    this client on the same machine). Only what servers send here is understood: a status line, headers
    and a Content-Length or chunked body (protembed streams answers over 1 MiB; Ray Serve's proxy
    streams every answer).
    """

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def post_json(self, path: str, payload: object) -> tuple[int, bytes]:
        conn = self._idle.pop() if self._idle else await asyncio.open_connection(self.host, self.port)
        reader, writer = conn
        try:
            body = json.dumps(payload).encode()
            writer.write(
                f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n".encode("ascii")
                + body
            )
            await writer.drain()
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            status = int(head[0].split()[1])
            headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in head[1:] if h)}
            if "content-length" in headers:
                data = await reader.readexactly(int(headers["content-length"]))
            elif headers.get("transfer-encoding", "").lower() == "chunked":
                data = await read_chunked(reader)
            else:
                raise RuntimeError(f"HTTP {status} response with neither Content-Length nor chunked body")
        except BaseException:
            writer.close()
            raise
        if headers.get("connection", "").lower() == "close":
            writer.close()
        else:
            self._idle.append(conn)
        return status, data

    async def aclose(self) -> None:
        for _, writer in self._idle:
            writer.close()
        self._idle.clear()


class BlockingHttpClient:
    """One keep-alive HTTP/1.1 connection on a plain blocking socket, for one request at a time.

    The cache phase times single requests, and a client's own cost lands on both sides of the hit/miss
    ratio: an asyncio client (even on uvloop) added about 0.08 ms to each request here, a quarter of a
    cache hit, and none of it is the server's. Understands what this server sends: a status line,
    headers and a Content-Length body."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.sock = socket.create_connection((host, port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.reader = self.sock.makefile("rb")

    def post_json(self, path: str, payload: object) -> tuple[int, bytes]:
        body = json.dumps(payload).encode()
        self.sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode("ascii")
            + body
        )
        status = int(self.reader.readline().split()[1])
        length = None
        while (line := self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if length is None:
            raise RuntimeError(f"HTTP {status} response without Content-Length; not supported here")
        return status, self.reader.read(length)

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


def check_http(status: int, body: bytes, encoding: str) -> bool:
    if status != 200:
        raise RuntimeError(f"HTTP {status}: {body[:200]!r}")
    item = json.loads(body)["data"][0]
    if encoding == "base64":
        base64.b64decode(item["embedding"])  # the client's real work: decode the vector
    return bool(item["cached"])


def http_call(client: Any, url: str, encoding: str) -> Call:
    """POST /embed with one sequence, through :class:`RawHttpClient` or an ``httpx.AsyncClient``."""

    async def call(seq: str) -> bool:
        payload = {"sequences": [seq], "encoding": encoding}
        if isinstance(client, RawHttpClient):
            return check_http(*await client.post_json("/embed", payload), encoding)
        resp = await client.post(url + "/embed", json=payload)
        return check_http(resp.status_code, resp.content, encoding)

    return call


def grpc_call(stub: Any, pb: Any) -> Call:
    async def call(seq: str) -> bool:
        resp = await stub.Embed(pb.EmbedRequest(sequences=[pb.Sequence(sequence=seq)]))
        emb = resp.embeddings[0]
        np.frombuffer(emb.vector, dtype="<f4")
        return bool(emb.cached)

    return call


async def with_transport(
    transport: str,
    server: ServerProcess,
    cfg: ServeBenchConfig,
    body: Callable[[Call], Awaitable[Any]],
    connections: int,
) -> Any:
    if transport == "http" and cfg.http_client == "raw":
        raw = RawHttpClient("127.0.0.1", server.port)
        try:
            return await body(http_call(raw, server.url, cfg.http_encoding))
        finally:
            await raw.aclose()
    if transport == "http":
        import httpx

        limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
        async with httpx.AsyncClient(limits=limits, timeout=120.0) as client:
            return await body(http_call(client, server.url, cfg.http_encoding))
    if transport == "grpc":
        import grpc

        from protembed.proto import embedder_pb2 as pb
        from protembed.proto import embedder_pb2_grpc as pb_grpc

        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
            return await body(grpc_call(pb_grpc.EmbedderStub(channel), pb))
    raise ValueError(f"unknown transport {transport!r}; known: http, grpc")


async def read_chunked(reader: asyncio.StreamReader) -> bytes:
    """A chunked body (RFC 9112 section 7.1): hex size lines, each chunk, a zero chunk, trailers."""
    parts: list[bytes] = []
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        if size == 0:
            while await reader.readuntil(b"\r\n") != b"\r\n":  # trailer fields, then the blank line
                pass
            return b"".join(parts)
        parts.append(await reader.readexactly(size))
        await reader.readexactly(2)  # the CRLF after each chunk
