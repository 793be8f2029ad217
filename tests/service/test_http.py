"""The REST server started for real (uvicorn on a free port, tiny ONNX model), spoken to over HTTP."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from gated_backend import GatedBackend, gated_backend
from protembed.settings import Settings
from tiny_model import reference_embeddings

SEQS = ["MKTAYIAKQRQISFVKSHFSRQ", "ac", "WYWYWYWYWYWYWYWYWYWYWYWYWYWYWYWYWYWYWYWY", "mkuzob*", "G"]


@pytest.fixture
def server(
    start_thread_server: Callable[[Settings], Any], make_settings: Callable[..., Settings]
) -> Iterator[str]:
    handle = start_thread_server(make_settings(max_items_per_request=8, max_body_bytes=4096))
    yield handle.url


def post(url: str, path: str, body: Any = None, raw: bytes | None = None, **kw: Any) -> httpx.Response:
    if raw is not None:
        return httpx.post(
            url + path, content=raw, headers={"content-type": "application/json"}, timeout=10, **kw
        )
    return httpx.post(url + path, json=body, timeout=10, **kw)


def test_mixed_length_batch_equals_each_alone_and_cache_hit(server: str, tiny_model_dir: Path) -> None:
    r = post(server, "/embed", {"sequences": [SEQS[0], {"id": "b", "sequence": SEQS[1]}, *SEQS[2:]]})
    assert r.status_code == 200, r.text
    body = r.json()
    keys = ("model", "model_version", "model_variant", "output", "dim", "per_residue")
    assert {k: body[k] for k in keys} == {
        "model": "protembed-tiny",
        "model_version": "0.0.1",
        "model_variant": "int8",  # auto, on the CPU
        "output": "student",
        "dim": 8,
        "per_residue": False,
    }
    assert body["usage"] == {"items": 5, "residues": sum(len(s.rstrip("*")) for s in SEQS)}
    assert [d["index"] for d in body["data"]] == list(range(5)) and body["data"][1]["id"] == "b"
    for d, s in zip(body["data"], SEQS, strict=True):
        alone = post(server, "/embed", {"sequences": [s]}).json()["data"][0]["embedding"]
        ref = reference_embeddings(tiny_model_dir, s)["student"]
        assert np.abs(np.array(d["embedding"], np.float32) - np.array(alone, np.float32)).max() <= 1e-4
        assert np.abs(np.array(d["embedding"], np.float32) - ref).max() <= 1e-4
    assert not any(d["cached"] for d in body["data"])
    again = post(server, "/embed", {"sequences": SEQS}).json()
    assert all(d["cached"] for d in again["data"])


def test_base64_per_residue_and_teacher(server: str, tiny_model_dir: Path) -> None:
    r = post(server, "/embed", {"sequences": ["MKTAYIAK"], "per_residue": True, "encoding": "base64"})
    assert r.status_code == 200, r.text
    d = r.json()["data"][0]
    vec = np.frombuffer(base64.b64decode(d["embedding"]), "<f4").reshape(d["length"], 8)
    assert np.abs(vec - reference_embeddings(tiny_model_dir, "MKTAYIAK")["residue_states"]).max() <= 1e-4
    r = post(server, "/embed", {"sequences": ["MKTAYIAK"], "output": "alpha", "normalize": True})
    assert r.json()["dim"] == 6 and abs(np.linalg.norm(r.json()["data"][0]["embedding"]) - 1) < 1e-5


def test_openai_compatible_endpoint(server: str, tiny_model_dir: Path) -> None:
    r = post(server, "/v1/embeddings", {"input": "MKTAYIAK", "model": "protembed-tiny"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "list" and body["model"] == "protembed-tiny"
    assert body["data"][0]["object"] == "embedding" and body["usage"] == {
        "prompt_tokens": 8,
        "total_tokens": 8,
    }
    ref = reference_embeddings(tiny_model_dir, "MKTAYIAK")
    assert np.abs(np.array(body["data"][0]["embedding"]) - ref["student"]).max() <= 1e-4
    r = post(
        server,
        "/v1/embeddings",
        {
            "input": ["MKTAYIAK", "MK"],
            "model": "protembed-tiny/beta",
            "encoding_format": "base64",
            "user": "x",
        },
    )
    vec = np.frombuffer(base64.b64decode(r.json()["data"][0]["embedding"]), "<f4")
    assert np.abs(vec - ref["teacher_beta"]).max() <= 1e-4
    r = post(server, "/v1/embeddings", {"input": ["MK"], "model": "text-embedding-3-small"})
    assert r.status_code == 422 and "unknown model 'text-embedding-3-small'" in r.json()["error"]["message"]
    r = post(server, "/v1/embeddings", {"input": ["MK"], "dimensions": 1024})
    assert r.status_code == 422 and "dimensions=1024" in r.json()["error"]["message"]


BAD_INPUTS = [
    ("malformed JSON", b'{"sequences": [', 400, "not valid JSON"),
    ("body not an object", b'["MK"]', 422, "expected a JSON object"),
    ("sequences not a list", b'{"sequences": "MKT"}', 422, "field 'sequences': Input should be a valid list"),
    ("item wrong type", b'{"sequences": ["MK", 5]}', 422, "item 1: expected a sequence string or an object"),
    ("id wrong type", b'{"sequences": [{"id": 1, "sequence": "MK"}]}', 422, "item 0: field 'id'"),
    (
        "sequence field missing",
        b'{"sequences": [{"id": "x"}]}',
        422,
        "item 0: field 'sequence': Field required",
    ),
    ("option wrong type", b'{"sequences": ["MK"], "per_residue": "yes"}', 422, "field 'per_residue'"),
    ("unknown field", b'{"sequences": ["MK"], "colour": 1}', 422, "field 'colour': Extra inputs"),
    ("empty list", b'{"sequences": []}', 422, "no sequences given"),
    ("empty sequence", b'{"sequences": ["MK", ""]}', 422, "item 1: sequence is empty"),
    ("whitespace only", b'{"sequences": ["  \\n "]}', 422, "item 0: sequence is empty"),
    ("digits", b'{"sequences": ["MK1T"]}', 422, "item 0: invalid character '1' at position 3"),
    ("gap", b'{"sequences": ["MK-T"]}', 422, "item 0: invalid character '-' at position 3 (gaps"),
    ("inner stop", b'{"sequences": ["MK*T"]}', 422, "invalid character '*' at position 3"),
    ("non-ASCII", '{"sequences": ["MKÉT"]}'.encode(), 422, "item 0: invalid character 'É' at position 3"),
    (
        "too long",
        json.dumps({"sequences": [{"id": "big", "sequence": "M" * 65}], "long_sequences": "reject"}).encode(),
        413,
        "item 0 (id 'big'): sequence has 65 residues, more than the maximum of 64; the model's window",
    ),
    (
        "too many items",
        json.dumps({"sequences": ["MK"] * 9}).encode(),
        413,
        "9 sequences in one request; the limit is 8",
    ),
    ("oversized body", json.dumps({"sequences": ["M" * 5000]}).encode(), 413, "the limit is 4096 bytes"),
    ("unknown output", b'{"sequences": ["MK"], "output": "esm"}', 422, "unknown output 'esm'"),
]


@pytest.mark.parametrize(("case", "raw", "status", "message"), BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_gets_status_and_message(
    server: str, case: str, raw: bytes, status: int, message: str
) -> None:
    r = post(server, "/embed", raw=raw)
    assert r.status_code == status, r.text
    assert message in r.json()["error"]["message"], r.json()


def test_lower_case_is_accepted(server: str) -> None:
    upper = post(server, "/embed", {"sequences": ["MKTAYIAK"]}).json()["data"][0]["embedding"]
    lower = post(server, "/embed", {"sequences": [" mktayiak* "]}).json()["data"][0]["embedding"]
    assert upper == lower


def test_chunked_upload_over_the_limit_is_refused(server: str) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"sequences": ["'
        for _ in range(10):
            yield b"M" * 1000
        yield b'"]}'

    r = httpx.post(
        server + "/embed", content=chunks(), headers={"content-type": "application/json"}, timeout=10
    )
    assert r.status_code == 413


def test_health_ready_info_metrics_docs(server: str) -> None:
    assert httpx.get(server + "/healthz").json() == {"status": "ok"}
    ready = httpx.get(server + "/readyz").json()
    assert ready["status"] == "ready" and ready["provider"] == "CPUExecutionProvider"
    info = httpx.get(server + "/info").json()
    assert info["provider"] == "CPUExecutionProvider" and info["limits"]["max_body_bytes"] == 4096
    assert {o["name"] for o in info["outputs"]} == {"student", "alpha", "beta", "residues"}
    post(server, "/embed", {"sequences": ["MKT"]})
    post(server, "/embed", raw=b"{")
    text = httpx.get(server + "/metrics").text
    for name in (
        'protembed_http_requests_total{method="POST",route="/embed",status="200"}',
        'protembed_http_requests_total{method="POST",route="/embed",status="400"}',
        "protembed_http_request_duration_seconds_bucket",
        "protembed_batch_size_bucket",
        "protembed_batch_padded_tokens_bucket",
        "protembed_batch_padding_ratio_bucket",
        "protembed_queue_items",
        "protembed_queue_tokens",
        "protembed_inference_duration_seconds",
        'protembed_cache_misses_total{backend="memory"}',
        'provider="CPUExecutionProvider"',
    ):
        assert name in text, name
    schema = httpx.get(server + "/openapi.json").json()
    assert "/embed" in schema["paths"] and "/v1/embeddings" in schema["paths"]
    examples = schema["paths"]["/embed"]["post"]["requestBody"]["content"]["application/json"]["examples"]
    assert "plain" in examples


def test_overload_is_429_with_retry_after(
    start_thread_server: Callable[[Settings], Any], make_settings: Callable[..., Settings]
) -> None:
    # A blocker holds the model busy at a gate; the first request queues behind it (8 of 10 residues
    # queued); the second would exceed the queue bound and is refused at once.
    handle = start_thread_server(make_settings(max_queue_tokens=10))

    async def go(gated: GatedBackend) -> tuple[httpx.Response, httpx.Response, httpx.Response]:
        async with httpx.AsyncClient(base_url=handle.url, timeout=10) as client:
            blocker = asyncio.create_task(client.post("/embed", json={"sequences": ["MBLOCKER"]}))
            assert await asyncio.to_thread(gated.entered.wait, 5)  # left at once, now in the model
            first = asyncio.create_task(client.post("/embed", json={"sequences": ["MKTAYIAK"]}))
            while handle.engine.batcher.queue.queued_tokens < 8:  # queued behind the blocker
                await asyncio.sleep(0.01)
            second = await client.post("/embed", json={"sequences": ["MCCCCCCC"]})
            gated.gate.set()
            return await blocker, await first, second

    with gated_backend(handle.engine) as gated:
        blocker, first, second = asyncio.run(asyncio.wait_for(go(gated), 20))
    assert blocker.status_code == 200 and first.status_code == 200
    assert second.status_code == 429 and int(second.headers["retry-after"]) >= 1
    assert "overloaded" in second.json()["error"]["message"]


def test_disconnected_client_is_dropped_before_the_model(
    start_thread_server: Callable[[Settings], Any], make_settings: Callable[..., Settings]
) -> None:
    # A blocker holds the model at a gate; a second request queues behind it and its client hangs up.
    # The server must notice (from the connection, not by polling) and drop the item: only the blocker
    # runs, even after the gate opens.
    handle = start_thread_server(make_settings(max_wait_ms=0.0))
    metrics = handle.engine.metrics.registry

    def dropped() -> float:
        return metrics.get_sample_value("protembed_dropped_items_total", {"reason": "cancelled"}) or 0.0

    async def go(gated: GatedBackend) -> httpx.Response:
        async with httpx.AsyncClient(base_url=handle.url, timeout=10) as client:
            blocker = asyncio.create_task(client.post("/embed", json={"sequences": ["MBLOCKER"]}))
            assert await asyncio.to_thread(gated.entered.wait, 5)
            async with httpx.AsyncClient(base_url=handle.url, timeout=10) as leaving:
                gone = asyncio.create_task(leaving.post("/embed", json={"sequences": ["MLEAVING"]}))
                while "MLEAVING" not in handle.engine.batcher.queue.pending:
                    await asyncio.sleep(0.01)
                gone.cancel()  # closes that connection
                with contextlib.suppress(asyncio.CancelledError):
                    await gone
            await asyncio.sleep(0.2)  # the server sees the connection close while the item is queued
            gated.gate.set()
            answered = await blocker
            await client.post("/embed", json={"sequences": ["MAFTER"]})  # the queue is pruned by now
            return answered

    def batches() -> float:
        return metrics.get_sample_value("protembed_batch_size_count") or 0.0

    before, batches_before = dropped(), batches()
    with gated_backend(handle.engine) as gated:
        blocker = asyncio.run(asyncio.wait_for(go(gated), 20))
    assert blocker.status_code == 200
    assert dropped() == before + 1
    assert batches() == batches_before + 2  # the blocker and MAFTER; MLEAVING never ran


def test_api_key(
    start_thread_server: Callable[[Settings], Any], make_settings: Callable[..., Settings]
) -> None:
    url = start_thread_server(make_settings(api_key="s3cret")).url
    assert httpx.post(url + "/embed", json={"sequences": ["MK"]}).status_code == 401
    ok = httpx.post(url + "/embed", json={"sequences": ["MK"]}, headers={"authorization": "Bearer s3cret"})
    assert ok.status_code == 200
    assert httpx.get(url + "/healthz").status_code == 200
