"""Schemathesis against the real server process: every request its OpenAPI document allows, and many it
does not, must get a documented answer (no 500, the documented status, content type and body shape;
schema-violating requests refused)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow


def test_the_server_keeps_its_openapi_contract_under_fuzzing(
    start_server_process: Callable[..., Any], tmp_path: Path
) -> None:
    cli = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    assert cli is not None, "schemathesis is a dev dependency: pip install -e '.[dev]'"
    server = start_server_process()
    run = subprocess.run(
        [
            cli,
            "run",
            f"{server.url}/openapi.json",
            "--checks",
            "all",
            # An output name or `dimensions` the loaded model lacks is a 422 the static document cannot
            # describe (they depend on the model), so valid-by-schema requests are not all accepted.
            "--exclude-checks",
            "positive_data_acceptance",
            "--max-examples",
            "60",
            "--seed",
            "20261130",  # reproducible in CI; run the CLI without a seed to explore further
            "--request-timeout",
            "30",
            "--no-color",
        ],
        cwd=tmp_path,  # its example database stays out of the repository
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    # It warns that /v1/embeddings refuses most generated bodies (an unknown `model`): the same
    # model-dependent 422 as above, so a warning is allowed; a failed or skipped case is not.
    counts = re.search(r"(\d+) generated, (\d+) passed\s", run.stdout)
    assert counts is not None and int(counts[1]) == int(counts[2]) > 100, run.stdout[-3000:]
