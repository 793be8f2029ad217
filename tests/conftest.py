"""Shared fixtures: the tiny contract-following ONNX model, settings for tests, free ports, a real
redis-server, and real HTTP servers (in a thread, or as a ``protembed serve`` subprocess)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hypothesis
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent / "fixtures"))

from protembed.settings import Settings  # noqa: E402
from protembed.testing import (  # noqa: E402
    RedisServer,
    free_port,
    serve_env,
    spawn_server,
    stop_server,
    wait_ready,
    wait_until,
)
from tiny_model import build_tiny_model  # noqa: E402

TINY_MAX_LENGTH = 64

# Property tests explore new examples on every local run; in CI they replay a fixed derivation, so a
# landing never hinges on which examples one run happened to draw (print_blob: a failure says how to
# replay it).
hypothesis.settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    hypothesis.settings.load_profile("ci")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """models/protembed-tiny: fp32 + an 'int8' copy, teachers alpha (6) and beta (3), d_model 8."""
    return build_tiny_model(
        tmp_path_factory.mktemp("models") / "protembed-tiny", max_length=TINY_MAX_LENGTH, extra_variant="int8"
    )


TEST_ENV = {
    "PROTEMBED_PROVIDERS": "CPUExecutionProvider",
    "PROTEMBED_INTRA_OP_THREADS": "1",
    "PROTEMBED_INTER_OP_THREADS": "1",
    "PROTEMBED_GRPC_PORT": "0",
    "PROTEMBED_LOG_LEVEL": "warning",
    "PROTEMBED_CHUNK_OVERLAP": "16",  # the tiny model's window is 64: windows must advance
}


@pytest.fixture
def make_settings(tiny_model_dir: Path) -> Callable[..., Settings]:
    """Settings on the tiny model, CPU, one thread, no gRPC; keyword arguments override."""

    def make(**overrides: Any) -> Settings:
        base: dict[str, Any] = {
            "model": tiny_model_dir,
            "providers": ["CPUExecutionProvider"],
            "intra_op_threads": 1,
            "inter_op_threads": 1,
            "grpc_port": 0,
            "host": "127.0.0.1",
            "redis_url": None,
            "chunk_overlap": 16,  # the tiny model's window is 64: windows must advance
        }
        base.update(overrides)
        return Settings(**base)

    return make


# --- redis ------------------------------------------------------------------------------------------


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server binary not installed (apt-get install redis-server)")
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.kill()


# --- HTTP servers -----------------------------------------------------------------------------------


@dataclass
class ThreadServer:
    url: str
    server: Any
    thread: threading.Thread

    @property
    def engine(self) -> Any:
        """The engine the app's lifespan started (``app.state.engine``)."""
        return self.server.config.app.state.engine

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(15)


@pytest.fixture
def start_thread_server() -> Iterator[Callable[[Settings], ThreadServer]]:
    """Start uvicorn with ``build_app(settings)`` in a thread on a free port; stopped at teardown."""
    import uvicorn

    from protembed.server import build_app

    started: list[ThreadServer] = []

    def start(settings: Settings) -> ThreadServer:
        port = free_port()
        config = uvicorn.Config(
            build_app(settings), host="127.0.0.1", port=port, log_level="warning", lifespan="on"
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: server.started or not thread.is_alive(), 60, "uvicorn start")
        if not server.started:
            raise RuntimeError("server failed to start")
        handle = ThreadServer(url, server, thread)
        started.append(handle)
        return handle

    yield start
    for handle in started:
        handle.stop()


@dataclass
class ServerProcess:
    url: str
    proc: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        stop_server(self.proc)


@pytest.fixture
def start_server_process(tmp_path: Path, tiny_model_dir: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Run ``python -m protembed serve`` (the real command) on a free port; env overrides via kwargs."""
    started: list[ServerProcess] = []

    def start(**env_overrides: str) -> ServerProcess:
        port = free_port()
        pythonpath = os.pathsep.join([str(REPO / "service"), str(REPO / "distill")])
        env = serve_env(
            port,
            {**TEST_ENV, "PROTEMBED_MODEL": str(tiny_model_dir), "PYTHONPATH": pythonpath, **env_overrides},
        )
        log = tmp_path / f"server-{port}.log"
        proc = spawn_server(env, log, cwd=tmp_path)
        handle = ServerProcess(f"http://127.0.0.1:{port}", proc, log)
        started.append(handle)
        wait_ready(handle.url, proc, log, 90)
        return handle

    yield start
    for handle in started:
        handle.stop()
