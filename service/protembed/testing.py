"""Start and stop the real server as a subprocess: ``python -m protembed serve`` with the given environment.

Used by the test suite and by ``protembed bench serve``, so tests start the server exactly as the benchmark
does. Standard library only (no torch, no test framework).
"""

from __future__ import annotations

import socket
import subprocess
import sys
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


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM (the server drains), SIGKILL if it has not exited 15 s later."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
