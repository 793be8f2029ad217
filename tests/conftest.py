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

import httpx
import hypothesis
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent / "fixtures"))

from protembed.settings import Settings  # noqa: E402
from protembed.testing import (  # noqa: E402
    RedisServer,
    free_port,
    spawn_server,
    stop_server,
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


def _ready(url: str) -> bool:
    try:
        return httpx.get(url + "/readyz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture
def start_server_process(tmp_path: Path, tiny_model_dir: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Run ``python -m protembed serve`` (the real command) on a free port; env overrides via kwargs."""
    started: list[ServerProcess] = []

    def start(**env_overrides: str) -> ServerProcess:
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("PROTEMBED_") and k != "REDIS_URL"}
        env.update(TEST_ENV)
        env.update(
            {
                "PROTEMBED_MODEL": str(tiny_model_dir),
                "PROTEMBED_PORT": str(port),
                "PROTEMBED_HOST": "127.0.0.1",
                "PYTHONPATH": os.pathsep.join([str(REPO / "service"), str(REPO / "distill")]),
            }
        )
        env.update(env_overrides)
        log = tmp_path / f"server-{port}.log"
        proc = spawn_server(env, log, cwd=tmp_path)
        handle = ServerProcess(f"http://127.0.0.1:{port}", proc, log)
        started.append(handle)
        try:
            wait_until(lambda: proc.poll() is not None or _ready(handle.url), 90, "server readiness")
        except TimeoutError:
            handle.stop()
            raise RuntimeError(f"server did not become ready:\n{log.read_text()[-3000:]}") from None
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        return handle

    yield start
    for handle in started:
        handle.stop()
