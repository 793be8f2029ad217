#!/usr/bin/env bash
# The CPU half after scripts/gpu_run.sh: unpack what the GPU run left under its $OUT (the
# gpu_result.tar.part-* files), compare the candidates (held-out cosine from their logs, ONNX CPU
# throughput measured here), export the winner as the bundled model, evaluate it against the teachers
# (their vectors for the evaluation subsets came back from the GPU run), benchmark, and report.
#   bash scripts/after_gpu.sh FOLDER_WITH_PARTS
# SMOKE=1 runs every step in seconds into runs/gpu-smoke-after/ (model and reports there, not the repo's).
set -euo pipefail
cd "$(dirname "$0")/.."
. .venv/bin/activate
parts=${1:?usage: after_gpu.sh FOLDER_WITH_gpu_result.tar.part-FILES}
root=runs/gpu model_dir=models/protembed-student-v1 reports=reports cache=~/.cache/protembed/teacher-cache
smoke=()
if [ "${SMOKE:-0}" = 1 ]; then
  root=runs/gpu-smoke-after model_dir=runs/gpu-smoke-after/model reports=runs/gpu-smoke-after/reports
  cache=runs/gpu-smoke-after/teacher-cache smoke=(--smoke)
  mkdir -p $root/data && cp runs/gpu/data/dedupe-*.json $root/data/
fi
cache=${cache/#\~/$HOME}
mkdir -p "$root/result" "$root/checkpoints" "$cache"
cat "$parts"/gpu_result.tar.part-* | tar xf - -C "$root/result"
# Each candidate's log into its own run folder; the winner's checkpoint and log into the config's.
for f in "$root"/result/cand-*.train.jsonl; do
  c=$(basename "$f" .train.jsonl)
  mkdir -p "$root/$c" && cp "$f" "$root/$c/train.jsonl"
done
win=$(python -c 'import json, sys; print(json.load(open(sys.argv[1]))["winner"])' "$root/result/winner.json")
cp "$root/result/best.pt" "$root/checkpoints/best.pt"
cp "$root/$win/train.jsonl" "$root/train.jsonl"
if [ -f "$root/result/$win.train.csv" ]; then cp "$root/result/$win.train.csv" "$root/train.csv"; else rm -f "$root/train.csv"; fi
cp "$root/result/embed_report.json" "$root/"
cp "$root/result/fp16_effect.json" "$root/teacher_fp16_effect.json"  # shown in the distill report
# The evaluation subsets' teacher vectors, as the side files evaluation reads beside the training caches.
cp "$root"/result/*.eval.h5 "$cache/"
set_args=(--set "run.dir=$root" --set "output.model_dir=$model_dir" --set "output.teacher_cache_dir=$cache")
# Throughput on this (serving) machine's 2 threads, as every other CPU figure in reports/.
protembed distill distill/configs/gpu.toml --stage compare --threads 2 --runs "$root"/cand-* "${set_args[@]}"
protembed distill distill/configs/gpu.toml --stage export "${set_args[@]}"
protembed evaluate --model "$model_dir" --teachers unirep1900 near --cache-dir "$cache" \
  --max-train "${EVAL_TRAIN:-1500}" --max-test "${EVAL_TEST:-1200}" --reports "$reports" "${smoke[@]}"
protembed bench model --model "$model_dir" --checkpoint "$root/checkpoints/best.pt" --rounds 2 \
  --reports "$reports" "${smoke[@]}"
protembed bench serve --model "$model_dir" --reports "$reports" "${smoke[@]}"
[ "${SMOKE:-0}" = 1 ] && reports=$reports/smoke
protembed distill distill/configs/gpu.toml --stage report --reports "$reports" "${set_args[@]}"
