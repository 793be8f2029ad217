"""Deadlines, cancellation and health against a real server whose batcher holds items for 1.5 s
(max_wait_ms=1500: a lone small request waits that long for its batch to fill), so a call can expire
or be cancelled while its items are still queued — and must then never reach the model."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from protembed_testing import make_settings, running_server

from protembed.proto import embedder_pb2 as pb
from protembed.proto import embedder_pb2_grpc as pb_grpc

HOLD_S = 1.5


@pytest.fixture(scope="module")
def slow_server(tiny_model_dir: Path) -> Iterator[Any]:
    yield from running_server(make_settings(tiny_model_dir, max_wait_ms=HOLD_S * 1000, warmup=False))


def _sample(server: Any, name: str, **labels: str) -> float:
    value = server.engine.metrics.registry.get_sample_value(name, labels or None)
    return float(value or 0.0)


def _batches(server: Any) -> float:
    return _sample(server, "protembed_batch_size_count")


def _dropped(server: Any) -> float:
    return sum(
        _sample(server, "protembed_dropped_items_total", reason=r)
        for r in ("deadline", "cancelled", "abandoned")
    )


async def test_deadline_drops_queued_items_before_the_model(slow_server: Any) -> None:
    batches, dropped = _batches(slow_server), _dropped(slow_server)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{slow_server.settings.grpc_port}") as channel:
        stub = pb_grpc.EmbedderStub(channel)
        request = pb.EmbedRequest(sequences=[pb.Sequence(id="late", sequence="MKTAYIAKQRQISFVK")])
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Embed(request, timeout=0.3)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    await asyncio.sleep(HOLD_S + 0.3)  # past the moment the batch would have run
    assert _dropped(slow_server) == dropped + 1
    assert _batches(slow_server) == batches  # the model never saw it


async def test_cancelled_call_drops_queued_items_before_the_model(slow_server: Any) -> None:
    batches, dropped = _batches(slow_server), _dropped(slow_server)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{slow_server.settings.grpc_port}") as channel:
        stub = pb_grpc.EmbedderStub(channel)
        call = stub.Embed(pb.EmbedRequest(sequences=[pb.Sequence(sequence="MKVLAAGIVGLLLA")]))
        await asyncio.sleep(0.3)
        assert call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
    await asyncio.sleep(HOLD_S + 0.3)
    assert _dropped(slow_server) == dropped + 1
    assert _batches(slow_server) == batches


async def test_a_call_within_its_deadline_is_answered(slow_server: Any) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{slow_server.settings.grpc_port}") as channel:
        stub = pb_grpc.EmbedderStub(channel)
        start = time.monotonic()
        response = await stub.Embed(pb.EmbedRequest(sequences=[pb.Sequence(sequence="MKVW")]), timeout=10)
    assert response.dim == 8 and time.monotonic() - start >= HOLD_S * 0.9  # it did wait for its batch


async def _status(stub: Any, service: str) -> int:
    return int((await stub.Check(health_pb2.HealthCheckRequest(service=service))).status)


async def _wait_for(stub: Any, want: int, timeout: float = 5.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while True:
        got = [await _status(stub, s) for s in ("", "protembed.v1.Embedder")]
        if all(g == want for g in got) or time.monotonic() > deadline:
            return got
        await asyncio.sleep(0.05)


async def test_health_follows_engine_readiness(slow_server: Any) -> None:
    serving, not_serving = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
    async with grpc.aio.insecure_channel(f"127.0.0.1:{slow_server.settings.grpc_port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        stub = pb_grpc.EmbedderStub(channel)
        assert await _wait_for(health, serving) == [serving, serving]
        await asyncio.to_thread(slow_server.call, slow_server.engine.stop())
        try:
            assert await _wait_for(health, not_serving) == [not_serving, not_serving]
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.Embed(pb.EmbedRequest(sequences=[pb.Sequence(sequence="MKV")]))
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        finally:
            await asyncio.to_thread(slow_server.call, slow_server.engine.start())
        assert await _wait_for(health, serving) == [serving, serving]
