"""Start and stop the real server as a subprocess: ``python -m protembed serve`` with the given environment,
and a real redis-server beside it.

Used by the test suite and by the benchmarks (``protembed bench serve``, the soak), so tests start the
server and Redis exactly as the benchmarks do. Standard library only (no torch, no test framework).
"""

from __future__ import annotations

import http.client
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


SERVE_COMMAND = [sys.executable, "-m", "protembed", "serve"]


def spawn_server(env: dict[str, str], log_path: Path, cwd: Path | None = None) -> subprocess.Popen[bytes]:
    """``python -m protembed serve`` (the real command) with ``env``, its output going to ``log_path``;
    the one way tests and benchmarks start it."""
    with log_path.open("wb") as fh:
        return subprocess.Popen(SERVE_COMMAND, cwd=cwd, env=env, stdout=fh, stderr=subprocess.STDOUT)


def serve_env(port: int, settings: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a server on loopback ``port``: this process's own, less its PROTEMBED_* variables
    and REDIS_URL (the server runs on its defaults plus ``settings``, not on whatever the caller's shell
    sets)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROTEMBED_") and k != "REDIS_URL"}
    env.update({"PROTEMBED_HOST": "127.0.0.1", "PROTEMBED_PORT": str(port)})
    env.update(settings or {})
    return env


_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def is_ready(url: str) -> bool:
    """Whether ``url``/readyz answers 200 (not ready, refused and timeouts all read as no)."""
    try:
        # No proxy: the server is on the loopback whatever http_proxy the environment names.
        with _DIRECT.open(url + "/readyz", timeout=1) as response:
            return int(response.status) == 200
    except (urllib.error.URLError, http.client.HTTPException, OSError):
        return False


def wait_ready(url: str, proc: subprocess.Popen[bytes], log_path: Path, timeout_s: float = 90) -> None:
    """Until the server at ``url`` is ready; RuntimeError with its log's tail when it exits first or the time
    runs out (a ready server is one that loaded and self-checked its model)."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if is_ready(url):
            return
        if proc.poll() is not None:
            tail = log_tail(log_path, 40)
            raise RuntimeError(f"server exited with {proc.returncode} during start:\n{tail}")
        time.sleep(0.1)
    raise RuntimeError(f"server not ready after {timeout_s:.0f}s:\n{log_tail(log_path, 40)}")


def log_tail(log_path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(log_path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM (the server drains), SIGKILL if it has not exited 15 s later."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def wait_until(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if check():
            return
        time.sleep(0.05)
    raise TimeoutError(f"timed out after {timeout_s}s waiting for {what}")


@dataclass
class RedisServer:
    """A real redis-server on a free port, no persistence; can be killed and restarted on the same port.
    ``extra``: more redis-server arguments (e.g. ``--maxmemory 64mb``)."""

    workdir: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    extra: tuple[str, ...] = ()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise FileNotFoundError("redis-server is not installed (apt-get install redis-server)")
        self.proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
                *self.extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        proc = self.proc
        what = f"redis-server on port {self.port}"
        wait_until(lambda: proc.poll() is not None or self._answers(), 10, what)
        if proc.poll() is not None:
            raise RuntimeError(f"redis-server {' '.join(self.extra)} exited with {proc.returncode}")

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None
