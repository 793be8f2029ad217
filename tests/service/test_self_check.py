"""The warm-up self-check against the card's reference vectors: a model whose numbers are wrong is never
ready, and the check's figures are in /info and /metrics either way."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from protembed.artifact import read_model_card, write_model_card
from protembed.core import EmbedInput, EmbedOptions, Engine
from protembed.errors import NotReadyError
from protembed.reference import REFERENCE_FILE, compare, read_reference, tolerance_for
from protembed.settings import Settings


def _corrupt_reference(src: Path, dst: Path) -> Path:
    """A copy of the model whose reference says something else for one student vector (checksum redone,
    so only the numbers are wrong)."""
    shutil.copytree(src, dst)
    card = read_model_card(dst)
    assert card.reference is not None
    sequences, outputs = read_reference(dst, card.reference)
    arrays = {"sequences": np.array(sequences)}
    for name, values in outputs.items():
        for i, v in enumerate(values):
            arrays[f"{name}/{i}"] = v + (0.05 if (name, i) == ("student", 1) else 0.0)
    np.savez_compressed(dst / REFERENCE_FILE, **arrays)  # type: ignore[arg-type]
    write_model_card(dst, card.model_dump(mode="json"))
    return dst


async def test_a_true_model_passes_and_reports_its_figures(make_settings: Callable[..., Settings]) -> None:
    eng = Engine.from_settings(make_settings())
    await eng.start()
    try:
        assert eng.ready
        check = eng.info()["self_check"]
        assert isinstance(check, dict) and check["status"] == "passed"
        assert check["max_abs"] <= check["tolerance"]["max_abs"]
        assert "int8 on CPUExecutionProvider" in check["detail"]
        sample = eng.metrics.registry.get_sample_value
        assert sample("protembed_self_check_failed") == 0.0
        assert sample("protembed_self_check_max_abs_diff") == pytest.approx(check["max_abs"])
    finally:
        await eng.stop()


async def test_wrong_reference_keeps_the_engine_not_ready(
    make_settings: Callable[..., Settings], tiny_model_dir: Path, tmp_path: Path
) -> None:
    model = _corrupt_reference(tiny_model_dir, tmp_path / "wrong")
    eng = Engine.from_settings(make_settings(model=model))
    await eng.start()
    try:
        assert not eng.ready
        assert "reference self-check failed on student" in eng.not_ready_reason
        assert eng.metrics.registry.get_sample_value("protembed_self_check_failed") == 1.0
        with pytest.raises(NotReadyError):
            await eng.embed([EmbedInput("MKTAYIAK")], EmbedOptions())
    finally:
        await eng.stop()


def test_wrong_reference_over_http(
    make_settings: Callable[..., Settings],
    tiny_model_dir: Path,
    tmp_path: Path,
    start_thread_server: Callable[[Settings], Any],
) -> None:
    """The process lives (liveness) but never reports ready, and says why."""
    model = _corrupt_reference(tiny_model_dir, tmp_path / "wrong")
    handle = start_thread_server(make_settings(model=model))
    with httpx.Client(base_url=handle.url) as client:
        assert client.get("/healthz").status_code == 200
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert "reference self-check failed on student" in ready.json()["error"]["message"]
        assert client.post("/embed", json={"sequences": ["MKTAYIAK"]}).status_code == 503
        assert "protembed_self_check_failed 1.0" in client.get("/metrics").text


async def test_a_card_without_reference_is_served_and_says_so(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    from tiny_model import build_tiny_model

    model = build_tiny_model(tmp_path / "old", reference=False)
    eng = Engine.from_settings(make_settings(model=model))
    await eng.start()
    try:
        assert eng.ready
        check = eng.info()["self_check"]
        assert isinstance(check, dict) and check["status"] == "skipped"
        sample = eng.metrics.registry.get_sample_value
        assert sample("protembed_self_check_failed") == 0.0
        assert np.isnan(sample("protembed_self_check_max_abs_diff"))
    finally:
        await eng.stop()


def test_compare_and_tolerance() -> None:
    a = {"x": [np.array([1.0, 0.0]), np.array([0.0, 2.0])]}
    same = compare(a, a)
    assert (same.max_abs, same.min_cosine) == (0.0, 1.0)
    off = compare(a, {"x": [np.array([1.0, 0.1]), np.array([0.0, 2.0])]})
    assert off.max_abs == pytest.approx(0.1) and off.min_cosine < 0.999 and off.worst_output == "x"
    assert compare(a, {"x": [np.array([np.nan, 0.0]), np.array([0.0, 2.0])]}).max_abs == float("inf")
    exact = tolerance_for(same)
    assert exact.max_abs == 1e-4 and exact.min_cosine == 0.99999  # floors for an exact file
    assert tolerance_for(off).max_abs == pytest.approx(0.4)
