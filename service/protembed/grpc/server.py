"""The gRPC server's lifecycle: start it on the running loop beside the HTTP server, mirror the engine's
readiness into the standard health service, stop it (NOT_SERVING first)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

import grpc
import grpc.aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from protembed.core import Engine
from protembed.grpc.service import SERVICE_NAME, Embedder, lenient
from protembed.proto import embedder_pb2 as pb
from protembed.settings import Settings

log = logging.getLogger(__name__)

HEALTH_POLL_S = 0.25



async def _follow_readiness(
    server: grpc.aio.Server, engine: Engine, servicer: health.aio.HealthServicer
) -> None:
    """Mirror ``engine.ready`` into the health service until the server terminates."""
    last: bool | None = None
    while True:
        ready = bool(engine.ready)
        if ready != last:
            status = (
                health_pb2.HealthCheckResponse.SERVING
                if ready
                else health_pb2.HealthCheckResponse.NOT_SERVING
            )
            for name in ("", SERVICE_NAME):
                await servicer.set(name, status)
            last = ready
        # Returns False once the server has terminated; True when the poll interval elapsed.
        if not await server.wait_for_termination(timeout=HEALTH_POLL_S):
            _RUNNING.pop(id(server), None)  # stopped with server.stop(): forget it
            return


@dataclass
class _Running:
    health: health.aio.HealthServicer
    follower: asyncio.Task[None]
    port: int


# Servers started here, by id(): grpc.aio.Server has no room for our state.
_RUNNING: dict[int, _Running] = {}


def bound_port(server: grpc.aio.Server) -> int:
    """The port a server from :func:`start_grpc_server` listens on (useful with port 0)."""
    return _RUNNING[id(server)].port


async def start_grpc_server(
    engine: Engine, settings: Settings, *, port: int | None = None
) -> grpc.aio.Server:
    """Start the gRPC server on ``settings.host:settings.grpc_port`` (or ``port``) in the running loop.

    Returns the started server; stop it with :func:`stop_grpc_server` (which reports NOT_SERVING first)
    or ``await server.stop(grace)``. ``bound_port(server)`` gives the port (useful with port 0).
    """
    max_bytes = int(getattr(settings, "grpc_max_message_bytes", 16 * 2**20))
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", max_bytes),
            ("grpc.max_send_message_length", max_bytes),
        ]
    )
    add_embedder(Embedder(engine, settings), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    # Not serving until the readiness follower has seen the engine ready.
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)

    wanted = settings.grpc_port if port is None else port
    address = f"[{settings.host}]:{wanted}" if ":" in settings.host else f"{settings.host}:{wanted}"
    bound = server.add_insecure_port(address)
    if bound == 0:
        raise OSError(f"cannot bind the gRPC server to {address}")
    await server.start()
    follower = asyncio.create_task(_follow_readiness(server, engine, health_servicer))
    _RUNNING[id(server)] = _Running(health_servicer, follower, bound)
    log.info("gRPC server listening on %s:%d (%s, health, reflection)", settings.host, bound, SERVICE_NAME)
    return server


def add_embedder(servicer: Embedder, server: grpc.aio.Server) -> None:
    """Register the service as the generated ``add_EmbedderServicer_to_server`` does, but with request
    parsing that cannot fail: a message that is not valid protobuf (or holds invalid UTF-8 in a string)
    reaches the handler as :class:`Malformed` and is answered INVALID_ARGUMENT, where grpcio's own
    parser would log a traceback and answer UNKNOWN."""
    handlers = {
        "Embed": grpc.unary_unary_rpc_method_handler(
            servicer.Embed,
            request_deserializer=lenient(pb.EmbedRequest),
            response_serializer=pb.EmbedResponse.SerializeToString,
        ),
        "EmbedStream": grpc.stream_stream_rpc_method_handler(
            servicer.EmbedStream,
            request_deserializer=lenient(pb.EmbedStreamRequest),
            response_serializer=pb.EmbedStreamResponse.SerializeToString,
        ),
        "Info": grpc.unary_unary_rpc_method_handler(
            servicer.Info,
            request_deserializer=lenient(pb.InfoRequest),
            response_serializer=pb.InfoResponse.SerializeToString,
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))


async def mark_not_serving(server: grpc.aio.Server) -> None:
    """Report NOT_SERVING for every service now (a drain has begun) and keep it so."""
    running = _RUNNING.get(id(server))
    if running is not None:
        await running.health.enter_graceful_shutdown()


async def stop_grpc_server(server: grpc.aio.Server, grace: float | None = 5.0) -> None:
    """Report NOT_SERVING, let in-flight calls finish for ``grace`` seconds, then stop."""
    running = _RUNNING.pop(id(server), None)
    if running is not None:
        await running.health.enter_graceful_shutdown()
    await server.stop(grace)
    if running is not None:
        running.follower.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running.follower
