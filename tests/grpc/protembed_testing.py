"""Test helpers shared by tests/grpc, tests/client and tests/bulk: a real server (FastAPI + gRPC in one
process, as `protembed serve` runs them) in a background thread with its own event loop, and corpus data.
The tiny ONNX model comes from the ``tiny_model_dir`` fixture of tests/conftest.py.

The other folders' conftest.py put this folder on sys.path and import from here.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Coroutine, Iterator
from itertools import islice
from pathlib import Path
from typing import Any, TypeVar

import httpx

from protembed_bench.evaluate import DEFAULT_DATA_DIR as DATA  # one place decides where the data is

T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_settings(model_dir: Path, **overrides: Any) -> Any:
    from protembed.settings import Settings

    values: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": free_port(),
        "grpc_port": free_port(),
        "model": model_dir,
        "providers": ["CPUExecutionProvider"],
        "intra_op_threads": 1,
        "inter_op_threads": 1,
        "log_level": "warning",
        "redis_url": None,
    }
    values.update(overrides)
    return Settings(**values)


def corpus_sequences(n: int, max_length: int = 64, skip: int = 0) -> list[tuple[str, str, str]]:
    """(id, header, sequence) of the first ``n`` corpus records, cut to ``max_length`` residues."""
    from protembed.fasta import read_fasta

    corpus = DATA / "corpus" / "corpus.fasta"
    if not corpus.is_file():
        raise FileNotFoundError(
            f"{corpus} not found: the shared data folder sits beside the repository; "
            "set PROTEMBED_DATA_DIR to its data/ folder for a clone made elsewhere"
        )
    records = islice(read_fasta(corpus), skip, skip + n)
    return [(r.id, r.header, r.sequence[:max_length]) for r in records]


class ServerThread:
    """`build_app(settings)` under uvicorn in a thread; its lifespan starts the engine and gRPC."""

    def __init__(self, settings: Any) -> None:
        import uvicorn

        from protembed.server import build_app

        self.settings = settings
        self.app = build_app(settings)
        config = uvicorn.Config(
            self.app, host=settings.host, port=settings.port, log_level="warning", lifespan="on"
        )
        self.server = uvicorn.Server(config)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread = threading.Thread(target=self._run, name="protembed-test-server", daemon=True)

    @property
    def http_url(self) -> str:
        return f"http://{self.settings.host}:{self.settings.port}"

    @property
    def grpc_url(self) -> str:
        return f"grpc://{self.settings.host}:{self.settings.grpc_port}"

    @property
    def engine(self) -> Any:
        return self.app.state.engine

    def _run(self) -> None:
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self.server.serve())

    def start(self, timeout: float = 30.0) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.http_url + "/readyz", timeout=1.0).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            if not self.thread.is_alive():
                raise RuntimeError("test server thread died during start")
            time.sleep(0.05)
        raise TimeoutError("test server did not become ready")

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        """Run a coroutine on the server's loop (e.g. engine.stop()) and return its result."""
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def running_server(settings: Any) -> Iterator[ServerThread]:
    """Generator body for fixtures: start, yield, stop."""
    server = ServerThread(settings).start()
    try:
        yield server
    finally:
        server.stop()
