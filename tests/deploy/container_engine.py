"""Build the images with buildah and run them with podman, as docker/README.md describes for hosts with
no image registry: the CPU image's base is made from Debian's archive (docker/base_image.py).

Only what this host needs differs from a plain `docker build` / `docker run`, and none of it changes
the image: the base image name (a build arg), the host's CA bundle for pip during the build (a bind
mount over the base's own bundle, not kept in the image), and podman's runtime and ulimits at run time.
"""

from __future__ import annotations

import importlib.util
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import httpx
from deploy_helpers import DOCKER_DIR, REPO

TOOLS = ("buildah", "podman", "debootstrap", "runc")
INSTALL_HINT = "Debian: apt-get install buildah podman debootstrap runc"
# The CA bundle Debian's pip (and so the venv's, made by Debian's ensurepip) verifies TLS with: the base
# has the file, so the host's bundle is bind-mounted over it for RUN steps and the image keeps Debian's.
_DEBIAN_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
# podman's default ulimits for rootful containers (nofile 1048576, nproc 4194304) exceed the hard
# limits of hosts like this one, and raising a limit needs CAP_SYS_RESOURCE, so runc fails with
# "error setting rlimit ... operation not permitted". Explicit values within the host's limits start it.
_NPROC = 4096  # processes + threads of uid 10001: the server and its thread pools need far fewer


def load_docker_script(name: str) -> ModuleType:
    """Import a docker/ script by path (docker/ is no package: its scripts run inside the build)."""
    spec = importlib.util.spec_from_file_location(f"docker_{name}", DOCKER_DIR / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look the module up while building the class
    spec.loader.exec_module(module)
    return module


def unavailable_reason() -> str | None:
    """Why images cannot be built and run here, or None when they can."""
    if not sys.platform.startswith("linux"):
        return f"buildah/podman need Linux (this is {sys.platform})"
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        return f"{', '.join(missing)} not installed ({INSTALL_HINT})"
    if os.geteuid() != 0:
        return "needs root: debootstrap makes the base image and the tests run rootful podman"
    return None


def _run(command: list[str], timeout_s: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
    if check and result.returncode != 0:
        output = result.stdout + result.stderr
        raise AssertionError(f"{' '.join(command)} -> exit {result.returncode}\n{output}")
    return result


def host_ca_bundle() -> Path | None:
    """The CA bundle this host trusts, to pass to pip in the build: the one pip is told to use, else the
    system bundle. Behind a TLS-inspecting proxy it holds the proxy's CA, which Debian's bundle in the
    image lacks; elsewhere it is Debian's own list (plus local CAs) and passing it changes nothing."""
    for name in ("PIP_CERT", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE"):
        value = os.environ.get(name)
        if value and Path(value).is_file():
            return Path(value)
    system = Path(_DEBIAN_CA_BUNDLE)
    return system if system.is_file() else None


def build_image(
    dockerfile: Path, tag: str, build_args: dict[str, str], workdir: Path, timeout_s: float = 900
) -> float:
    """`buildah bud` from the repository root; returns the seconds it took. The build log goes to
    workdir/build-<tag>.log and its tail into the assertion message when the build fails.

    --format docker: the OCI image format has no HEALTHCHECK, and buildah drops it (with a warning)."""
    command = ["buildah", "bud", "--format", "docker", "-f", str(dockerfile), "-t", tag]
    for name, value in build_args.items():
        command += ["--build-arg", f"{name}={value}"]
    ca = host_ca_bundle()
    if ca is not None:
        command += ["-v", f"{ca}:{_DEBIAN_CA_BUNDLE}:ro"]
    command.append(str(REPO))
    log = workdir / f"build-{tag.rsplit('/', 1)[-1].replace(':', '-')}.log"
    started = time.monotonic()
    with log.open("w") as fh:
        result = subprocess.run(command, stdout=fh, stderr=subprocess.STDOUT, timeout=timeout_s)
    took = time.monotonic() - started
    if result.returncode != 0:
        tail = "\n".join(log.read_text().splitlines()[-40:])
        raise AssertionError(f"buildah bud -f {dockerfile.name} failed (exit {result.returncode}):\n{tail}")
    return took


def podman(*args: str, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    """One podman command, not checked: the caller asserts on its result."""
    return _run(["podman", *args], timeout_s=timeout_s, check=False)


def cannot_run_reason(image: str) -> str | None:
    """Why podman cannot run a container of ``image`` here (e.g. nested in a sandbox without the kernel
    features it needs), or None. Asked of the base image, so a failure is the host's, not our image's."""
    result = podman("run", "--rm", *run_flags(), image, "python", "-c", "import venv")
    if result.returncode != 0:
        return f"podman cannot run a container here: {result.stderr.strip()[-500:]}"
    return None


TEST_PREFIX = "protembed-test"  # containers protembed-test-*-<pid>, images localhost/protembed-test:*-<pid>


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_leftovers() -> list[str]:
    """Remove the containers and images of earlier test sessions that were killed before their teardown
    (their names end in the pid of a process that is gone); returns what was removed."""
    removed: list[str] = []
    names = podman("ps", "-a", "--filter", f"name=^{TEST_PREFIX}-", "--format", "{{.Names}}").stdout.split()
    tags = podman("images", f"localhost/{TEST_PREFIX}", "--format", "{{.Repository}}:{{.Tag}}").stdout.split()
    for name in names:
        pid = name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            podman("rm", "--force", "--time", "0", name)
            removed.append(name)
    for tag in tags:
        pid = tag.rsplit("-", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            remove_image(tag)
            removed.append(tag)
    return removed


def remove_image(tag: str) -> None:
    _run(["podman", "rmi", "--force", tag], check=False)


def image_exists(name: str) -> bool:
    return _run(["podman", "image", "exists", name], check=False).returncode == 0


def inspect_image(tag: str) -> dict[str, object]:
    return json.loads(_run(["podman", "image", "inspect", tag]).stdout)[0]  # type: ignore[no-any-return]


def run_flags() -> list[str]:
    """podman run flags this host needs (runc, ulimits within the host's hard limits)."""
    nofile = min(resource.getrlimit(resource.RLIMIT_NOFILE)[1], 65536)
    nproc = min(resource.getrlimit(resource.RLIMIT_NPROC)[1], _NPROC)
    limits = ["--ulimit", f"nofile={nofile}:{nofile}", "--ulimit", f"nproc={nproc}:{nproc}"]
    return ["--runtime", "runc", *limits]


@dataclass
class Container:
    """One running container of an image, its REST and gRPC ports published on 127.0.0.1."""

    name: str
    image: str
    http_port: int
    grpc_port: int
    env: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self) -> None:
        command = ["podman", "run", "-d", "--name", self.name, *run_flags()]
        command += ["-p", f"127.0.0.1:{self.http_port}:8000", "-p", f"127.0.0.1:{self.grpc_port}:50051"]
        for key, value in self.env.items():
            command += ["-e", f"{key}={value}"]
        _run([*command, self.image])

    def state(self) -> dict[str, object]:
        return json.loads(_run(["podman", "inspect", self.name]).stdout)[0]["State"]  # type: ignore[no-any-return]

    def logs(self) -> str:
        result = _run(["podman", "logs", self.name], check=False)
        return result.stdout + result.stderr

    def exec(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return _run(["podman", "exec", self.name, *argv], check=False)

    def wait_ready(self, timeout_s: float = 120) -> float:
        """Seconds until /readyz answers 200; fails with the container's log when it exits or times out."""
        started = time.monotonic()
        while time.monotonic() - started < timeout_s:
            if not self.state().get("Running"):
                raise AssertionError(f"container {self.name} exited while starting:\n{self.logs()[-4000:]}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return time.monotonic() - started
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        raise AssertionError(f"{self.name} not ready after {timeout_s:.0f} s:\n{self.logs()[-4000:]}")

    def remove(self) -> None:
        _run(["podman", "rm", "--force", "--time", "5", self.name], check=False)
