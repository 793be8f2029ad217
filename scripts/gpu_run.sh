#!/usr/bin/env bash
# The GPU half of the real run behind models/protembed-student-v1, as one unattended command for a CUDA
# box with PyTorch, h5py and tqdm (the workplace's device machine: nothing reachable from it, 64 MiB in
# and out per call). It fills the teacher caches for the whole filtered corpus and for the evaluation
# subsets, trains three student candidates side by side on the one GPU with the same data and time
# budget, and leaves under $OUT what the CPU half (scripts/real_run.sh --after-gpu) needs: the best
# candidate's checkpoint, every candidate's training log, and the evaluation teacher caches.
#
# Inputs prepared on the CPU machine by scripts/gpu_payload.sh (all under .gpu/, git-ignored):
#   .gpu/whl/*.whl         pure-Python deps the GPU image lacks (pydantic & co.), cp312 wheels
#   .gpu/teachers.tar.xz   UniRep-1900 + NEAR weights rounded to float16 (transfer limit; the effect on
#                          the teachers' outputs is measured there: .gpu/teachers/fp16_effect.json)
#   .gpu/data.tar.xz       ../shared/data (corpus + evaluation sets), byte-identical
#   runs/gpu/data/         the eval-overlap filter's result (MMseqs2 is not on the GPU box)
# SMOKE=1 runs the same steps in about a minute (tiny data, short budget) to test the script: on the CPU,
# or with SMOKE_DEVICE=cuda on the GPU box itself (its CUDA code paths, before the real run spends time).
# DEADLINE (seconds, whole script) shortens the training budget when setup and embedding ran long, so the
# result always comes back inside the device call's limit.
set -euo pipefail
cd "$(dirname "$0")/.."
root=runs/gpu
[ "${SMOKE:-0}" = 1 ] && root=runs/gpu-smoke
OUT=${OUT:-$root/out}
mkdir -p "$OUT"
T0=$(date +%s)
log() { echo "[gpu_run $(($(date +%s) - T0))s] $*"; }
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/service:$PWD/distill${PYTHONPATH:+:$PYTHONPATH}"
config=distill/configs/gpu.toml
budget=${BUDGET:-270}
deadline=${DEADLINE:-0}
extra=()
eval_opts=(--teacher-option unirep1900.device=cuda --teacher-option unirep1900.max_batch_tokens=262144
  --teacher-option unirep1900.max_batch_size=1024 --teacher-option near.device=cuda --batch-tokens 262144)
if [ "${SMOKE:-0}" = 1 ]; then
  budget=15
  mkdir -p $root/data && cp runs/gpu/data/dedupe-*.json $root/data/
  dev=${SMOKE_DEVICE:-cpu}
  extra=(--set run.dir=$root --set output.teacher_cache_dir=$root/teacher-cache --set run.device="$dev"
    --set teachers.0.options.device="$dev" --set teachers.1.options.device="$dev"
    --set data.max_sequences=48 --set optim.batch_tokens=4096 --set optim.warmup_steps=2)
  # the subsets `evaluate --smoke` probes (after_gpu.sh SMOKE=1)
  eval_opts=(--batch-tokens 8192 --smoke --teacher-option unirep1900.device="$dev" --teacher-option near.device="$dev")
fi
pe() { python3 -c 'import sys; from protembed.cli import main; sys.exit(main())' "$@"; }

if [ -d .gpu/whl ] && ! python3 -c 'import pydantic_settings' 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/whl/*.whl
  export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
if [ -f .gpu/teachers.tar.xz ]; then
  mkdir -p /tmp/gpu-teachers && tar xJf .gpu/teachers.tar.xz -C /tmp/gpu-teachers
  export PROTEMBED_TEACHER_DIR=/tmp/gpu-teachers/teachers
  cp /tmp/gpu-teachers/teachers/fp16_effect.json "$OUT/" || true
fi
if [ -f .gpu/data.tar.xz ] && [ ! -f ../shared/data/corpus/corpus.fasta ]; then
  mkdir -p ../shared && tar xJf .gpu/data.tar.xz -C ../shared
fi
python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available(),
  torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")'
log "setup done"

# 1. Teacher caches for the whole filtered corpus (UniRep-1900 per protein, NEAR per protein + residue).
pe distill "$config" --stage embed --no-progress "${extra[@]}" 2>&1 | tee "$OUT/embed.log"
log "embed done"
if [ "$deadline" -gt 0 ]; then
  # What is left of the deadline, less a reserve for the last validation, checkpoints and packing.
  left=$((deadline - ($(date +%s) - T0) - ${RESERVE:-75}))
  [ "$left" -lt "$budget" ] && budget=$left
  [ "$budget" -lt 20 ] && { log "no time left to train (budget $budget s)"; budget=20; }
  log "training budget $budget s"
fi

# 2. The evaluation subsets' teacher vectors (the probes run on the CPU machine, same seeds and sizes),
#    in a cache folder of their own so that only they travel back.
(pe evaluate --embed-only --teachers unirep1900 near --max-train "${EVAL_TRAIN:-1500}" \
  --max-test "${EVAL_TEST:-1200}" --cache-dir $root/evalcache --no-progress "${eval_opts[@]}" \
  >"$OUT/eval_embed.log" 2>&1; log "eval embed done") &
eval_pid=$!

# 3. Candidates, same data, seed and time budget, side by side on the one GPU (CANDIDATES picks which;
#    one alone gets the whole GPU). CONTINUE=1, on a machine still warm from a run (caches, run folders
#    and teacher weights are still there), gives each candidate a second warm-restart cycle instead:
#    a new run folder that starts from its lineage's best.pt (optim.init_from) with peak lr CONT_LR.
#    FROM_MODEL=<model folder> (.gpu/from-model from gpu_payload.sh: model.json and the int8 file cut
#    to the per-protein graph, the one that fits the upload; any folder with model.json and one of its
#    .onnx files works) starts candidates of the
#    same architecture from that shipped model instead of from scratch, peak lr CONT_LR: training
#    continues across sessions, which checkpoints cannot (they stay on the GPU box).
# pool_dim stops at 768: at 1024 the artifact (fp32 + int8 + fp16) passed the 30 MiB limit models/ had
# then (pool_experiment.md); the limit is 64 MiB since the per-residue head, which takes most of it.
declare -A cands=(
  [p0]="--set student.pool_dim=0"
  [p768]="--set student.pool_dim=768"
  [p768-lr3]="--set student.pool_dim=768 --set optim.lr=3e-3"
  # UniRep-1900 weighted twice: its head trails NEAR's (held-out cosine 0.873 vs 0.960 in the first run)
  [p768-lr3-u2]="--set student.pool_dim=768 --set optim.lr=3e-3 --set teachers.0.weight=2.0"
)
# Both ways of continuing restart the schedule from these weights: a short warmup to a lower peak.
restart="--set optim.lr=${CONT_LR:-5e-4} --set optim.warmup_steps=50"
pids=()
for name in ${CANDIDATES:-p0 p768 p768-lr3}; do
  [ -n "${cands[$name]:-}" ] || { log "unknown candidate $name (known: ${!cands[*]})"; exit 2; }
  dir=$root/cand-$name
  args=${cands[$name]}
  if [ "${CONTINUE:-0}" = 1 ]; then
    prev=$dir
    for n in 2 3 4 5 6 7 8 9; do
      [ -f "$root/cand-$name-c$n/checkpoints/best.pt" ] && prev=$root/cand-$name-c$n
      [ -d "$root/cand-$name-c$n" ] || { dir=$root/cand-$name-c$n; break; }
    done
    [ -f "$prev/checkpoints/best.pt" ] || { log "CONTINUE: $prev has no best.pt"; exit 2; }
    args="$args --set optim.init_from=$prev/checkpoints/best.pt $restart"
    log "$name: continuing from $prev in $dir"
  elif [ -n "${FROM_MODEL:-}" ]; then
    args="$args --set optim.init_from=$FROM_MODEL $restart"
    log "$name: starting from the model in $FROM_MODEL"
  fi
  # ANCHOR=<model folder> (e.g. the same .gpu/from-model) [ANCHOR_WEIGHT=1]: keep the pooled vector near
  # that model's ([anchor]): on the CPU it kept capsid and deepsol where plain continuations lost 2%
  # (reports/distill/cpu_line.md, session 30); ANCHOR_RESIDUE_WEIGHT=1 holds the trunk's per-residue
  # states too, which the pooled term alone lets move (a GPU run moves the trunk further than a CPU link).
  [ -z "${ANCHOR:-}" ] || args="$args --set anchor.model=$ANCHOR --set anchor.weight=${ANCHOR_WEIGHT:-1.0}
    --set anchor.residue_weight=${ANCHOR_RESIDUE_WEIGHT:-0}"
  mkdir -p "$dir/data" && cp runs/gpu/data/dedupe-*.json "$dir/data/"
  # shellcheck disable=SC2086
  pe distill "$config" --stage train --quiet --time-budget "$budget" "${extra[@]}" --set "run.dir=$dir" \
    $args >"$dir/stdout.log" 2>&1 &
  pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid" || log "a candidate failed (exit $?)"; done
log "training done"
wait "$eval_pid" || log "eval embed failed"

# 4. Pick the candidate with the best mean held-out cosine; ship its checkpoint without optimizer state,
#    every candidate's log and the evaluation caches, as <=15 MiB parts of one tar (the transfer limit).
ret=$(mktemp -d)
cp "$OUT"/*.log "$OUT"/*.json $root/embed_report.json $root/data_stats.json "$ret/" 2>/dev/null || true
python3 - "$ret" "$root" <<'EOF'
import json, sys
from pathlib import Path
import torch
from protembed_distill.sweep import run_summary
ret, root = Path(sys.argv[1]), Path(sys.argv[2])
rows = {}
for d in sorted(root.glob("cand-*")):
    log = d / "train.jsonl"
    (ret / f"{d.name}.stdout.log").write_bytes((d / "stdout.log").read_bytes()[-200000:])
    if not log.is_file():
        continue
    (ret / f"{d.name}.train.jsonl").write_bytes(log.read_bytes())
    if (d / "train.csv").is_file():
        (ret / f"{d.name}.train.csv").write_bytes((d / "train.csv").read_bytes())
    try:
        best = run_summary(d)[2]  # the epoch best.pt holds, as --stage compare and export read it
    except ValueError:
        continue  # no validated epoch: the candidate failed early (its stdout.log says why)
    rows[d.name] = (sum(best["val_cosine"].values()) / len(best["val_cosine"]), best)
for k, (m, b) in rows.items():
    print(k, "mean val cosine", round(m, 4), b["val_cosine"], "epoch", b["epoch"], "step", b["step"])
win = max(rows, key=lambda k: rows[k][0])
ck = torch.load(root / win / "checkpoints" / "best.pt", map_location="cpu", weights_only=False)
ck.pop("optimizer", None)
ck.pop("rng", None)
torch.save(ck, ret / "best.pt")
summary = {"winner": win, "mean_val_cosine": {k: v[0] for k, v in rows.items()}}
(ret / "winner.json").write_text(json.dumps(summary, indent=1))
print("winner", win)
EOF
for f in $root/evalcache/*.h5; do
  [ -f "$f" ] && cp "$f" "$ret/$(basename "${f%.h5}").eval.h5"
done
ls -la "$ret"
tar cf - -C "$ret" . | split -b 15m - "$OUT/gpu_result.tar.part-"
rm -f "$OUT"/*.log "$OUT"/*.json
ls -la "$OUT"
log "all done"
