#!/usr/bin/env bash
# The real run behind models/protembed-student-v1 and reports/: distil, export, evaluate, benchmark.
# Every stage resumes or reuses its caches (teacher embeddings live in ~/.cache/protembed), so the
# script can be re-run after an interruption. About 1.5 h on 2 idle CPU cores.
set -euo pipefail
cd "$(dirname "$0")/.."
. .venv/bin/activate
config=distill/configs/default.toml
protembed teachers fetch unirep1900 near
protembed distill "$config" --stage embed
protembed distill "$config" --stage sweep
protembed distill "$config" --stage train
protembed distill "$config" --stage export
protembed evaluate --config "$config"
protembed bench model --checkpoint runs/default/checkpoints/best.pt --rounds 2
protembed bench serve
protembed distill "$config" --stage report
