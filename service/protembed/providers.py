"""Which ONNX Runtime execution providers can really run here, decided before a session asks for them.

onnxruntime-gpu lists CUDAExecutionProvider whether or not the machine has a driver, a device and the
CUDA / cuDNN libraries it links; asking for it anyway makes ONNX Runtime print two ERROR lines on every
start ("libcublasLt.so.13: cannot open shared object file", "Require cuDNN 9.* and CUDA 13.*") before it
falls back to the CPU. So each GPU provider is probed first, quietly: the NVIDIA driver, a device, and
whether the provider's own shared library loads (its dynamic linker error names the missing library).
A provider that cannot load is skipped with its reason, logged once at INFO; the operator who asked for
GPU providers only (no CPUExecutionProvider in the list) gets an error instead of a silent CPU.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import importlib.util
import io
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass

from protembed.errors import ProviderUnavailableError

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
# GPU providers and the library onnxruntime-gpu ships for each (in onnxruntime/capi/).
_PROVIDER_LIBRARIES = {
    CUDA: "libonnxruntime_providers_cuda.so",
    "TensorrtExecutionProvider": "libonnxruntime_providers_tensorrt.so",
}


@dataclass(frozen=True)
class ProviderChoice:
    """The providers a session will be given, in order, and why any requested one was left out."""

    providers: list[str]
    skipped: dict[str, str]

    @property
    def reason(self) -> str:
        """One line: what runs and why (for the start-up log and /info)."""
        first = self.providers[0]
        if not self.skipped:
            return f"{first} (first requested provider available)"
        why = "; ".join(f"{name}: {reason}" for name, reason in self.skipped.items())
        return f"{first}, because {why}"


def _cuda_device_count() -> tuple[int, str]:
    """Devices the NVIDIA driver sees, or 0 and why not."""
    try:
        libcuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return 0, "no NVIDIA driver (libcuda.so.1 not found)"
    if libcuda.cuInit(0) != 0:
        return 0, "the NVIDIA driver did not initialise (cuInit failed; no device or no permission)"
    count = ctypes.c_int(0)
    if libcuda.cuDeviceGetCount(ctypes.byref(count)) != 0 or count.value == 0:
        return 0, "the NVIDIA driver sees no CUDA device"
    return count.value, ""


def _preload_nvidia_wheels() -> None:
    """Load CUDA and cuDNN from the nvidia-* wheels (the `cuda` extra) when they are installed, so a
    GPU host needs no system-wide CUDA; onnxruntime's own helper, with its console chatter kept quiet."""
    if importlib.util.find_spec("nvidia") is None:
        return
    import onnxruntime as ort

    preload = getattr(ort, "preload_dlls", None)
    if preload is None:
        return
    quiet = io.StringIO()
    with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet), contextlib.suppress(Exception):
        preload()


@functools.cache
def gpu_provider_problem(provider: str) -> str | None:
    """Why ``provider`` (a GPU provider of onnxruntime-gpu) cannot run here, or None when it can."""
    import onnxruntime as ort

    library = _PROVIDER_LIBRARIES.get(provider)
    if library is None:
        return None  # not a provider we know how to probe: let ONNX Runtime decide
    devices, why = _cuda_device_count()
    if not devices:
        return why
    _preload_nvidia_wheels()
    capi = os.path.join(os.path.dirname(ort.__file__), "capi")
    try:
        # The provider library needs the shared bridge loaded globally first, as ONNX Runtime does.
        ctypes.CDLL(os.path.join(capi, "libonnxruntime_providers_shared.so"), mode=ctypes.RTLD_GLOBAL)
        ctypes.CDLL(os.path.join(capi, library))
    except OSError as exc:
        return f"its runtime libraries do not load ({exc}); install protembed[cuda] or the CUDA image"
    return None


def choose_providers(requested: Sequence[str], available: Sequence[str]) -> ProviderChoice:
    """The usable providers among ``requested``, in order.

    A provider missing from this onnxruntime build, or a GPU provider that cannot load here, is skipped
    with its reason. CPUExecutionProvider is appended as the last resort only when the operator listed
    it (the default list does); a list of GPU providers alone means "GPU or nothing", and nothing usable
    raises :class:`ProviderUnavailableError` naming each reason.
    """
    chosen: list[str] = []
    skipped: dict[str, str] = {}
    for name in requested:
        if name not in available:
            skipped[name] = "not in this onnxruntime build"
            continue
        why = gpu_provider_problem(name) if name in _PROVIDER_LIBRARIES else None
        if why is not None:
            skipped[name] = why
            continue
        chosen.append(name)
    if not chosen:
        reasons = "; ".join(f"{n}: {r}" for n, r in skipped.items()) or "no providers requested"
        raise ProviderUnavailableError(
            f"none of the requested execution providers {list(requested)} can run here ({reasons}); "
            "add CPUExecutionProvider to the list to allow the CPU"
        )
    if CPU in requested and CPU not in chosen:
        chosen.append(CPU)
    return ProviderChoice(chosen, skipped)


def likely_provider(requested: Sequence[str]) -> str:
    """The provider a session will run on, before one exists."""
    import onnxruntime as ort

    try:
        return choose_providers(requested, ort.get_available_providers()).providers[0]
    except ProviderUnavailableError:
        return requested[0] if requested else CPU
