"""The bundled default model (models/protembed-student-v1), served for real, when it has been built."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import numpy as np
import pytest

from protembed.settings import Settings, default_model_dir

pytestmark = pytest.mark.slow


@pytest.fixture
def default_model_settings() -> Settings:
    folder = default_model_dir()
    if not (folder / "model.json").is_file():
        pytest.skip(f"bundled model not built yet: {folder}/model.json missing (run the distillation export)")
    return Settings(providers=["CPUExecutionProvider"], intra_op_threads=1, inter_op_threads=1, grpc_port=0)


def test_bundled_model_serves(
    default_model_settings: Settings, start_thread_server: Callable[[Settings], Any]
) -> None:
    url = start_thread_server(default_model_settings).url
    info = httpx.get(url + "/info", timeout=10).json()
    assert info["model"]["id"] == "protembed-student-v1"
    seqs = ["MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQAPILSRVGDGTQDNLSGAEKAVQVKVKALPDAQ", "MVLSPADKTNVKAAW"]
    mixed = httpx.post(url + "/embed", json={"sequences": seqs}, timeout=60).json()
    for d, s in zip(mixed["data"], seqs, strict=True):
        alone = httpx.post(url + "/embed", json={"sequences": [s]}, timeout=60).json()["data"][0]
        assert len(d["embedding"]) == mixed["dim"]
        assert np.abs(np.array(d["embedding"]) - np.array(alone["embedding"])).max() <= 1e-4


@pytest.mark.parametrize("variant", ["fp32", "int8", "fp16"])
def test_every_shipped_variant_passes_its_self_check(variant: str) -> None:
    """The card's reference vectors (PyTorch fp32) hold for each file the card ships, on this CPU."""
    from protembed.artifact import read_model_card
    from protembed.reference import self_check
    from protembed.runtime import OnnxModel, SessionOptions

    folder = default_model_dir()
    card = read_model_card(folder)
    if card.file(variant) is None:
        pytest.skip(f"the bundled card ships no {variant} file")
    assert card.reference is not None, "the bundled model card has no reference vectors"
    model = OnnxModel.open(folder, variant, SessionOptions(intra_op_threads=1, inter_op_threads=1))
    check = self_check(model, model.loaded)
    assert check.status == "passed", check.detail
