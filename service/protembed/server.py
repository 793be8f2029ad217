"""One server process: the engine, the HTTP app (uvicorn) and the gRPC server side by side on one loop.

``Server`` owns the lifecycle the transports share. Start: open the engine (model, self-check, cache,
batcher), then gRPC. Drain (SIGTERM): readiness and gRPC health flip to not serving at once, new work
is refused with 503 / UNAVAILABLE, queued work runs for up to ``drain_timeout_s``, whatever is left
gets 503 / UNAVAILABLE (never a 500 from a cancelled handler), then both servers stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator
from types import FrameType
from typing import Any

from protembed.core import Engine
from protembed.metrics import Metrics
from protembed.settings import Settings

log = logging.getLogger(__name__)

# In-flight HTTP responses get this long to be written once the drain is over (uvicorn's graceful
# timeout); the drain itself has already answered or refused every queued item.
_RESPONSE_GRACE_S = 5.0


class Server:
    """The engine plus the gRPC server, started and drained together; the HTTP app calls
    :meth:`lifespan` (``build_app``) so uvicorn runs the same sequence."""

    def __init__(self, settings: Settings, *, engine: Engine | None = None) -> None:
        self.settings = settings
        self.engine = engine
        self.metrics = engine.metrics if engine is not None else Metrics()
        self.grpc: Any = None  # grpc.aio.Server once started
        self.draining = False

    async def start(self) -> Engine:
        if self.engine is None:
            self.engine = await asyncio.to_thread(Engine.from_settings, self.settings, metrics=self.metrics)
        await self.engine.start()
        if self.settings.grpc_port > 0:
            from protembed.grpc.server import start_grpc_server

            self.grpc = await start_grpc_server(self.engine, self.settings)
        return self.engine

    async def drain(self) -> None:
        """Stop taking work, finish what is queued within ``drain_timeout_s``, refuse the rest."""
        if self.draining or self.engine is None:
            return
        self.draining = True
        engine = self.engine
        engine.mark_draining()
        if self.grpc is not None:
            from protembed.grpc.server import mark_not_serving

            await mark_not_serving(self.grpc)
        queued = engine.batcher.stats()
        log.info(
            "draining: up to %.0f s for %d queued and %d running items",
            self.settings.drain_timeout_s,
            queued.queued_items,
            queued.running_items,
        )
        finished = await engine.drain(self.settings.drain_timeout_s)
        if not finished:
            left = engine.batcher.stats()
            log.warning(
                "drain timeout: %d queued and %d running items get 503 / UNAVAILABLE",
                left.queued_items,
                left.running_items,
            )
        await engine.batcher.stop()  # fails anything left with NotReadyError (503 / UNAVAILABLE)

    async def stop(self) -> None:
        await self.drain()
        if self.grpc is not None:
            from protembed.grpc.server import stop_grpc_server

            await stop_grpc_server(self.grpc, grace=1.0)
            self.grpc = None
        if self.engine is not None:
            await self.engine.stop()

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Any) -> AsyncIterator[None]:
        app.state.engine = await self.start()
        try:
            yield
        finally:
            await self.stop()


def build_app(settings: Settings, *, engine: Engine | None = None) -> Any:
    """The FastAPI app whose lifespan runs a :class:`Server` (``app.state.server``)."""
    from protembed.http.app import create_app

    server = Server(settings, engine=engine)
    app = create_app(settings, engine=engine, metrics=server.metrics, lifespan=server.lifespan)
    app.state.server = server
    return app


def run(settings: Settings) -> int:
    """Serve until SIGTERM / SIGINT (the first drains, a second one exits at once); 0 on a clean stop."""
    import uvicorn

    app = build_app(settings)
    server: Server = app.state.server

    class _Uvicorn(uvicorn.Server):
        """uvicorn whose first exit signal drains the engine before uvicorn stops accepting."""

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            if server.draining or not self.started:
                super().handle_exit(sig, frame)
                return
            log.info("%s: draining", signal.Signals(sig).name)
            loop = asyncio.get_event_loop()

            async def drain_then_exit() -> None:
                try:
                    await server.drain()
                except Exception:
                    log.exception("drain failed; stopping now")
                finally:
                    super(_Uvicorn, self).handle_exit(sig, frame)

            tasks: set[asyncio.Task[None]] = getattr(self, "_drain_tasks", set())
            self._drain_tasks = tasks  # a reference, so the task is not collected mid-drain
            loop.call_soon_threadsafe(lambda: tasks.add(loop.create_task(drain_then_exit())))

    from protembed.http.protocol import with_header_timeout

    protocol = with_header_timeout(settings.header_timeout_s)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        lifespan="on",
        timeout_graceful_shutdown=int(_RESPONSE_GRACE_S),
        access_log=settings.log_level == "debug",
        http=protocol if protocol is not None else "auto",
    )
    uv = _Uvicorn(config)
    uv.run()
    # uvicorn returns normally when startup fails (e.g. a corrupt model): report that as a failure
    return 0 if uv.started else 1
