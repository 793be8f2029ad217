"""The serving images built and run for real: buildah builds docker/Dockerfile, podman runs it, and the
tests talk to the container over its published ports (REST /readyz and /embed, gRPC health), run its
HEALTHCHECK, look at its processes and files from inside, and stop it with SIGTERM.

No registry is reachable from these machines, so the CPU image's base is made from Debian's archive
(docker/base_image.py, cached under ~/.cache/protembed/container-base) and passed as PYTHON_IMAGE. The
image is built once per session (about 3 minutes on 2 cores, plus about 2 for debootstrap on a cold
cache). Skipped, with the reason, where buildah/podman/debootstrap are missing or cannot run. The CUDA
image builds the same way when its base (nvidia/cuda) is in local storage; NVIDIA's registry is not
reachable here, so that test says so and skips.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
from container_engine import (
    TEST_PREFIX,
    Container,
    build_image,
    cannot_run_reason,
    image_exists,
    inspect_image,
    load_docker_script,
    podman,
    remove_image,
    remove_leftovers,
    run_flags,
    unavailable_reason,
)
from deploy_helpers import DOCKER_DIR, REPO
from grpc_health.v1 import health_pb2, health_pb2_grpc

from protembed.runtime import OnnxModel
from protembed.testing import free_port

# The whole module shares one image build (minutes), so the per-test timeout must cover it.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

MODEL_ID = "protembed-student-v1"
MODEL_DIR = f"/opt/protembed/models/{MODEL_ID}"
SERVER_UID = 10001
AMINO = "ACDEFGHIKLMNPQRSTVWY"


@pytest.fixture(scope="session")
def engine_workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    remove_leftovers()
    return tmp_path_factory.mktemp("containers")


@pytest.fixture(scope="session")
def base_image(engine_workdir: Path) -> str:
    base = load_docker_script("base_image")
    try:
        name: str = base.ensure_base_image()
    except base.BaseImageError as error:
        pytest.skip(f"cannot make the Debian base image here: {error}")
    reason = cannot_run_reason(name)
    if reason is not None:
        pytest.skip(reason)
    return name


@pytest.fixture(scope="session")
def cpu_image(base_image: str, engine_workdir: Path) -> Iterator[str]:
    tag = f"localhost/{TEST_PREFIX}:cpu-{os.getpid()}"
    took = build_image(DOCKER_DIR / "Dockerfile", tag, {"PYTHON_IMAGE": base_image}, engine_workdir)
    print(f"\nbuilt {tag} in {took:.0f} s")
    try:
        yield tag
    finally:
        remove_image(tag)


def _start(image: str, name: str) -> Container:
    container = Container(name=name, image=image, http_port=free_port(), grpc_port=free_port())
    container.start()
    return container


@pytest.fixture(scope="module")
def served(cpu_image: str) -> Iterator[Container]:
    container = _start(cpu_image, f"{TEST_PREFIX}-{os.getpid()}")
    try:
        container.wait_ready()
        yield container
    finally:
        container.remove()


# --- the image's configuration --------------------------------------------------------------------


def test_image_keeps_healthcheck_user_and_entrypoint(cpu_image: str) -> None:
    image = inspect_image(cpu_image)
    config = image["Config"]
    assert isinstance(config, dict)
    assert config["User"] == f"{SERVER_UID}:{SERVER_UID}"
    assert config["Entrypoint"] == ["/usr/bin/tini", "--"] and config["Cmd"] == ["protembed", "serve"]
    # Kept only in the docker format (buildah bud --format docker); its check is run in the test below.
    healthcheck = image.get("Healthcheck")
    assert isinstance(healthcheck, dict), "HEALTHCHECK dropped: build with --format docker"
    assert healthcheck["Test"] == ["CMD", "python", "/opt/protembed/healthcheck.py"]
    assert {"8000/tcp", "50051/tcp"} <= set(config["ExposedPorts"])


_CA_DIGEST = (
    "import hashlib, pathlib\n"
    "print(hashlib.sha256(pathlib.Path('/etc/ssl/certs/ca-certificates.crt').read_bytes()).hexdigest())"
)


def test_image_holds_the_serving_package_only(served: Container, base_image: str) -> None:
    script = (
        "import importlib.util, json, onnxruntime\n"
        "print(json.dumps({'providers': onnxruntime.get_available_providers(),\n"
        "  'version': onnxruntime.__version__,\n"
        "  'absent': [m for m in ('torch', 'protembed_distill', 'transformers')\n"
        "             if importlib.util.find_spec(m) is None]}))"
    )
    result = served.exec("python", "-c", script)
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    assert found["absent"] == ["torch", "protembed_distill", "transformers"]
    # The CPU build of ONNX Runtime (not onnxruntime-gpu), at the version the lock pins.
    assert "CPUExecutionProvider" in found["providers"], found["providers"]
    assert not [p for p in found["providers"] if p.startswith(("CUDA", "Tensorrt"))], found["providers"]
    pinned = load_docker_script("runtime_requirements").locked_versions(REPO / "requirements" / "lock.txt")
    assert found["version"] == pinned.get("onnxruntime", pinned.get("onnxruntime-gpu"))
    # The build host's CA bundle (bind-mounted for pip during the build) did not stay in the image.
    in_image = served.exec("python", "-c", _CA_DIGEST)
    in_base = podman("run", "--rm", *run_flags(), base_image, "python", "-c", _CA_DIGEST)
    assert in_image.returncode == in_base.returncode == 0, in_image.stderr + in_base.stderr
    assert in_image.stdout == in_base.stdout


# --- the running container --------------------------------------------------------------------------


def test_readyz_and_the_image_healthcheck_pass(served: Container) -> None:
    ready = httpx.get(f"{served.url}/readyz", timeout=10)
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    # `podman healthcheck run` runs the image's HEALTHCHECK command inside the container now.
    check = podman("healthcheck", "run", served.name)
    assert check.returncode == 0, check.stdout + check.stderr
    health = served.state()["Health"]
    assert isinstance(health, dict) and health["Status"] == "healthy"
    assert health["Log"][-1]["ExitCode"] == 0 and "/readyz -> 200" in health["Log"][-1]["Output"]


def test_embed_matches_the_model_run_on_the_host(served: Container) -> None:
    # One sequence per request, so each is a batch of one in the server as on the host (the default int8
    # file quantizes activations per batch, so batch-mates would change the vector: issue 16 item 2).
    model: OnnxModel | None = None
    for i, sequence in enumerate(["MKTAYIAKQRQISFVKSHFSRQ", "GSHMLEDPVDAFQLGHRAVL"]):
        response = httpx.post(
            f"{served.url}/embed", json={"sequences": [{"id": f"s{i}", "sequence": sequence}]}, timeout=60
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["model"] == MODEL_ID and [d["id"] for d in body["data"]] == [f"s{i}"]
        # The same model file under the host's ONNX Runtime; the image pins the same ONNX Runtime
        # version (the lock), so only the CPU vs GPU package build differs.
        model = model or OnnxModel.open(REPO / "models" / MODEL_ID, body["model_variant"])
        expected = model.embed([sequence], ["student"])["student"][0]
        got = np.asarray(body["data"][0]["embedding"], dtype=np.float32)
        assert got.shape == expected.shape == (body["dim"],)
        np.testing.assert_allclose(got, expected, atol=1e-4)


def test_grpc_health_is_serving(served: Container) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{served.grpc_port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_runs_as_non_root(served: Container) -> None:
    # podman top's huser: the uid each container process has on the host (no user namespace here).
    top = podman("top", served.name, "huser", "args")
    assert top.returncode == 0, top.stderr
    rows = [line.split(None, 1) for line in top.stdout.splitlines()[1:] if line.strip()]
    assert any("protembed serve" in args for _, args in rows), top.stdout
    assert {uid for uid, _ in rows} == {str(SERVER_UID)}, top.stdout


def test_model_files_are_read_only_to_the_server(served: Container) -> None:
    script = (
        "import json, os, pathlib\n"
        f"folder = pathlib.Path({MODEL_DIR!r})\n"
        "denied = {}\n"
        "for what, act in [('overwrite', lambda: open(folder / 'model.json', 'r+b')),\n"
        "                  ('create', lambda: (folder / 'planted').touch()),\n"
        "                  ('delete', lambda: (folder / 'model.onnx').unlink())]:\n"
        "    try:\n"
        "        act()\n"
        "        denied[what] = False\n"
        "    except PermissionError:\n"
        "        denied[what] = True\n"
        "owners = sorted({p.stat().st_uid for p in [folder, *folder.iterdir()]})\n"
        "print(json.dumps({'uid': os.getuid(), 'denied': denied, 'owners': owners}))"
    )
    result = served.exec("python", "-c", script)
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    assert found["uid"] == SERVER_UID
    assert found["denied"] == {"overwrite": True, "create": True, "delete": True}
    assert found["owners"] == [0]


# --- shutdown -----------------------------------------------------------------------------------------


def _readyz_stops_answering_200(container: Container, within_s: float) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{container.url}/readyz", timeout=1).status_code != 200:
                return True
        except (httpx.ConnectError, httpx.RemoteProtocolError):
            return True  # the listener is closed: no new work reaches it
        except httpx.TimeoutException:
            pass  # a slow answer says nothing either way
        time.sleep(0.1)
    return False


def test_sigterm_finishes_the_request_in_flight_and_stops(cpu_image: str) -> None:
    container = _start(cpu_image, f"{TEST_PREFIX}-sigterm-{os.getpid()}")
    try:
        container.wait_ready()
        rng = random.Random()  # fresh sequences: a cache hit would answer before the signal
        # The largest request the defaults admit (256 items, 128,000 residues): seconds of work even
        # on an idle host, so the signal always arrives while it is queued.
        sequences = ["".join(rng.choice(AMINO) for _ in range(500)) for _ in range(256)]
        payload = {"sequences": [{"id": f"q{i}", "sequence": s} for i, s in enumerate(sequences)]}
        answer: dict[str, object] = {}

        def post() -> None:
            try:
                answer["response"] = httpx.post(f"{container.url}/embed", json=payload, timeout=120)
            except httpx.HTTPError as error:
                answer["error"] = error

        sender = threading.Thread(target=post)
        sender.start()
        queued_deadline = time.monotonic() + 30
        while time.monotonic() < queued_deadline and "response" not in answer:  # until it is queued
            info = httpx.get(f"{container.url}/info", timeout=5).json()
            if info["batching"]["queued_items"] > 0:
                break
            time.sleep(0.05)
        assert "response" not in answer, "the request finished before the signal: make it larger"
        signalled = time.monotonic()
        kill = podman("kill", "--signal", "TERM", container.name)
        assert kill.returncode == 0, kill.stderr
        # Draining: readiness goes (503, or the listener closes) while the queued request still finishes.
        assert _readyz_stops_answering_200(container, within_s=5), "/readyz still 200 5 s after SIGTERM"
        sender.join(120)
        response = answer.get("response")
        assert isinstance(response, httpx.Response), f"in-flight request lost: {answer.get('error')}"
        assert response.status_code == 200, response.text
        assert [d["id"] for d in response.json()["data"]] == [s["id"] for s in payload["sequences"]]

        while container.state().get("Running") and time.monotonic() - signalled < 60:
            time.sleep(0.2)
        state = container.state()
        stopped_after = time.monotonic() - signalled
        assert not state.get("Running"), "still running 60 s after SIGTERM"
        # tini passes on the server's status: 0, or 128+SIGTERM when uvicorn re-raises the signal after
        # its graceful shutdown; SIGKILL (137) would mean it never stopped by itself.
        assert state["ExitCode"] in (0, 128 + signal.SIGTERM), (state["ExitCode"], container.logs()[-3000:])
        logs = container.logs()
        assert "Application shutdown complete" in logs and "Traceback" not in logs, logs[-3000:]
        print(f"\nstopped {stopped_after:.1f} s after SIGTERM")
    finally:
        container.remove()


# --- the CUDA image -----------------------------------------------------------------------------------


def test_cuda_image_builds_where_its_base_exists(engine_workdir: Path) -> None:
    match = re.search(r"^ARG CUDA_IMAGE=(\S+)$", (DOCKER_DIR / "Dockerfile.gpu").read_text(), re.MULTILINE)
    assert match is not None, "Dockerfile.gpu names its base in ARG CUDA_IMAGE"
    cuda_base = match.group(1)
    if not image_exists(cuda_base):
        pytest.skip(
            f"{cuda_base} is not in local storage and NVIDIA's registry is unreachable here; "
            "load it (podman load -i cuda.tar, saved elsewhere with podman save) to build "
            "docker/Dockerfile.gpu (docker/README.md)"
        )
    tag = f"localhost/{TEST_PREFIX}:gpu-{os.getpid()}"
    try:
        build_image(DOCKER_DIR / "Dockerfile.gpu", tag, {}, engine_workdir)
        config = inspect_image(tag)["Config"]
        assert isinstance(config, dict)
        assert config["User"] == f"{SERVER_UID}:{SERVER_UID}" and config["Healthcheck"]["Test"][-1].endswith(
            "healthcheck.py"
        )
        # Without a GPU the CUDA image serves on the CPU provider (its fallback): run it like the CPU one.
        container = _start(tag, f"{TEST_PREFIX}-gpu-{os.getpid()}")
        try:
            container.wait_ready(timeout_s=240)
            one = {"sequences": [{"id": "a", "sequence": "MKTAYIAKQR"}]}
            response = httpx.post(f"{container.url}/embed", json=one, timeout=60)
            assert response.status_code == 200, response.text
        finally:
            container.remove()
    finally:
        remove_image(tag)
