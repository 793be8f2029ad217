"""Every answer has a memory bound the server enforces before computing, large answers are streamed and
rendered off the event loop, and the limits are checked before per-item work, over REST and gRPC."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

import grpc
import httpx
import numpy as np

from protembed.proto import embedder_pb2 as pb
from protembed.proto import embedder_pb2_grpc as pb_grpc
from protembed.settings import Settings
from protembed.testing import free_port


def _seqs(n: int, length: int) -> list[str]:
    rng = np.random.default_rng(5)
    return ["".join(rng.choice(list("ACDEFGHIKLMNPQRSTVWY"), length)) for _ in range(n)]


def test_too_large_an_answer_is_refused_before_computing(
    make_settings: Callable[..., Settings], start_thread_server: Callable[[Settings], Any]
) -> None:
    handle = start_thread_server(make_settings(max_response_bytes=100_000))
    before = handle.engine.batcher.batches_run
    body = {"sequences": _seqs(64, 60), "per_residue": True}
    r = httpx.post(handle.url + "/embed", json=body, timeout=30)
    assert r.status_code == 413
    message = r.json()["error"]["message"]
    assert "more than the response limit (max_response_bytes) of 100000 bytes" in message
    assert "encoding=base64" in message
    assert handle.engine.batcher.batches_run == before  # nothing was computed
    # base64 is about 4x smaller: the same request fits when it is a quarter the size
    ok = httpx.post(
        handle.url + "/embed", json={**body, "sequences": body["sequences"][:10], "encoding": "base64"}
    )
    assert ok.status_code == 200


def test_large_answers_are_streamed_and_equal_the_plain_ones(
    make_settings: Callable[..., Settings], start_thread_server: Callable[[Settings], Any]
) -> None:
    handle = start_thread_server(make_settings(max_items_per_request=256))
    seqs = _seqs(256, 64)
    r = httpx.post(handle.url + "/embed", json={"sequences": seqs, "per_residue": True}, timeout=60)
    assert r.status_code == 200 and r.headers.get("content-length") is None  # chunked: streamed
    streamed = json.loads(r.content)
    assert streamed["usage"] == {"items": 256, "residues": 256 * 64} and len(streamed["data"]) == 256
    small = httpx.post(handle.url + "/embed", json={"sequences": seqs[:3], "per_residue": True}).json()
    assert small.keys() == streamed.keys()
    for got, want in zip(streamed["data"][:3], small["data"], strict=True):
        assert got == {**want, "cached": got["cached"]}
    b64 = httpx.post(
        handle.url + "/embed", json={"sequences": seqs[:2], "per_residue": True, "encoding": "base64"}
    )
    rows = np.frombuffer(base64.b64decode(b64.json()["data"][1]["embedding"]), dtype="<f4").reshape(64, -1)
    assert np.allclose(rows, np.array(streamed["data"][1]["embedding"]), atol=1e-6)


def test_grpc_checks_item_count_and_ids_before_per_item_work(
    make_settings: Callable[..., Settings], start_thread_server: Callable[[Settings], Any]
) -> None:
    port = free_port()
    handle = start_thread_server(make_settings(grpc_port=port))
    assert handle.engine.ready
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.EmbedderStub(channel)
        many = pb.EmbedRequest(sequences=[pb.Sequence(sequence="MK")] * 100_000)
        try:
            stub.Embed(many, timeout=30)
            raise AssertionError("100,000 items were accepted")
        except grpc.RpcError as err:
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "100000 sequences in one request; the limit is 256" in str(err.details())
        long_id = pb.EmbedRequest(sequences=[pb.Sequence(id="x" * 300, sequence="MK")])
        try:
            stub.Embed(long_id, timeout=30)
            raise AssertionError("a 300-character id was accepted")
        except grpc.RpcError as err:
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "item 0: id is 300 characters; the limit is 256" in str(err.details())
