"""The benchmarked server: ``python -m protembed serve`` on loopback ports, configured through PROTEMBED_*
variables from a :class:`ServeBenchConfig`, and its readiness wait."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from protembed.testing import (
    SERVE_COMMAND,
    free_port,
    log_tail,
    serve_env,
    spawn_server,
    stop_server,
    wait_ready,
)
from protembed_bench.serve.config import ServeBenchConfig


class ServerProcess:
    """``python -m protembed serve`` on loopback ports, configured through PROTEMBED_* variables."""

    def __init__(self, cfg: ServeBenchConfig, log_path: Path) -> None:
        self.port = free_port()
        self.grpc_port = free_port() if "grpc" in cfg.transports else 0
        self.url = f"http://127.0.0.1:{self.port}"
        paths = [p for p in sys.path if p and Path(p).is_dir()]
        pythonpath = os.pathsep.join(dict.fromkeys([*paths, *filter(None, [os.environ.get("PYTHONPATH")])]))
        env = serve_env(
            self.port,
            {
                "PYTHONPATH": pythonpath,
                "PROTEMBED_GRPC_PORT": str(self.grpc_port),
                "PROTEMBED_MODEL": str(Path(cfg.model_dir).resolve()),
                "PROTEMBED_MODEL_VARIANT": cfg.variant,
                "PROTEMBED_PROVIDERS": "CPUExecutionProvider",
                "PROTEMBED_INTRA_OP_THREADS": str(cfg.threads),
                "PROTEMBED_INTER_OP_THREADS": "1",
                "PROTEMBED_LOG_LEVEL": "warning",
                **cfg.server_env,
            },
        )
        self.log_path = log_path
        self.proc = spawn_server(env, log_path)
        self.command = list(SERVE_COMMAND)

    def wait_ready(self, timeout_s: float) -> None:
        wait_ready(self.url, self.proc, self.log_path, timeout_s)

    def log_tail(self, lines: int = 15) -> str:
        return log_tail(self.log_path, lines)

    def stop(self) -> None:
        stop_server(self.proc)
