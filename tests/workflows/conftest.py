from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# Shared helpers live in tests/grpc/protembed_testing.py.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "grpc"))

from protembed_testing import make_settings, running_server


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path) -> Iterator[Any]:
    """A real server (REST + gRPC, one engine) on the tiny model of tests/conftest.py, for the module."""
    yield from running_server(make_settings(tiny_model_dir))
