from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# Shared helpers live in tests/grpc/protembed_testing.py.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "grpc"))

from protembed_testing import build_tiny_model, make_settings, running_server  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model") / "protembed-tiny")


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path) -> Iterator[Any]:
    """A real server (REST + gRPC, one engine) for the module."""
    yield from running_server(make_settings(tiny_model_dir))
