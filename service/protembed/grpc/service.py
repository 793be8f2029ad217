"""The gRPC transport: ``protembed.v1.Embedder`` over the shared :class:`~protembed.core.Engine`.

Runs in the same process and event loop as the FastAPI app (``start_grpc_server`` is awaited from the
app's startup once the engine exists), so REST and gRPC share one model, one batcher and one cache.
Like the REST handlers, these only translate wire formats and errors; validation, batching, caching and
inference are the engine's. The service contract (errors, ordering, flow control) is documented in
``proto/protembed/v1/embedder.proto``.

Also served: the standard health service (``grpc.health.v1.Health``; SERVING for "" and
``protembed.v1.Embedder`` while ``engine.ready``, NOT_SERVING otherwise) and server reflection.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
import grpc.aio

from protembed.auth import ApiKey
from protembed.core import EmbedInput, EmbedOptions, EmbedResponse, Engine
from protembed.errors import (
    DeadlineExceededError,
    InvalidRequestError,
    OverloadedError,
    ProtembedError,
    RequestTooLargeError,
)
from protembed.grpc.errors import abort, error_message, status_code
from protembed.proto import embedder_pb2 as pb
from protembed.proto import embedder_pb2_grpc as pb_grpc
from protembed.settings import Settings

T = TypeVar("T")

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Embedder"].full_name  # "protembed.v1.Embedder"
DEFAULT_MAX_STREAM_IN_FLIGHT = 1024


# --- translation -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Malformed:
    """A request message that did not parse, with the parser's reason."""

    message_type: str
    reason: str

    def error(self) -> InvalidRequestError:
        return InvalidRequestError(f"malformed {self.message_type} message: {self.reason}")


def lenient(message_type: Any) -> Callable[[bytes], Any]:
    """A request deserializer that returns :class:`Malformed` instead of raising."""

    def parse(data: bytes) -> Any:
        try:
            return message_type.FromString(data)
        except Exception as exc:  # DecodeError, or invalid UTF-8 in a string field
            return Malformed(message_type.DESCRIPTOR.name, str(exc) or type(exc).__name__)

    return parse


def _options(message: pb.EmbedOptions) -> EmbedOptions:
    return EmbedOptions(
        output=message.output or None,
        per_residue=message.per_residue,
        normalize=message.normalize,
        long_sequences=message.long_sequences or None,
        priority=message.priority or "interactive",
    )


def _inputs(sequences: Any) -> list[EmbedInput]:
    return [EmbedInput(sequence=s.sequence, id=s.id or None) for s in sequences]


def to_proto(response: EmbedResponse) -> pb.EmbedResponse:
    return pb.EmbedResponse(
        model=response.model,
        model_version=response.model_version,
        model_variant=response.model_variant,
        output=response.output,
        dim=response.dim,
        per_residue=response.per_residue,
        embeddings=[
            pb.Embedding(
                index=r.index,
                id=r.id or "",
                vector=r.embedding.astype("<f4", copy=False).tobytes(order="C"),
                shape=list(r.embedding.shape),
                cached=r.cached,
                length=r.length,
                windows=r.windows,
                truncated=r.truncated,
            )
            for r in response.results
        ],
        usage=pb.Usage(items=response.items, residues=response.residues),
    )


def _deadline(context: grpc.aio.ServicerContext) -> float | None:
    """The call's deadline on the engine's clock (time.monotonic), or None without one."""
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


class Embedder(pb_grpc.EmbedderServicer):
    def __init__(self, engine: Engine, settings: Settings) -> None:
        self.engine = engine
        self.settings = settings
        self.api_key = ApiKey(settings.api_key)
        self.max_message_bytes = int(getattr(settings, "grpc_max_message_bytes", 16 * 2**20))
        self.max_stream_in_flight = max(
            1, int(getattr(settings, "max_stream_in_flight", DEFAULT_MAX_STREAM_IN_FLIGHT))
        )

    # -- cross-cutting checks
    def _authorize(self, context: grpc.aio.ServicerContext) -> None:
        if not self.api_key.required:
            return
        metadata = {k: v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}
        self.api_key.check(metadata.get("authorization"), metadata.get("x-api-key"))

    def _check_response_size(self, inputs: list[EmbedInput], options: EmbedOptions) -> None:
        """Refuse up front a call whose answer could not be sent within the message size limit."""
        settings = self.engine.settings
        if self.max_message_bytes <= settings.max_response_bytes:
            limit, what = self.max_message_bytes, "the gRPC message limit (grpc_max_message_bytes)"
        else:
            limit, what = settings.max_response_bytes, "the response limit (max_response_bytes)"
        self.engine.check_response_size(inputs, options, 4.0, limit, what)

    @contextlib.contextmanager
    def _observe(self, method: str) -> Iterator[list[str]]:
        """Count and time a call by method and final status code (the list holds the code)."""
        code = ["OK"]
        start = time.perf_counter()
        try:
            yield code
        except asyncio.CancelledError:
            code[0] = "CANCELLED"
            raise
        finally:
            metrics = getattr(self.engine, "metrics", None)
            if metrics is not None:
                metrics.child(metrics.grpc_requests, method, code[0]).inc()
                metrics.child(metrics.grpc_latency, method, code[0]).observe(time.perf_counter() - start)

    async def _embed(
        self, request_sequences: Any, options_message: pb.EmbedOptions, context: grpc.aio.ServicerContext
    ) -> pb.EmbedResponse:
        limit = self.engine.settings.max_items_per_request
        if len(request_sequences) > limit:  # before any per-item work (a message may hold a million)
            raise RequestTooLargeError(
                f"{len(request_sequences)} sequences in one request; the limit is {limit}"
            )
        inputs = _inputs(request_sequences)
        options = _options(options_message)
        if inputs:
            self._check_response_size(inputs, options)
        response = await self.engine.embed(
            inputs, options, deadline=_deadline(context), cancelled=context.cancelled
        )
        return to_proto(response)

    async def _handle(
        self, method: str, context: grpc.aio.ServicerContext, work: Callable[[], Awaitable[T]]
    ) -> T:
        """Authorize, count and time one call running ``work``; a failure ends it with its status
        (a ProtembedError's own, anything else INTERNAL and logged, not echoed to the client)."""
        with self._observe(method) as code:
            try:
                self._authorize(context)
                return await work()
            except ProtembedError as err:
                code[0] = status_code(err).name
                await abort(context, err)
            except Exception:
                code[0] = "INTERNAL"
                log.exception("gRPC %s failed", method)
                await context.abort(grpc.StatusCode.INTERNAL, "internal error; see the server log")
        raise AssertionError("unreachable: abort raises")

    # -- RPCs
    async def Embed(self, request: pb.EmbedRequest, context: grpc.aio.ServicerContext) -> pb.EmbedResponse:
        async def work() -> pb.EmbedResponse:
            if isinstance(request, Malformed):
                raise request.error()
            return await self._embed(request.sequences, request.options, context)

        return await self._handle("Embed", context, work)

    async def Info(self, request: pb.InfoRequest, context: grpc.aio.ServicerContext) -> pb.InfoResponse:
        with self._observe("Info") as code:
            try:
                self._authorize(context)
            except ProtembedError as err:
                code[0] = status_code(err).name
                await abort(context, err)
            card = self.engine.card
            return pb.InfoResponse(
                model=card.id,
                model_version=card.version,
                default_output=card.default_output,
                output_dims={o.name: o.dim for o in card.per_protein_outputs()},
                provider=self.engine.provider,
                max_length=card.max_length,
                max_stream_in_flight=self.max_stream_in_flight,
                info_json=json.dumps(self.engine.info(), default=str),
            )
        raise AssertionError("unreachable")

    async def EmbedStream(
        self, request_iterator: AsyncIterator[pb.EmbedStreamRequest], context: grpc.aio.ServicerContext
    ) -> None:
        await self._handle("EmbedStream", context, lambda: _Stream(self, request_iterator, context).run())


class _Stream:
    """One EmbedStream call: a reader admits requests while fewer than ``max_stream_in_flight``
    sequences are in flight; each request is computed as its own task; the writer sends the answers
    in the order the requests arrived and releases their budget."""

    def __init__(
        self,
        servicer: Embedder,
        requests: AsyncIterator[pb.EmbedStreamRequest],
        context: grpc.aio.ServicerContext,
    ) -> None:
        self.servicer = servicer
        self.requests = requests
        self.context = context
        self.bound = servicer.max_stream_in_flight
        self.in_flight = 0
        self.changed = asyncio.Condition()
        # Request order: (task, items); the None sentinel marks the end of the requests.
        self.order: asyncio.Queue[tuple[asyncio.Task[pb.EmbedStreamResponse], int] | None] = asyncio.Queue()
        self.tasks: set[asyncio.Task[Any]] = set()
        self.reader: asyncio.Task[None] | None = None

    async def run(self) -> None:
        reader = self.reader = asyncio.create_task(self._read())
        self.tasks.add(reader)
        try:
            while True:
                entry = await self._next()
                if entry is None:
                    break
                task, items = entry
                response = await task  # raises only for stream-wide errors (shutdown, deadline)
                await self.context.write(response)
                async with self.changed:
                    self.in_flight -= items
                    self.changed.notify_all()
            await reader  # surfaces an error raised while reading
        finally:
            for task in self.tasks:
                task.cancel()
            for task in self.tasks:
                with contextlib.suppress(BaseException):
                    await task

    async def _next(self) -> tuple[asyncio.Task[pb.EmbedStreamResponse], int] | None:
        """The next request in order, or the reader's failure if it failed while we wait."""
        getter = asyncio.ensure_future(self.order.get())
        reader = self.reader
        assert reader is not None
        done, _ = await asyncio.wait({getter, reader}, return_when=asyncio.FIRST_COMPLETED)
        if getter in done:
            return getter.result()
        getter.cancel()
        reader.result()  # re-raises the reader's error; a clean finish always queues the sentinel first
        return await self.order.get()

    def _has_room(self, items: int) -> Callable[[], bool]:
        # A request larger than the whole bound is admitted alone rather than never.
        return lambda: self.in_flight == 0 or self.in_flight + items <= self.bound

    async def _read(self) -> None:
        async for request in self.requests:
            if isinstance(request, Malformed):  # no request_id to answer it by: the stream ends
                raise request.error()
            items = max(1, len(request.sequences))
            async with self.changed:
                await self.changed.wait_for(self._has_room(items))
                self.in_flight += items
            task = asyncio.create_task(self._answer(request))
            self.tasks.add(task)
            await self.order.put((task, items))
        await self.order.put(None)

    async def _answer(self, request: pb.EmbedStreamRequest) -> pb.EmbedStreamResponse:
        """The response for one request. Per-request problems become its ``error``; a full queue is
        waited out (the stream's own flow control slows the client); stream-wide errors raise."""
        while True:
            try:
                response = await self.servicer._embed(request.sequences, request.options, self.context)
                return pb.EmbedStreamResponse(request_id=request.request_id, response=response)
            except OverloadedError as err:
                deadline = _deadline(self.context)
                if deadline is not None and time.monotonic() + err.retry_after_s >= deadline:
                    raise DeadlineExceededError(
                        "the stream's deadline would pass while waiting for the full queue to drain"
                    ) from err
                await asyncio.sleep(err.retry_after_s)
            except ProtembedError as err:
                if status_code(err) == grpc.StatusCode.INVALID_ARGUMENT:
                    return pb.EmbedStreamResponse(request_id=request.request_id, error=error_message(err))
                raise


