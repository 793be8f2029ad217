"""Execution provider choice: GPU providers that cannot load are skipped quietly with their reason; a
GPU-only list that cannot run refuses to start."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from protembed import providers
from protembed.errors import ProviderUnavailableError
from protembed.providers import CPU, CUDA, choose_providers

BUILD = [CUDA, CPU]


def test_unloadable_cuda_is_skipped_with_its_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(providers, "gpu_provider_problem", lambda name: "libcublasLt.so.13 not found")
    choice = choose_providers([CUDA, CPU], BUILD)
    assert choice.providers == [CPU]
    assert choice.skipped == {CUDA: "libcublasLt.so.13 not found"}
    assert choice.reason == f"{CPU}, because {CUDA}: libcublasLt.so.13 not found"


def test_loadable_cuda_comes_first_and_cpu_stays_as_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(providers, "gpu_provider_problem", lambda name: None)
    choice = choose_providers([CUDA, CPU], BUILD)
    assert choice.providers == [CUDA, CPU] and not choice.skipped


def test_cuda_alone_that_cannot_load_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(providers, "gpu_provider_problem", lambda name: "no NVIDIA driver")
    with pytest.raises(ProviderUnavailableError, match="CUDAExecutionProvider: no NVIDIA driver"):
        choose_providers([CUDA], BUILD)
    with pytest.raises(ProviderUnavailableError, match="not in this onnxruntime build"):
        choose_providers(["ROCMExecutionProvider"], BUILD)


def test_a_provider_missing_from_the_build_is_skipped() -> None:
    choice = choose_providers(["ROCMExecutionProvider", CPU], [CPU])
    assert choice.providers == [CPU]
    assert choice.skipped == {"ROCMExecutionProvider": "not in this onnxruntime build"}


def _cuda_usable() -> bool:
    import onnxruntime as ort

    return CUDA in ort.get_available_providers() and providers.gpu_provider_problem(CUDA) is None


def test_opening_with_cuda_listed_prints_no_onnxruntime_errors(tiny_model_dir: Path) -> None:
    """The real thing, in a fresh process (ONNX Runtime writes its errors to stderr from C++)."""
    if _cuda_usable():
        pytest.skip("CUDA loads on this machine: nothing to fall back from")
    code = textwrap.dedent(
        f"""
        import logging
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")
        from protembed.runtime import OnnxModel, SessionOptions
        m = OnnxModel.open({str(tiny_model_dir)!r}, "auto", SessionOptions(providers={BUILD!r}))
        print("provider", m.provider, m.variant)
        """
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "provider CPUExecutionProvider int8" in done.stdout
    assert "[E:onnxruntime" not in done.stderr and "ERROR" not in done.stderr, done.stderr
    why = [line for line in done.stderr.splitlines() if "execution provider:" in line]
    assert len(why) == 1 and why[0].startswith("INFO") and f"because {CUDA}:" in why[0], done.stderr


def test_serve_refuses_to_start_on_cuda_alone(tiny_model_dir: Path, tmp_path: Path) -> None:
    if _cuda_usable():
        pytest.skip("CUDA loads on this machine")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(sys.path),
        "PROTEMBED_MODEL": str(tiny_model_dir),
        "PROTEMBED_PROVIDERS": CUDA,
        "PROTEMBED_CHUNK_OVERLAP": "16",
        "PROTEMBED_PORT": "0",
        "PROTEMBED_GRPC_PORT": "0",
    }
    done = subprocess.run(
        [sys.executable, "-m", "protembed", "serve"], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode != 0
    assert "none of the requested execution providers ['CUDAExecutionProvider'] can run here" in done.stderr
