"""The chart's probes and drain against the real server, started with the environment a pod gets.

The chart renders the pod's env (ConfigMap + env); the real `protembed serve` runs with it (on the tiny
test model, loopback, free ports), and the checks the kubelet and Docker would make are made over the
wire: HTTP /healthz and /readyz, grpc.health.v1 for the gRPC probe option, the image's healthcheck.py,
and SIGTERM ending the process well inside the grace period the chart leaves after its preStop sleep.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import grpc
import httpx
import pytest
from deploy_helpers import DOCKER_DIR, Rendered
from grpc_health.v1 import health_pb2, health_pb2_grpc

pytestmark = pytest.mark.slow


def _pod_env(rendered: Rendered, model_dir: str) -> dict[str, str]:
    env = rendered.container_env()
    # The pod's model path and wildcard bind only exist inside the image / a pod network namespace.
    env.update({"PROTEMBED_MODEL": model_dir, "PROTEMBED_HOST": "127.0.0.1"})
    return env


def test_probes_and_drain_against_the_real_server(
    render: Callable[..., Rendered],
    start_server_process: Callable[..., Any],
    tiny_model_dir: Any,
    free_ports: tuple[int, int],
) -> None:
    http_port, grpc_port = free_ports
    rendered = render(
        {
            "settings": {"port": http_port, "grpc_port": grpc_port, "intra_op_threads": 1},
            "probes": {"grpc": {"enabled": True, "service": "protembed.v1.Embedder"}},
        }
    )
    env = _pod_env(rendered, str(tiny_model_dir))
    server = start_server_process(**env)
    base = f"http://127.0.0.1:{http_port}"
    assert server.url == base, "the server must listen on the port the chart's probes use"

    container = rendered.container
    for probe in ("livenessProbe",):
        path = container[probe]["httpGet"]["path"]
        assert httpx.get(base + path, timeout=5).status_code == 200, path
    assert httpx.get(base + "/readyz", timeout=5).status_code == 200
    assert httpx.get(base + "/metrics", timeout=5).status_code == 200  # ServiceMonitor endpoint

    grpc_check = container["readinessProbe"]["grpc"]
    with grpc.insecure_channel(f"127.0.0.1:{grpc_check['port']}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in (grpc_check["service"], ""):
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
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
    server.proc.send_signal(signal.SIGTERM)
    try:
        code = server.proc.wait(timeout=budget_s)
    except subprocess.TimeoutExpired:
        pytest.fail(f"server still running {budget_s}s after SIGTERM: the kubelet would SIGKILL it")
    assert code == 0, server.log.read_text()[-2000:]


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
