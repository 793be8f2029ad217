"""The gRPC API against a real server (REST + gRPC in one process, one engine) on free ports."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from protembed_testing import corpus_sequences

from protembed.client import Client
from protembed.grpc.server import bound_port, start_grpc_server, stop_grpc_server
from protembed.proto import embedder_pb2 as pb
from protembed.proto import embedder_pb2_grpc as pb_grpc
from protembed.settings import Settings


def _vectors(response: Any) -> list[np.ndarray]:
    return [np.frombuffer(e.vector, "<f4").reshape(tuple(e.shape)) for e in response.embeddings]


def test_rest_and_grpc_give_identical_vectors(server: Any, tiny_model_dir: Path) -> None:
    records = corpus_sequences(40, max_length=60)
    seqs, ids = [r[2] for r in records], [r[0] for r in records]
    with Client(server.http_url) as rest, Client(server.grpc_url) as grpc_client:
        for kwargs in ({}, {"output": "alpha"}, {"normalize": True}):
            a = rest.embed(seqs, ids=ids, **kwargs)
            b = grpc_client.embed(seqs, ids=ids, **kwargs)
            assert isinstance(a, np.ndarray) and isinstance(b, np.ndarray)
            assert a.dtype == b.dtype == np.float32
            assert np.array_equal(a, b), kwargs
        ra = rest.embed(seqs[:5], per_residue=True)
        rb = grpc_client.embed(seqs[:5], per_residue=True)
        assert [x.shape for x in rb] == [(len(s), 8) for s in seqs[:5]]
        assert all(np.array_equal(x, y) for x, y in zip(ra, rb, strict=True))
        result = grpc_client.embed_result(seqs[:3], ids=ids[:3])
        plain = grpc_client.embed(seqs[:1])
    assert result.ids == ids[:3] and result.model == "protembed-tiny" and result.model_version == "0.0.1"
    assert result.model_variant == "int8"  # auto, on the CPU
    # and both equal the model run on each sequence alone (up to float summation order)
    from tiny_model import reference_embeddings  # tests/fixtures, on sys.path via tests/conftest.py

    ref = reference_embeddings(tiny_model_dir, seqs[0])["student"]
    np.testing.assert_allclose(plain[0], ref, atol=1e-5)


async def test_unary_fields_and_cached_flag(server: Any) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.settings.grpc_port}") as channel:
        stub = pb_grpc.EmbedderStub(channel)
        request = pb.EmbedRequest(
            sequences=[pb.Sequence(id="x", sequence="MKTAYIAKQRW"), pb.Sequence(sequence="mkv*")],
        )
        first = await stub.Embed(request)
        second = await stub.Embed(request)
        info = await stub.Info(pb.InfoRequest())
    assert first.model == "protembed-tiny" and first.dim == 8 and first.output == "student"
    assert [e.id for e in first.embeddings] == ["x", ""]
    assert [list(e.shape) for e in first.embeddings] == [[8], [8]]
    assert [e.length for e in first.embeddings] == [11, 3]
    assert first.usage.items == 2 and first.usage.residues == 14
    assert [e.cached for e in second.embeddings] == [True, True]
    assert np.array_equal(np.stack(_vectors(first)), np.stack(_vectors(second)))
    assert info.model == "protembed-tiny" and info.output_dims == {"student": 8, "alpha": 6, "beta": 3}
    assert info.max_length == 64 and json.loads(info.info_json)["limits"]["max_items_per_request"] == 256


@pytest.mark.parametrize(
    ("sequences", "options", "error_type", "index", "fragment"),
    [
        (
            ["MKV", "MK1V"],
            {},
            "invalid_sequence",
            "1",
            "item 1 (id 's1'): invalid character '1' at position 3",
        ),
        (["MKV", "M" * 65], {"long_sequences": "reject"}, "sequence_too_long", "1", "65 residues"),
        (["MKV"], {"output": "nope"}, "invalid_request", None, "unknown output 'nope'"),
        ([], {}, "invalid_request", None, "no sequences"),
    ],
)
async def test_bad_input_is_invalid_argument_naming_the_item(
    server: Any,
    sequences: list[str],
    options: dict[str, Any],
    error_type: str,
    index: str | None,
    fragment: str,
) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.settings.grpc_port}") as channel:
        stub = pb_grpc.EmbedderStub(channel)
        request = pb.EmbedRequest(
            sequences=[pb.Sequence(id=f"s{i}", sequence=s) for i, s in enumerate(sequences)],
            options=pb.EmbedOptions(**options),
        )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Embed(request)
    err = caught.value
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert fragment in (err.details() or "")
    trailing = dict(err.trailing_metadata() or ())
    assert trailing["protembed-error-type"] == error_type
    assert trailing.get("protembed-error-index") == index


async def _requests(
    batches: list[list[tuple[str, str]]], sent: list[str], options: pb.EmbedOptions | None = None
) -> AsyncIterator[pb.EmbedStreamRequest]:
    for n, batch in enumerate(batches):
        sent.append(f"r{n}")
        yield pb.EmbedStreamRequest(
            request_id=f"r{n}", sequences=[pb.Sequence(id=i, sequence=s) for i, s in batch], options=options
        )


async def test_stream_of_10000_sequences_answers_every_id_once_in_request_order(server: Any) -> None:
    rng = np.random.default_rng(3)
    records = corpus_sequences(10_000, max_length=24)
    items = [(f"{n}:{rid}", seq) for n, (rid, _, seq) in enumerate(records)]
    # Requests of very different sizes, so they finish out of order inside the server.
    batches, pos = [], 0
    while pos < len(items):
        size = int(rng.choice([1, 3, 50, 200]))
        batches.append(items[pos : pos + size])
        pos += size
    sent: list[str] = []
    received: list[str] = []
    answered: list[str] = []
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.settings.grpc_port}") as channel:
        stub = pb_grpc.EmbedderStub(channel)
        async for response in stub.EmbedStream(_requests(batches, sent), timeout=60):
            assert response.WhichOneof("result") == "response", response.error
            received.append(response.request_id)
            answered.extend(e.id for e in response.response.embeddings)
            assert all(len(e.vector) == 8 * 4 for e in response.response.embeddings)
    assert received == sent  # the documented guarantee: responses in request order
    assert len(answered) == len(items) == 10_000
    assert sorted(answered) == sorted(i for i, _ in items)


async def test_stream_reports_bad_requests_and_goes_on(server: Any) -> None:
    batches = [[("a", "MKV")], [("b", "MK-V"), ("c", "MKV")], [("d", "M" * 70)], [("e", "MKVL")]]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.settings.grpc_port}") as channel:
        stub = pb_grpc.EmbedderStub(channel)
        reject = pb.EmbedOptions(long_sequences="reject")
        responses = [r async for r in stub.EmbedStream(_requests(batches, [], reject))]
    assert [r.request_id for r in responses] == ["r0", "r1", "r2", "r3"]
    assert [r.WhichOneof("result") for r in responses] == ["response", "error", "error", "response"]
    assert responses[1].error.code == "INVALID_ARGUMENT" and responses[1].error.index == 0
    assert "gaps are not residues" in responses[1].error.message
    assert responses[2].error.type == "sequence_too_long"
    assert responses[3].response.embeddings[0].id == "e"


class _BoundedSettings(Settings):
    max_stream_in_flight: int = 8


async def _on_server_loop(server: Any, coro: Any) -> Any:
    return await asyncio.to_thread(server.call, coro)


async def test_stream_flow_control_bounds_items_in_flight(server: Any) -> None:
    """A second gRPC server on the same engine with max_stream_in_flight=8: the engine never holds
    more than 8 of this stream's sequences at once, however fast the client sends."""
    settings = _BoundedSettings(**{**server.settings.model_dump(), "max_stream_in_flight": 8})
    engine = server.engine
    grpc_server = await _on_server_loop(server, start_grpc_server(engine, settings, port=0))
    port = bound_port(grpc_server)
    real_embed = engine.embed
    state = {"now": 0, "peak": 0}

    async def spy(inputs: Any, options: Any, **kwargs: Any) -> Any:
        state["now"] += len(inputs)
        state["peak"] = max(state["peak"], state["now"])
        try:
            await asyncio.sleep(0.01)  # hold the items a moment, as a busy model would
            return await real_embed(inputs, options, **kwargs)
        finally:
            state["now"] -= len(inputs)

    engine.embed = spy
    try:
        batches = [[(f"{n}-{k}", "MKV" + "A" * (n % 7) + "W" * k) for k in range(3)] for n in range(60)]
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.EmbedderStub(channel)
            responses = [r async for r in stub.EmbedStream(_requests(batches, []))]
            info = await stub.Info(pb.InfoRequest())
    finally:
        del engine.embed
        await _on_server_loop(server, stop_grpc_server(grpc_server, grace=1))
    assert len(responses) == 60 and all(r.WhichOneof("result") == "response" for r in responses)
    assert info.max_stream_in_flight == 8
    assert 3 < state["peak"] <= 8  # concurrent (more than one request) yet bounded


async def test_call_deadline_and_cancellation_reach_the_engine(server: Any) -> None:
    engine = server.engine
    real_embed = engine.embed
    seen: dict[str, Any] = {}

    async def spy(inputs: Any, options: Any, *, deadline: Any = None, cancelled: Any = None) -> Any:
        seen.update(deadline=deadline, now=time.monotonic(), cancelled_now=cancelled())
        return await real_embed(inputs, options, deadline=deadline, cancelled=cancelled)

    engine.embed = spy
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.settings.grpc_port}") as channel:
            stub = pb_grpc.EmbedderStub(channel)
            await stub.Embed(pb.EmbedRequest(sequences=[pb.Sequence(sequence="MKV")]), timeout=30)
            with_deadline = dict(seen)
            await stub.Embed(pb.EmbedRequest(sequences=[pb.Sequence(sequence="MKV")]))
    finally:
        del engine.embed
    # grpc rounds the deadline on the wire (up to ~0.1 s late); the engine gets it on its own clock
    assert 29.0 < with_deadline["deadline"] - with_deadline["now"] <= 30.5, with_deadline
    assert with_deadline["cancelled_now"] is False
    assert seen["deadline"] is None


async def test_api_key_is_required_when_configured(server: Any) -> None:
    settings = Settings(**{**server.settings.model_dump(), "api_key": "s3cret"})
    grpc_server = await _on_server_loop(server, start_grpc_server(server.engine, settings, port=0))
    request = pb.EmbedRequest(sequences=[pb.Sequence(sequence="MKV")])
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{bound_port(grpc_server)}") as channel:
            stub = pb_grpc.EmbedderStub(channel)
            for metadata in [(), (("authorization", "Bearer wrong"),), (("x-api-key", "nope"),)]:
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await stub.Embed(request, metadata=metadata)
                assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.Info(pb.InfoRequest())
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
            ok1 = await stub.Embed(request, metadata=(("authorization", "Bearer s3cret"),))
            ok2 = await stub.Embed(request, metadata=(("x-api-key", "s3cret"),))
            assert ok1.dim == ok2.dim == 8
            health = health_pb2_grpc.HealthStub(channel)  # health stays open for probes
            status = await health.Check(health_pb2.HealthCheckRequest(service=""))
            assert status.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        await _on_server_loop(server, stop_grpc_server(grpc_server, grace=1))


async def test_response_larger_than_message_limit_is_refused_up_front(server: Any) -> None:
    settings = Settings(**{**server.settings.model_dump(), "grpc_max_message_bytes": 4096})
    grpc_server = await _on_server_loop(server, start_grpc_server(server.engine, settings, port=0))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{bound_port(grpc_server)}") as channel:
            stub = pb_grpc.EmbedderStub(channel)
            request = pb.EmbedRequest(
                sequences=[pb.Sequence(sequence="M" * 60) for _ in range(4)],
                options=pb.EmbedOptions(per_residue=True),
            )
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.Embed(request)
    finally:
        await _on_server_loop(server, stop_grpc_server(grpc_server, grace=1))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "grpc_max_message_bytes" in (caught.value.details() or "")


async def test_reflection_lists_the_services(server: Any) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.settings.grpc_port}") as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)

        async def ask() -> AsyncIterator[reflection_pb2.ServerReflectionRequest]:
            yield reflection_pb2.ServerReflectionRequest(list_services="")
            yield reflection_pb2.ServerReflectionRequest(file_containing_symbol="protembed.v1.Embedder")

        answers = [a async for a in stub.ServerReflectionInfo(ask())]
    names = {s.name for s in answers[0].list_services_response.service}
    assert {"protembed.v1.Embedder", "grpc.health.v1.Health"} <= names
    assert answers[1].file_descriptor_response.file_descriptor_proto  # the proto itself is served
