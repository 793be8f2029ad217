"""protembed.client against a real server, and against small real proxies that refuse first."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
import grpc.aio
import httpx
import numpy as np
import pytest
from protembed_testing import corpus_sequences

from protembed.client import AsyncClient, Client, RemoteError, RetryPolicy, split_chunks
from protembed.proto import embedder_pb2_grpc as pb_grpc

FAST_RETRY = RetryPolicy(max_attempts=4, backoff_s=0.05, max_backoff_s=0.2)


def test_split_chunks_respects_both_bounds() -> None:
    assert split_chunks([5, 5, 5, 5, 5], max_items=2, max_residues=100) == [(0, 2), (2, 4), (4, 5)]
    assert split_chunks([40, 40, 40, 10], max_items=10, max_residues=90) == [(0, 2), (2, 4)]
    # an item over the residue bound travels alone; the server decides about it
    assert split_chunks([10, 500, 10], max_items=10, max_residues=100) == [(0, 1), (1, 2), (2, 3)]
    assert split_chunks([], max_items=3, max_residues=10) == []


@pytest.fixture(params=["rest", "grpc"])
def url(request: pytest.FixtureRequest, server: Any) -> str:
    return str(server.http_url if request.param == "rest" else server.grpc_url)


def test_chunked_requests_give_the_same_vectors_in_order(url: str) -> None:
    records = corpus_sequences(30, max_length=50)
    seqs, ids = [r[2] for r in records], [r[0] for r in records]
    with Client(url) as whole, Client(url, max_items_per_request=7, max_residues_per_request=120) as chunked:
        a = whole.embed_result(seqs, ids=ids)
        b = chunked.embed_result(seqs, ids=ids)
        per_residue = chunked.embed(seqs[:9], per_residue=True)
    assert b.ids == ids
    assert np.array_equal(a.array(), b.array())
    assert isinstance(per_residue, list) and [v.shape for v in per_residue] == [(len(s), 8) for s in seqs[:9]]


def test_errors_name_the_item_in_the_whole_input(url: str) -> None:
    seqs = ["MKV"] * 10 + ["MKXB9"] + ["MKV"]
    with Client(url, max_items_per_request=4) as client, pytest.raises(RemoteError) as caught:
        client.embed(seqs)
    err = caught.value
    assert err.index == 10 and err.error_type == "invalid_sequence" and not err.retryable
    assert "'9'" in err.message


async def test_async_client_matches_sync_client(url: str) -> None:
    seqs = [r[2] for r in corpus_sequences(25, max_length=40)]
    with Client(url) as sync_client:
        expected = sync_client.embed(seqs)
    async with AsyncClient(url, max_items_per_request=4, concurrency=3) as client:
        got = await client.embed(seqs)
        info = await client.info()
    assert np.array_equal(np.asarray(got), np.asarray(expected))
    assert info["default_output"] == "student"


class _RefusingProxy:
    """A real HTTP server that answers the first ``refuse`` POSTs with 429 + Retry-After, then forwards
    everything to the real server."""

    def __init__(self, upstream: str, refuse: int, retry_after: str) -> None:
        self.posts = 0
        self.times: list[float] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                proxy.posts += 1
                proxy.times.append(time.monotonic())
                if proxy.posts <= refuse:
                    error = b'{"error": {"type": "overloaded", "message": "queue full"}}'
                    self._send(429, error, {"retry-after": retry_after, "content-type": "application/json"})
                    return
                r = httpx.post(
                    upstream + self.path, content=body, headers={"content-type": "application/json"}
                )
                self._send(r.status_code, r.content, {"content-type": "application/json"})

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def refusing_proxy(server: Any, request: pytest.FixtureRequest) -> Iterator[_RefusingProxy]:
    refuse, retry_after = request.param
    proxy = _RefusingProxy(server.http_url, refuse, retry_after)
    yield proxy
    proxy.close()


@pytest.mark.parametrize("refusing_proxy", [(2, "1")], indirect=True)
def test_rest_client_retries_429_honouring_retry_after(refusing_proxy: _RefusingProxy, server: Any) -> None:
    seqs = ["MKTAYIAKQR", "MSVLTPLLLR"]
    with Client(refusing_proxy.url, retry=FAST_RETRY) as client:
        got = client.embed(seqs)
    with Client(server.http_url) as direct:
        expected = direct.embed(seqs)
    assert refusing_proxy.posts == 3
    gaps = np.diff(refusing_proxy.times)
    assert (gaps >= 0.95).all(), gaps  # waited the server's 1 s, not the 0.05 s backoff
    assert np.array_equal(np.asarray(got), np.asarray(expected))


@pytest.mark.parametrize("refusing_proxy", [(100, "0")], indirect=True)
def test_rest_client_gives_up_after_max_attempts(refusing_proxy: _RefusingProxy) -> None:
    with Client(refusing_proxy.url, retry=FAST_RETRY) as client, pytest.raises(RemoteError) as caught:
        client.embed(["MKV"])
    assert caught.value.http_status == 429 and caught.value.retryable
    assert refusing_proxy.posts == FAST_RETRY.max_attempts


class _RefusingGrpcProxy(pb_grpc.EmbedderServicer):
    """A real gRPC server refusing the first calls (RESOURCE_EXHAUSTED with retry-after, then
    UNAVAILABLE without), then forwarding to the real server."""

    def __init__(self, upstream: str) -> None:
        self.calls = 0
        self.times: list[float] = []
        self.upstream = upstream

    async def Embed(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        self.calls += 1
        self.times.append(time.monotonic())
        if self.calls == 1:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "queue full", (("retry-after", "0.5"),))
        if self.calls == 2:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "not ready")
        async with grpc.aio.insecure_channel(self.upstream) as channel:
            return await pb_grpc.EmbedderStub(channel).Embed(request)


async def test_grpc_client_retries_resource_exhausted_and_unavailable(server: Any) -> None:
    proxy = _RefusingGrpcProxy(f"127.0.0.1:{server.settings.grpc_port}")
    grpc_server = grpc.aio.server()
    pb_grpc.add_EmbedderServicer_to_server(proxy, grpc_server)
    port = grpc_server.add_insecure_port("127.0.0.1:0")
    await grpc_server.start()
    try:
        async with AsyncClient(f"grpc://127.0.0.1:{port}", retry=FAST_RETRY) as client:
            got = await client.embed(["MKTAYIAKQR"])
    finally:
        await grpc_server.stop(None)
    async with AsyncClient(server.grpc_url) as direct:
        expected = await direct.embed(["MKTAYIAKQR"])
    assert proxy.calls == 3
    assert proxy.times[1] - proxy.times[0] >= 0.45  # honoured retry-after 0.5
    assert proxy.times[2] - proxy.times[1] < 0.45  # plain backoff (0.05 s scale) without one
    assert np.array_equal(np.asarray(got), np.asarray(expected))


def test_client_rejects_bad_arguments(server: Any) -> None:
    with pytest.raises(ValueError, match="URL"):
        Client("ftp://example.org")
    with Client(server.http_url) as client:
        with pytest.raises(TypeError, match="list of sequences"):
            client.embed("MKV")
        with pytest.raises(ValueError, match="2 sequences but 1 ids"):
            client.embed(["MKV", "MKW"], ids=["a"])


async def test_async_grpc_stream_yields_every_id_in_input_order(server: Any) -> None:
    records = corpus_sequences(500, max_length=30, skip=200)
    pairs = [(f"{n}", seq) for n, (_, _, seq) in enumerate(records)]
    async with AsyncClient(server.grpc_url) as client:
        streamed = [pair async for pair in client.embed_stream(iter(pairs), per_request=37)]
        expected = await client.embed([s for _, s in pairs])
        bad = [*pairs[:50], ("bad", "MK*V")]
        with pytest.raises(RemoteError) as caught:
            _ = [pair async for pair in client.embed_stream(bad, per_request=20)]
    assert [i for i, _ in streamed] == [i for i, _ in pairs]
    assert np.array_equal(np.stack([v for _, v in streamed]), np.asarray(expected))
    assert caught.value.index == 50 and caught.value.error_type == "invalid_sequence"
    async with AsyncClient(server.http_url) as rest_async:
        with pytest.raises(ValueError, match="grpc://"):
            _ = [pair async for pair in rest_async.embed_stream(pairs)]
