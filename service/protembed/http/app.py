"""The REST transport: a thin FastAPI layer that translates JSON to ``Engine.embed`` calls and back.

Validation, batching, caching and inference all live in the engine; this module only parses, applies
the body-size limit, watches for disconnected clients, encodes vectors and records HTTP metrics.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import inspect
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

import numpy as np
from fastapi import Body, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError
from pydantic_core import to_json
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from protembed import __version__
from protembed.auth import ApiKey
from protembed.core import EmbedInput, EmbedOptions, EmbedResponse, Engine
from protembed.errors import InvalidRequestError, NotReadyError, ProtembedError
from protembed.http.errors import error_response, install_error_handlers, protembed_error_response
from protembed.http.schemas import (
    EMBED_EXAMPLES,
    OPENAI_EXAMPLES,
    EmbedRequest,
    EmbedResponseModel,
    ErrorResponse,
    OpenAIEmbeddingsRequest,
    OpenAIEmbeddingsResponse,
)
from protembed.metrics import CONTENT_TYPE, Metrics
from protembed.settings import Settings

log = logging.getLogger(__name__)

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 413, 422, 429, 503)
}


class VectorJSONResponse(JSONResponse):
    """JSON rendered by pydantic-core (Rust) rather than the standard library: 768 floats take about
    40 us instead of 420 us, and a 4 KB base64 vector about 4 us instead of 24 us, most of what a cache
    hit cost the server. The output is the same JSON (compact, UTF-8)."""

    def render(self, content: Any) -> bytes:
        return to_json(content)


def _replaying(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that yields an already-read body once, then passes the real channel through (so
    disconnect notifications still arrive)."""
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


class _BodyTooLarge(Exception):
    pass


async def _read_body(receive: Receive, max_bytes: int | None = None) -> bytes | None:
    """The whole request body from ``receive``; None when the client disconnected first. Raises
    ``_BodyTooLarge`` as soon as more than ``max_bytes`` have arrived (the rest is never read)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if max_bytes is not None and size > max_bytes:
            raise _BodyTooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


class BodyLimitMiddleware:
    """413 for bodies above ``max_bytes``, checked on Content-Length and again while reading
    (chunked uploads have no length), before FastAPI parses anything."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def _reject(self, send: Send, size: str) -> None:
        resp = error_response(
            413, "request_too_large", f"request body is {size} bytes; the limit is {self.max_bytes} bytes"
        )
        await send({"type": "http.response.start", "status": 413, "headers": resp.raw_headers})
        await send({"type": "http.response.body", "body": resp.body})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._reject(send, declared.decode())
            return
        # Read the body here (bounded), then replay it: the app never sees more than max_bytes.
        try:
            body = await _read_body(receive, self.max_bytes)
        except _BodyTooLarge:
            await self._reject(send, f"more than {self.max_bytes}")
            return
        if body is not None:
            await self.app(scope, _replaying(body, receive), send)


class MetricsMiddleware:
    """Requests and latency by route template (low cardinality) and status."""

    def __init__(self, app: ASGIApp, metrics: Metrics, known_paths: Callable[[], set[str]]) -> None:
        self.app = app
        self.metrics = metrics
        self.known_paths = known_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        start = time.perf_counter()

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) or scope.get("path", "")
            label = path if path in self.known_paths() else "other"
            method = scope.get("method", "")
            m, values = self.metrics, (label, method, str(status))
            m.child(m.http_requests, *values).inc()
            m.child(m.http_latency, *values).observe(time.perf_counter() - start)


class _DisconnectWatch:
    """``cancelled()`` turns True once the client has gone. The watching task starts only when the engine
    is about to queue model work (``start``): an answer straight from the cache has nothing to drop, and
    a task per request would cost a cache hit more than the lookup itself.

    The task waits on the request's receive channel, which, once the body has been read, yields only
    ``http.disconnect``: no polling (``Request.is_disconnected`` every 50 ms took a tenth of the event
    loop's time at 64 requests in flight, CPU that the model's threads then lacked)."""

    def __init__(self, request: Request) -> None:
        self.request = request
        self.gone = False
        self.task: asyncio.Task[None] | None = None

    def __call__(self) -> bool:
        return self.gone

    def start(self) -> None:
        if self.task is None:
            self.task = asyncio.create_task(self._watch())

    async def _watch(self) -> None:
        while not self.gone:
            message = await self.request.receive()
            self.gone = message["type"] == "http.disconnect"

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task


async def _embed_until_disconnect(
    request: Request, eng: Engine, inputs: list[EmbedInput], options: EmbedOptions
) -> EmbedResponse:
    """``eng.embed``, dropping the items not yet run once the client has gone (nobody reads them)."""
    watch = _DisconnectWatch(request)
    try:
        return await eng.embed(inputs, options, cancelled=watch, before_compute=watch.start)
    finally:
        await watch.stop()


async def _embed(request: Request, eng: Engine, body: EmbedRequest) -> Response:
    """POST /embed once the body is validated: shared by the FastAPI route and :class:`EmbedFastPath`."""
    inputs = [
        EmbedInput(sequence=item) if isinstance(item, str) else EmbedInput(item.sequence, item.id)
        for item in body.sequences
    ]
    options = EmbedOptions(
        output=body.output,
        per_residue=body.per_residue,
        normalize=body.normalize,
        long_sequences=body.long_sequences,
        priority=body.priority,
    )
    estimate = eng.check_response_size(
        inputs,
        options,
        BYTES_PER_VALUE[body.encoding],
        eng.settings.max_response_bytes,
        "the response limit (max_response_bytes)",
    )
    resp = await _embed_until_disconnect(request, eng, inputs, options)
    if estimate <= STREAM_ABOVE_BYTES:
        return VectorJSONResponse(_embed_body(resp, body.encoding))
    return StreamingResponse(_streamed_body(resp, body.encoding), media_type="application/json")


# What one float costs in the answer: JSON text of a float32 widened to a double (up to ~22 characters
# with its comma), or base64 of 4 bytes. Used to refuse too large answers before computing them.
BYTES_PER_VALUE = {"float": 22.0, "base64": 16 / 3}
# Answers above this are streamed: each slice of items is rendered in a worker thread (the event loop
# keeps answering probes) and written as the client reads, so a client that does not read holds the
# vectors (4 bytes a value) and one slice of text, never the whole JSON body (about 22).
STREAM_ABOVE_BYTES = 1 << 20
_STREAM_SLICE_VALUES = 1 << 18


async def _streamed_body(resp: EmbedResponse, encoding: str) -> AsyncIterator[bytes]:
    """The same JSON object as :func:`_embed_body` (``data`` last), rendered slice by slice."""
    envelope = to_json(_envelope(resp, encoding))
    yield envelope[:-1] + b',"data":['
    results = resp.results
    per_item = max(1, int(results[0].embedding.size)) if results else 1
    step = max(1, _STREAM_SLICE_VALUES // per_item)
    for start in range(0, len(results), step):
        part = await asyncio.to_thread(_render_items, results[start : start + step], encoding)
        yield (b"," if start else b"") + part
    yield b"]}"


def _render_items(results: list[Any], encoding: str) -> bytes:
    return to_json([_item(r, encoding) for r in results])[1:-1]


class EmbedFastPath:
    """POST /embed without FastAPI's routing and dependency injection, for the requests that need none.

    A cache hit costs well under a millisecond, and FastAPI's per-request machinery (route matching,
    dependency solving, exit stacks) was a large share of it. A well-formed JSON request is validated by
    the route's own pydantic model and answered by the route's own handler (:func:`_embed`), with the
    same auth check and the same error mapping; anything else (a body the model rejects, another
    content type, a server not ready) goes on to the FastAPI route unchanged, so its error responses,
    OpenAPI schema and docs stay the single source. Sits inside the body-limit and metrics middleware.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != "/embed":
            await self.app(scope, receive, send)
            return
        eng: Engine | None = scope["app"].state.engine
        content_type = dict(scope["headers"]).get(b"content-type", b"")
        if eng is None or not eng.ready or not content_type.startswith(b"application/json"):
            await self.app(scope, receive, send)
            return
        data = await _read_body(receive)  # the body-limit middleware outside has already bounded it
        if data is None:
            return
        replay = _replaying(data, receive)

        try:
            body = EmbedRequest.model_validate_json(data)
        except ValidationError:
            await self.app(scope, replay, send)  # FastAPI words the 400/422 as for every route
            return
        request = Request(scope, replay)
        try:
            await check_key(request)
            response = await _embed(request, eng, body)
        except ProtembedError as exc:
            response = protembed_error_response(exc)
        await response(scope, replay, send)


def _encode(vec: np.ndarray, encoding: str) -> list[Any] | str:
    if encoding == "base64":
        return base64.b64encode(np.ascontiguousarray(vec, dtype="<f4").tobytes()).decode("ascii")
    out: list[Any] = vec.tolist()
    return out


def _envelope(resp: EmbedResponse, encoding: str) -> dict[str, Any]:
    """Everything of an /embed answer but its ``data``."""
    return {
        "model": resp.model,
        "model_version": resp.model_version,
        "model_variant": resp.model_variant,
        "output": resp.output,
        "dim": resp.dim,
        "per_residue": resp.per_residue,
        "encoding": encoding,
        "usage": {"items": resp.items, "residues": resp.residues},
    }


def _item(r: Any, encoding: str) -> dict[str, Any]:
    return {
        "index": r.index,
        "id": r.id,
        "embedding": _encode(r.embedding, encoding),
        "cached": r.cached,
        "length": r.length,
        "windows": r.windows,
        "truncated": r.truncated,
    }


def _embed_body(resp: EmbedResponse, encoding: str) -> dict[str, Any]:
    return {**_envelope(resp, encoding), "data": [_item(r, encoding) for r in resp.results]}


# Dependencies are ``async def`` on purpose: FastAPI runs a plain ``def`` dependency in a worker thread,
# and two thread hops per request were most of what a cache hit cost.
async def get_engine(request: Request) -> Engine:
    eng: Engine | None = request.app.state.engine
    if eng is None or not eng.ready:
        raise NotReadyError("model is not loaded yet; retry shortly")
    return eng


async def check_key(request: Request) -> None:
    """Require the API key, when one is configured (``protembed.auth``: the same check as gRPC's)."""
    api_key: ApiKey = request.app.state.api_key
    if api_key.required:
        api_key.check(request.headers.get("authorization"), request.headers.get("x-api-key"))


EngineDep = Annotated[Engine, Depends(get_engine)]


def create_app(
    settings: Settings | None = None,
    *,
    engine: Engine | None = None,
    metrics: Metrics | None = None,
    lifespan: Any = None,
) -> FastAPI:
    """The FastAPI app over ``engine`` (``app.state.engine``, which may be set later). It starts and
    stops nothing itself: ``protembed.server`` runs the engine and gRPC and passes its ``lifespan``."""
    settings = settings if settings is not None else (engine.settings if engine is not None else Settings())
    metrics = metrics if metrics is not None else (engine.metrics if engine is not None else Metrics())

    app = FastAPI(
        title="protembed",
        version=__version__,
        summary="Protein embeddings from a distilled student model (ONNX Runtime).",
        lifespan=lifespan,
        **_telemetry_kwargs(settings.opentelemetry),
    )
    app.state.settings = settings
    app.state.api_key = ApiKey(settings.api_key)
    app.state.metrics = metrics
    app.state.engine = engine
    install_error_handlers(app)
    app.add_middleware(EmbedFastPath)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    paths: set[str] = set()

    def known_paths() -> set[str]:
        if not paths:
            paths.update(getattr(r, "path", "") for r in app.routes)
        return paths

    app.add_middleware(MetricsMiddleware, metrics=metrics, known_paths=known_paths)
    # The embedding endpoints: authenticated, with the same documented error responses.
    embed_route = functools.partial(app.post, responses=_ERRORS, dependencies=[Depends(check_key)])

    @embed_route("/embed", response_model=EmbedResponseModel, summary="Embed protein sequences")
    async def embed(
        request: Request,
        eng: EngineDep,
        body: Annotated[EmbedRequest, Body(openapi_examples=EMBED_EXAMPLES)],
    ) -> Response:
        return await _embed(request, eng, body)

    @embed_route(
        "/v1/embeddings", response_model=OpenAIEmbeddingsResponse, summary="OpenAI-compatible embeddings"
    )
    async def openai_embeddings(
        request: Request,
        eng: EngineDep,
        body: Annotated[OpenAIEmbeddingsRequest, Body(openapi_examples=OPENAI_EXAMPLES)],
    ) -> Response:
        output = _openai_output(eng, body.model)
        texts = [body.input] if isinstance(body.input, str) else body.input
        options = EmbedOptions(output=output, long_sequences=body.long_sequences, priority=body.priority)
        spec = eng.resolve_output(options)
        if body.dimensions is not None and body.dimensions != spec.dim:
            raise InvalidRequestError(
                f"dimensions={body.dimensions} is not available; output {spec.name!r} has {spec.dim}"
            )
        inputs = [EmbedInput(t) for t in texts]
        estimate = eng.check_response_size(
            inputs,
            options,
            BYTES_PER_VALUE[body.encoding_format],
            eng.settings.max_response_bytes,
            "the response limit (max_response_bytes)",
        )
        resp = await _embed_until_disconnect(request, eng, inputs, options)
        model_name = eng.card.id if output is None else f"{eng.card.id}/{resp.output}"

        def render() -> bytes:
            return to_json(
                {
                    "object": "list",
                    "data": [
                        {
                            "object": "embedding",
                            "index": r.index,
                            "embedding": _encode(r.embedding, body.encoding_format),
                            "windows": r.windows,
                            "truncated": r.truncated,
                        }
                        for r in resp.results
                    ],
                    "model": model_name,
                    "usage": {"prompt_tokens": resp.residues, "total_tokens": resp.residues},
                }
            )

        # a large answer is rendered off the event loop, so probes and other requests keep being served
        content = render() if estimate <= STREAM_ABOVE_BYTES else await asyncio.to_thread(render)
        return Response(content, media_type="application/json")

    @app.get("/healthz", summary="Liveness: the process answers")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(
        "/readyz", summary="Readiness: model loaded and warmed up", responses={503: {"model": ErrorResponse}}
    )
    async def readyz(request: Request) -> Response:
        eng: Engine | None = request.app.state.engine
        if eng is None or not eng.ready:
            return error_response(503, "not_ready", eng.not_ready_reason if eng is not None else "starting")
        return JSONResponse({"status": "ready", "model": eng.card.id, "provider": eng.provider})

    @app.get("/info", dependencies=[Depends(check_key)], summary="Model card, provider, limits, batching")
    async def info(eng: EngineDep) -> dict[str, object]:
        return eng.info()

    @app.get(
        "/metrics",
        summary="Prometheus metrics",
        response_class=Response,
        responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
    )
    async def metrics_endpoint() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    return app


def _telemetry_kwargs(enabled: bool) -> dict[str, Any]:
    """FastAPI's ``telemetry`` argument where this FastAPI has one (0.165 and later; older ones have no
    native telemetry to turn off)."""
    if "telemetry" not in inspect.signature(FastAPI.__init__).parameters:
        return {}
    return {"telemetry": {"tracing": enabled, "metrics": enabled, "logs": enabled}}


def _openai_output(eng: Engine, model: str | None) -> str | None:
    """Map the OpenAI ``model`` field to an output: the model id, '<id>/<output>' or an output name."""
    if model is None or model == eng.card.id:
        return None
    prefix = eng.card.id + "/"
    name = model[len(prefix) :] if model.startswith(prefix) else model
    if eng.card.output(name) is not None:
        return name
    choices = [eng.card.id] + [f"{eng.card.id}/{o.name}" for o in eng.card.per_protein_outputs()]
    raise InvalidRequestError(f"unknown model {model!r}; this server offers {choices}")
