"""The chart's probes and drain against the real server, started with the environment a pod gets.

The chart renders the pod's env (ConfigMap + env); the real `protembed serve` runs with it (on the tiny
test model, loopback, free ports), and the checks the kubelet and Docker would make are made over the
wire: HTTP /healthz and /readyz, grpc.health.v1 for the gRPC probe option, the image's healthcheck.py,
and SIGTERM ending the process well inside the grace period the chart leaves after its preStop sleep.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from deploy_helpers import DOCKER_DIR, REPO, Rendered
from grpc_health.v1 import health_pb2, health_pb2_grpc

from protembed.testing import spawn_server


def _pod_env(rendered: Rendered, model_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROTEMBED_") and k != "REDIS_URL"}
    env.update(rendered.container_env())
    # The pod's model path and wildcard bind only exist inside the image / a pod network namespace.
    env.update({"PROTEMBED_MODEL": str(model_dir), "PROTEMBED_HOST": "127.0.0.1"})
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "service"), str(REPO / "distill")])
    return env


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture
def pod(tmp_path: Path) -> Iterator[Callable[[dict[str, str]], subprocess.Popen[bytes]]]:
    """Start `python -m protembed serve` with a pod's env; always stopped at teardown."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(env: dict[str, str]) -> subprocess.Popen[bytes]:
        proc = spawn_server(env, tmp_path / "server.log", cwd=tmp_path)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_probes_and_drain_against_the_real_server(
    render: Callable[..., Rendered],
    pod: Callable[[dict[str, str]], subprocess.Popen[bytes]],
    tiny_model_dir: Path,
    free_ports: tuple[int, int],
    tmp_path: Path,
) -> None:
    http_port, grpc_port = free_ports
    rendered = render(
        {
            "settings": {"port": http_port, "grpc_port": grpc_port, "intra_op_threads": 1},
            "probes": {"grpc": {"enabled": True, "service": "protembed.v1.Embedder"}},
        }
    )
    proc = pod(_pod_env(rendered, tiny_model_dir))
    base = f"http://127.0.0.1:{http_port}"
    # The startup probe's budget is what the kubelet would allow for load + warm-up.
    startup = rendered.container["startupProbe"]
    deadline = time.monotonic() + min(60, startup["periodSeconds"] * startup["failureThreshold"])
    while not _answers(base + "/readyz"):
        assert proc.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "not ready within the startup budget"
        time.sleep(0.1)

    container = rendered.container
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert httpx.get(base + "/healthz", timeout=5).status_code == 200
    assert httpx.get(base + "/metrics", timeout=5).status_code == 200  # ServiceMonitor endpoint

    grpc_check = container["readinessProbe"]["grpc"]
    with grpc.insecure_channel(f"127.0.0.1:{grpc_check['port']}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in (grpc_check["service"], ""):
            # Like the kubelet, retry for a moment: the health status mirrors readiness by polling.
            deadline = time.monotonic() + 10
            while True:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
                if reply.status == health_pb2.HealthCheckResponse.SERVING or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING, service

    healthcheck = subprocess.run(
        [sys.executable, str(DOCKER_DIR / "healthcheck.py")],
        env={"PROTEMBED_HOST": "0.0.0.0", "PROTEMBED_PORT": str(http_port)},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert healthcheck.returncode == 0, healthcheck.stderr

    # Kubernetes: preStop sleep, then SIGTERM; the rest of the grace period is the drain budget.
    spec = rendered.pod_spec
    sleep_s = int(container["lifecycle"]["preStop"]["exec"]["command"][1])
    budget_s = spec["terminationGracePeriodSeconds"] - sleep_s
    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(timeout=budget_s)
    except subprocess.TimeoutExpired:
        pytest.fail(f"server still running {budget_s}s after SIGTERM: the kubelet would SIGKILL it")
    log = (tmp_path / "server.log").read_text()
    # uvicorn re-raises the SIGTERM it handled once shutdown is done, so "killed by SIGTERM" (143 under
    # tini) is a normal end; the lifespan shutdown having run is what shows the drain happened.
    assert code in (0, -signal.SIGTERM), log[-2000:]
    assert "Application shutdown complete" in log, log[-2000:]


@pytest.fixture
def free_ports() -> tuple[int, int]:
    import socket

    sockets = [socket.socket() for _ in range(2)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        first, second = (int(s.getsockname()[1]) for s in sockets)
        return first, second
    finally:
        for s in sockets:
            s.close()
