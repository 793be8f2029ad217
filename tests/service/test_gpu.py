"""The CUDA execution provider: runs where onnxruntime can open a CUDA device, skipped (with the reason)
elsewhere."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from protembed.core import EmbedInput, EmbedOptions, Engine
from protembed.settings import Settings
from tiny_model import reference_embeddings

pytestmark = pytest.mark.gpu


def cuda_unavailable_reason(model: Path) -> str | None:
    import onnxruntime as ort

    from protembed.providers import gpu_provider_problem

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return "this onnxruntime build has no CUDAExecutionProvider"
    return gpu_provider_problem("CUDAExecutionProvider")


async def test_engine_runs_on_cuda_and_matches_cpu(
    make_settings: Callable[..., Settings], tiny_model_dir: Path
) -> None:
    reason = cuda_unavailable_reason(tiny_model_dir)
    if reason is not None:
        pytest.skip(reason)
    eng = Engine.from_settings(make_settings(providers=["CUDAExecutionProvider", "CPUExecutionProvider"]))
    await eng.start()
    try:
        assert eng.provider == "CUDAExecutionProvider" and eng.info()["provider"] == "CUDAExecutionProvider"
        assert eng.info()["batching"]["max_batch_tokens"] == 16384  # large batches on a GPU
        seqs = ["MKTAYIAKQRQISFVKSHFSRQ", "MK", "W" * 60]
        resp = await eng.embed([EmbedInput(s) for s in seqs], EmbedOptions())
        for r, s in zip(resp.results, seqs, strict=True):
            assert np.abs(r.embedding - reference_embeddings(tiny_model_dir, s)["student"]).max() <= 1e-4
        info = eng.metrics.registry.get_sample_value(
            "protembed_model_info",
            {
                "id": "protembed-tiny",
                "version": "0.0.1",
                "variant": "fp32",
                "provider": "CUDAExecutionProvider",
                "server_version": "0.1.0",
            },
        )
        assert info == 1.0
    finally:
        await eng.stop()
