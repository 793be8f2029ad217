#!/usr/bin/env bash
# A CPU continuation of the bundled model (optim.init_from = models/protembed-student-v1), run as a
# learning curve: held-out cosine to each teacher after every epoch against residues seen, on ONE
# thread under nice, so that the machine's other core stays free for everyone else.
# Plan, numbers and reading: reports/distill/cpu_continuation.md.
#
# Levers, all on the data side because the bundled model under-fits (reports/distill/head_refit.md):
# - teacher targets computed once into the resumable HDF5 teacher cache and reused every epoch
#   (UniRep-1900 costs about twice a student training step per residue on the CPU, so it is paid once);
# - more diverse sequences: the 20,000 UniProt sequences of the Debian package mmseqs2-examples join
#   the corpus (source `mmseqs_uniprot`), and the data stage's MMseqs2 filter drops every corpus
#   sequence at >= 50% identity (>= 50% coverage of either) to any evaluation sequence, as before;
# - the validation split is the same hash rule as the bundled model's, so the held-out corpus
#   sequences here were held out from it too (and the new UniProt ones from everything).
#
# Every step resumes: the data stage caches its MMseqs2 result, the teacher cache skips what it has,
# training resumes from runs/cpu-cont/checkpoints/last.pt (time budget and schedule included).
#   N=<train sequences> VAL_N=<prefix whose held-out part validates> DEADLINE=<unix time> \
#     bash scripts/cpu_continuation.sh
# On a CPU with bfloat16 matrix units (Intel AMX), the whole corpus fits a session
# (reports/distill/cpu_amx.md): UniRep-1900 targets and the student's steps both in bfloat16, 2 threads:
#   AMX=1 THREADS=2 TOP=0 N=100000 VAL_N=100000 ROOT=runs/cpu-amx DEADLINE=... bash scripts/cpu_continuation.sh
# (AMX=1 means bfloat16: AMD's avx512_bf16 runs it too, UniRep-1900 2.4x float32; cpu_mix.md.)
# An AVX-512 Xeon without bfloat16 fits it in float32 (UniRep-1900 5.4k res/s, training 5.7k; cpu_line.md
# session 34): leave AMX unset and add EXTRA="--set teachers.1.per_residue=false".
# The time budget ends it cleanly (checkpointed, annealed); a kill loses at most 20 steps.
set -euo pipefail
cd "$(dirname "$0")/.."
. .venv/bin/activate
root=${ROOT:-runs/cpu-cont}
n=${N:-3000}
deadline=${DEADLINE:-$(($(date +%s) + 3600))}
mkdir -p "$root"
log() { echo "[cpu_continuation $(date -u +%H:%M:%S)] $*"; }
threads=${THREADS:-1}
export OMP_NUM_THREADS=$threads MKL_NUM_THREADS=$threads PROTEMBED_THREADS=$threads

# The code runs from a snapshot of one commit (recorded in $root/src/COMMIT), so that edits to the
# working tree during a run of hours (other work on distill/ and service/) cannot change it midway.
if [ ! -f "$root/src/COMMIT" ]; then
  rev=${REV:-HEAD}
  mkdir -p "$root/src" && git archive "$rev" service distill | tar x -C "$root/src"
  git rev-parse "$rev" >"$root/src/COMMIT"
fi
export PYTHONPATH="$PWD/$root/src/service:$PWD/$root/src/distill"

corpus=$root/corpus-top${TOP:-6000}.fasta
if [ ! -s "$corpus" ]; then
  extra=/usr/share/doc/mmseqs2/example-data/DB.fasta.gz
  [ -f "$extra" ] || { log "$extra missing: apt-get install -y mmseqs2 mmseqs2-examples"; exit 2; }
  # '>tr|W0FSK4|W0FSK4_9FLAV ...' -> '>mmseqs_uniprot|W0FSK4' (the corpus' 'source|id' headers)
  # UNIPROT=0: the original corpus alone (the matched arm of reports/distill/cpu_amx.md)
  { cat ../shared/data/corpus/corpus.fasta
    [ "${UNIPROT:-1}" = 0 ] || zcat "$extra" | awk -F'|' '/^>/ {print ">mmseqs_uniprot|" $2; next} {print}'
  } >"$root/corpus-all.fasta"
  # Only the first TOP sequences in the data stage's own seeded rank: the subsets used here are rank
  # prefixes, and the eval-overlap search (MMseqs2, the slow step) then covers 6k sequences, not 56k.
  # Ranks and validation membership are hashes of each sequence, so they are the same as in the whole.
  python3 - "$root/corpus-all.fasta" "$corpus" "${TOP:-6000}" <<'EOF'
import sys
from pathlib import Path

from protembed_distill.data.dataset import _rank, read_corpus

records = sorted(read_corpus(Path(sys.argv[1])), key=lambda r: _rank(7, r.sequence))  # data.seed = 7
top = int(sys.argv[3]) or len(records)  # TOP=0: all of them
with open(sys.argv[2] + ".part", "w") as fh:
    fh.writelines(f">{r.source}|{r.id}\n{r.sequence}\n" for r in records[:top])
EOF
  mv "$corpus.part" "$corpus"
fi

config=distill/configs/default.toml
# The bundled model's architecture (gpu.toml's student) and a warm restart at a lower peak learning rate.
# INIT=<checkpoint or model folder> continues from an earlier continuation instead of the bundled model,
# so that sessions of 2 cores add up (distill/warmstart/README.md) instead of each restarting at 1.4.0.
# Small token batches (4,096 tokens, ~16 cropped sequences): one thread takes seconds per step, so
# the schedule gets hundreds of steps in an hour instead of tens.
common=(--set "run.dir=$root" --set "data.corpus=$corpus" --set student.pool_dim=768
  --set student.dropout=0.0 --set "optim.init_from=${INIT:-models/protembed-student-v1}"
  --set "optim.lr=${LR:-2e-4}" --set optim.warmup_steps=20 --set optim.epochs=1000 --set optim.patience=0
  --set "optim.batch_tokens=${BATCH_TOKENS:-4096}" --set optim.checkpoint_every_steps=20
  --set optim.log_every_steps=20)
if [ "${AMX:-0}" = 1 ]; then
  # bfloat16 on the CPU's matrix units: UniRep-1900's recurrent products, NEAR's convolutions (each a
  # cache file of its own) and the student's autocast; large teacher batches so that each step's
  # product fills the units (reports/distill/cpu_amx.md; UniRep-1900's 256 rows / 131k tokens are its
  # bfloat16 defaults, teachers/unirep.py). NEAR's per-residue alignment is off (the matched CPU arms
  # showed it does not move the trunk: cpu_continuation.md), which also saves its per-residue cache
  # (GBs for the whole corpus).
  common+=(--set teachers.0.options.precision=bfloat16 --set teachers.1.options.precision=bfloat16
    --set optim.cpu_amp=true --set teachers.1.per_residue=false --set run.embed_batch_tokens=131072)
  # oneDNN keeps one compiled bfloat16 kernel per batch shape; crops make hundreds of shapes, and an
  # uncapped cache grew the training process to 13.7 GB in 45 minutes (cpu_amx.md).
  export ONEDNN_PRIMITIVE_CACHE_CAPACITY=${ONEDNN_PRIMITIVE_CACHE_CAPACITY:-256}
fi
# In float32 each teacher fills its cache at its own CPU batch size (UniRep-1900 hundreds of rows, NEAR
# 8k tokens: teachers/unirep.py default_batching, teachers/near.py), so nothing is set for it here.
# UNIPROT_WEIGHT=0.5: each epoch draws a different half of the UniProt sequences, so the corpus's own
# sources keep most of the steps (data.source_weights; reports/distill/cpu_mix.md).
[ -z "${UNIPROT_WEIGHT:-}" ] || common+=(--set "data.source_weights.mmseqs_uniprot=$UNIPROT_WEIGHT")
# ANCHOR=models/protembed-student-v1 [ANCHOR_WEIGHT=1]: also keep the pooled vector near that model's on
# the same sequences (self-distillation against drift, [anchor] in the config; cpu_line.md, session 30).
# ANCHOR_RESIDUE_WEIGHT=1: the trunk's per-residue states too (what the per-residue head reads; session 32).
[ -z "${ANCHOR:-}" ] || common+=(--set "anchor.model=$ANCHOR" --set "anchor.weight=${ANCHOR_WEIGHT:-1.0}"
  --set "anchor.residue_weight=${ANCHOR_RESIDUE_WEIGHT:-0}")
# shellcheck disable=SC2206
common+=(${EXTRA:-})
# VALIDATE="a0.5=runs/x-a0.5/checkpoints/best.pt ...": score those weights (blends of this run's start
# and end: tools/blend_checkpoints.py) on this run's held-out set instead of training (cpu_wise.md).
validate=()
for v in ${VALIDATE:-}; do validate+=(--validate "$v"); done
log "train on $n sequences, validate on the held-out part of the first ${VAL_N:-4000}, until $(date -u -d @"$deadline" +%H:%M)"
nice -n 10 python3 "$root/src/distill/protembed_distill/tools/continuation_curve.py" "$config" "${common[@]}" \
  --train-sequences "$n" --val-sequences "${VAL_N:-4000}" --deadline "$deadline" --threads "$threads" \
  "${validate[@]}"
log "done"
