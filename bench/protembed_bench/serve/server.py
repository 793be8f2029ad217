"""The benchmarked server: ``python -m protembed serve`` on loopback ports, configured through PROTEMBED_*
variables from a :class:`ServeBenchConfig`, and its readiness wait."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from protembed.testing import SERVE_COMMAND, free_port, spawn_server, stop_server
from protembed_bench.serve.config import ServeBenchConfig


class ServerProcess:
    """``python -m protembed serve`` on loopback ports, configured through PROTEMBED_* variables."""

    def __init__(self, cfg: ServeBenchConfig, log_path: Path) -> None:
        self.port = free_port()
        self.grpc_port = free_port() if "grpc" in cfg.transports else 0
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("PROTEMBED_") and k != "REDIS_URL"}
        paths = [p for p in sys.path if p and Path(p).is_dir()]
        env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys([*paths, *filter(None, [env.get("PYTHONPATH")])]))
        env.update(
            {
                "PROTEMBED_HOST": "127.0.0.1",
                "PROTEMBED_PORT": str(self.port),
                "PROTEMBED_GRPC_PORT": str(self.grpc_port),
                "PROTEMBED_MODEL": str(Path(cfg.model_dir).resolve()),
                "PROTEMBED_MODEL_VARIANT": cfg.variant,
                "PROTEMBED_PROVIDERS": "CPUExecutionProvider",
                "PROTEMBED_INTRA_OP_THREADS": str(cfg.threads),
                "PROTEMBED_INTER_OP_THREADS": "1",
                "PROTEMBED_LOG_LEVEL": "warning",
                **cfg.server_env,
            }
        )
        self.log_path = log_path
        self.proc = spawn_server(env, log_path)
        self.command = list(SERVE_COMMAND)

    def wait_ready(self, timeout_s: float) -> None:
        import httpx

        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"server exited with {self.proc.returncode} during start:\n{self.log_tail()}"
                )
            try:
                if httpx.get(self.url + "/readyz", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"server not ready after {timeout_s:.0f}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        stop_server(self.proc)
