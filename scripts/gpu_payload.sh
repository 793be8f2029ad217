#!/usr/bin/env bash
# Prepare, on the CPU machine, everything scripts/gpu_run.sh needs on a GPU box that can reach nothing
# (the workplace's device machine): all under .gpu/ (git-ignored) and runs/gpu/data/. Then, with the
# device tool: run `DEADLINE=565 bash scripts/gpu_run.sh` carrying .gpu/whl .gpu/teachers.tar.xz
# .gpu/data.tar.xz runs/gpu/data, with the bundled model's .onnx files moved out of the working tree
# for the call (the tree plus what it carries must stay under 64 MiB; the GPU run needs only model.json),
# and so is distill/warmstart/model.fp16.onnx (7.6 MB; the CPU line's weights, distill/warmstart/README.md).
# With FROM_MODEL, carry .gpu/from-model too and set FROM_MODEL=.gpu/from-model: the bundled int8 file
# cut to its per-protein graph (4.1 MB; the whole file, with the per-residue head, is 12.6 MB and does
# not fit).
# Bring the result back with scripts/after_gpu.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
. .venv/bin/activate
grep -qxF '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >>.git/info/exclude
mkdir -p .gpu/whl
# Pure-Python deps of the config and settings code that the GPU image lacks, for its Python 3.12.
pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .gpu/whl "pydantic==$(pip show pydantic | sed -n 's/^Version: //p')" \
  "pydantic_core==$(pip show pydantic_core | sed -n 's/^Version: //p')" \
  annotated-types typing-inspection pydantic-settings typing_extensions python-dotenv
protembed teachers fetch unirep1900 near
# Teacher weights rounded to float16 (half the bytes); the effect on their outputs is measured here.
python distill/protembed_distill/tools/pack_teachers_fp16.py --out .gpu/teachers
tar cf - -C .gpu teachers | xz -T2 -6 >.gpu/teachers.tar.xz
# -9e: 9.6 MB instead of 11.4 at the default preset, room for the FROM_MODEL weights
tar cf - -C "$(cd ../shared && pwd)" data | xz -T2 -9e >.gpu/data.tar.xz
# The eval-overlap filter runs here (MMseqs2); the GPU box reuses its cached result.
protembed distill distill/configs/gpu.toml --stage data
python distill/protembed_distill/tools/continuation_upload.py models/protembed-student-v1 .gpu/from-model
du -ch .gpu/whl .gpu/teachers.tar.xz .gpu/data.tar.xz runs/gpu/data .gpu/from-model | tail -1
