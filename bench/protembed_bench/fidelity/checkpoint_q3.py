"""Per-residue probe retention along a training run: the secondary-structure Q3 of the residue states of
training checkpoints (PyTorch, each whole chain up to the length bound in one pass), side by side with
the one-hot window baseline and, where their residue states are cached, the teachers. A continuation's
step-0 checkpoint is the starting model itself, so its row is the paired reference for the others.

    python -m protembed_bench.fidelity.checkpoint_q3 step0=runs/cpu-cont/step0/checkpoints/last.pt \\
        end=runs/cpu-cont/checkpoints/best.pt --out reports/distill/cpu_continuation_q3.json
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from protembed_bench.fidelity.residues import q3_table, window_onehot
from protembed_bench.fidelity.sets import load_chains, sequence_key
from protembed_bench.fidelity.teacher_vectors import DEFAULT_CACHE, TEACHERS, cached_vectors

__all__ = ["checkpoint_states", "main"]


def checkpoint_states(path: Path, sequences: Sequence[str], batch_tokens: int = 8192) -> list[np.ndarray]:
    """The checkpoint's final residue states, one [len, d_model] array per sequence."""
    import torch

    from protembed import tokenizer
    from protembed_distill.train.checkpoint import load_checkpoint, student_from_checkpoint

    model = student_from_checkpoint(load_checkpoint(path)).eval()
    out: list[np.ndarray] = [np.empty(0)] * len(sequences)
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    batch: list[int] = []
    with torch.no_grad():
        for j in [*order, -1]:
            if j >= 0 and (not batch or len(sequences[j]) * (len(batch) + 1) <= batch_tokens):
                batch.append(j)
                continue
            enc = tokenizer.batch_encode([sequences[i] for i in batch])
            states = model.encode(torch.from_numpy(enc.input_ids), torch.from_numpy(enc.attention_mask))
            for row, i in enumerate(batch):
                out[i] = states[row, : enc.lengths[row]].numpy().astype(np.float32)
            batch = [j] if j >= 0 else []
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m protembed_bench.fidelity.checkpoint_q3")
    p.add_argument("checkpoints", nargs="+", help="NAME=PATH of a training checkpoint (.pt)")
    p.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    p.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    p.add_argument("--train-chains", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-teachers", action="store_true", help="checkpoints and the window baseline only")
    p.add_argument("--grid", type=float, nargs="+", default=None, help="C values (default: the probes' grid)")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    chains = load_chains(args.data_dir, args.train_chains, args.seed)
    feats: dict[str, tuple[list[np.ndarray], list[np.ndarray]]] = {}
    for spec in args.checkpoints:
        name, _, path = spec.partition("=")
        if not path:
            p.error(f"{spec!r}: expected NAME=PATH")
        feats[name] = (
            checkpoint_states(Path(path), chains.train),
            checkpoint_states(Path(path), chains.test),
        )
    for t in () if args.no_teachers else TEACHERS:
        store = args.cache_dir / "residues" / f"{t}.h5"
        tr = cached_vectors(store, chains.train, residues=True)
        te = cached_vectors(store, chains.test, residues=True)
        if all(sequence_key(s) in tr for s in chains.train) and all(
            sequence_key(s) in te for s in chains.test
        ):
            feats[f"teacher:{t}"] = (
                [tr[sequence_key(s)] for s in chains.train],
                [te[sequence_key(s)] for s in chains.test],
            )
    feats["window_onehot"] = (
        [window_onehot(s) for s in chains.train],
        [window_onehot(s) for s in chains.test],
    )
    table = q3_table(feats, chains.train_y, chains.test_y, grid=args.grid, seed=args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"checkpoints": args.checkpoints, **table}, indent=1))
    for name, r in table["results"].items():
        q = r["q3"]
        print(f"{name}: Q3 {q['point']:.4f} [{q['low']:.4f}, {q['high']:.4f}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
