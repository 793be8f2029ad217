"""EmbedFastPath answers POST /embed exactly as the FastAPI route does, and declines what it should; the
cheaper JSON rendering and the telemetry switch that a cache hit's cost led to."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.responses import JSONResponse

from protembed.http.app import EmbedFastPath, VectorJSONResponse, create_app
from protembed.server import build_app
from protembed.settings import Settings

# (body or raw bytes, headers): hits and misses, engine errors, auth, request-shape errors, other types.
REQUESTS: list[tuple[Any, dict[str, str]]] = [
    ({"sequences": ["MKTAYIAKQRQ", {"id": "b", "sequence": "mkuzob*"}]}, {}),
    ({"sequences": ["MKTAYIAKQRQ"], "encoding": "base64", "normalize": True}, {}),
    ({"sequences": ["MKTAYIAKQRQ", "MKT4Y"]}, {}),  # invalid residue: the engine's error, item named
    ({"sequences": ["MKTAYIAKQRQ"], "output": "nope"}, {}),  # unknown output
    ({"sequences": ["M"] * 9}, {}),  # over max_items_per_request
    ({"sequences": ["MKTAYIAKQRQ"], "per_residue": "yes"}, {}),  # pydantic rejects: falls through
    (b'{"sequences": ["MKT"', {}),  # invalid JSON: falls through
    ({"sequences": ["MKTAYIAKQRQ"]}, {"authorization": "Bearer wrong"}),
    ({"sequences": ["MKTAYIAKQRQ"]}, {"authorization": "Bearer s3cret"}),
]


@asynccontextmanager
async def running(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client


async def replies(app: FastAPI) -> list[tuple[int, Any]]:
    out = []
    async with running(app) as client:
        for body, headers in REQUESTS:
            if isinstance(body, bytes):
                r = await client.post("/embed", content=body, headers={"content-type": "application/json"})
            else:
                r = await client.post("/embed", json=body, headers=headers)
            out.append((r.status_code, r.json()))
    return out


async def test_fast_path_answers_as_the_route_does(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(max_items_per_request=8, api_key="s3cret")
    fast = build_app(settings)
    slow = build_app(settings)
    slow.user_middleware = [m for m in slow.user_middleware if m.cls is not EmbedFastPath]
    assert any(m.cls is EmbedFastPath for m in fast.user_middleware)
    got, want = await replies(fast), await replies(slow)
    # the key is checked first, except for a body that is not JSON at all (FastAPI parses it first)
    assert [s for s, _ in got] == [401, 401, 401, 401, 401, 401, 400, 401, 200]
    assert got == want

    open_settings = make_settings(max_items_per_request=8)
    fast, slow = build_app(open_settings), build_app(open_settings)
    slow.user_middleware = [m for m in slow.user_middleware if m.cls is not EmbedFastPath]
    got, want = await replies(fast), await replies(slow)
    assert [s for s, _ in got] == [200, 200, 422, 422, 413, 422, 400, 200, 200]
    assert got == want
    assert [d["cached"] for d in got[-1][1]["data"]] == [True]


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded"])
async def test_other_content_types_go_to_the_route(
    make_settings: Callable[..., Settings], content_type: str
) -> None:
    fast, slow = build_app(make_settings()), build_app(make_settings())
    slow.user_middleware = [m for m in slow.user_middleware if m.cls is not EmbedFastPath]
    body = b'{"sequences": ["MKTAYIAKQRQ"]}'
    answers = []
    for app in (fast, slow):
        async with running(app) as client:
            r = await client.post("/embed", content=body, headers={"content-type": content_type})
            answers.append((r.status_code, r.json()))
    assert answers[0] == answers[1]


def test_vector_json_is_the_standard_json_faster() -> None:
    """pydantic-core's rendering parses back to exactly what the standard library's would: every float32
    round-trips, including tiny, huge and integral values."""
    rng = np.random.default_rng(0)
    vec = np.concatenate([rng.standard_normal(768), [1e-7, -3e-38, 3e38, 5.0, 0.0, -0.0]]).astype(np.float32)
    content = {"model": "m", "data": [{"index": 0, "id": None, "embedding": vec.tolist(), "cached": True}]}
    fast, std = VectorJSONResponse(content), JSONResponse(content)
    assert json.loads(fast.body) == json.loads(std.body) == content
    assert np.array_equal(np.array(json.loads(fast.body)["data"][0]["embedding"], dtype=np.float32), vec)
    assert fast.headers["content-type"] == std.headers["content-type"] == "application/json"


@pytest.mark.parametrize("enabled", [False, True])
def test_opentelemetry_setting_reaches_fastapi(make_settings: Callable[..., Settings], enabled: bool) -> None:
    app = create_app(make_settings(opentelemetry=enabled))
    config = getattr(app, "_telemetry", None)  # FastAPI < 0.165 has no native telemetry at all
    if config is None:
        pytest.skip("this FastAPI has no native telemetry")
    assert (config["tracing"], config["metrics"], config["logs"]) == (enabled, enabled, enabled)
