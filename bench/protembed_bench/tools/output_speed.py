"""Residues/s of two model folders' files, per output, through the server's model layer (``OnnxModel``:
per-protein batches on the graph cut to the per-protein outputs), in interleaved rounds so the ratios
come from one run::

    python -m protembed_bench.tools.output_speed models/protembed-student-v1 /path/to/previous/folder \\
        --variant int8 --outputs student residue_states --rounds 3
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from protembed import tokenizer
from protembed.fasta import read_fasta
from protembed.packing import Budget, pack_sorted
from protembed.runtime import OnnxModel, SessionOptions

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m protembed_bench.tools.output_speed")
    p.add_argument("folders", type=Path, nargs=2, help="two model folders (e.g. new and previous)")
    p.add_argument("--variant", default="int8")
    p.add_argument("--outputs", nargs="+", default=["student", "residue_states"], help="ONNX output names")
    p.add_argument("--corpus", type=Path, default=Path("../shared/data/corpus/corpus.fasta"))
    p.add_argument("--sequences", type=int, default=300)
    p.add_argument("--batch-tokens", type=int, default=4096, help="padded tokens per length-sorted batch")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    opts = SessionOptions(intra_op_threads=args.threads, inter_op_threads=1)
    models = {str(f): OnnxModel.open(f, args.variant, opts) for f in args.folders}
    bound = min(m.card.max_length for m in models.values())
    seqs = [r.sequence[:bound] for _, r in zip(range(args.sequences), read_fasta(args.corpus), strict=False)]
    batches = [
        tokenizer.batch_encode([seqs[i] for i in b])
        for b in pack_sorted([len(s) for s in seqs], Budget(tokens=args.batch_tokens))
    ]
    total = sum(map(len, seqs))
    for model in models.values():  # warm-up: the first runs of a session pay its lazy initialisation
        for out in args.outputs:
            for batch in batches:
                model.run(batch, [out])
    rates: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.rounds):
        for name, model in models.items():
            for out in args.outputs:
                start = time.perf_counter()
                for batch in batches:
                    model.run(batch, [out])
                rates.setdefault((name, out), []).append(total / (time.perf_counter() - start))
    print(
        f"{total} residues, {len(batches)} batches, {args.variant}, {args.threads} threads; median residues/s"
    )
    for out in args.outputs:
        a, b = (float(np.median(rates[(str(f), out)])) for f in args.folders)
        first = [round(x) for x in rates[(str(args.folders[0]), out)]]
        print(f"{out}: {a:.0f} vs {b:.0f} -> {a / b:.2f}x  (first folder's rounds: {first})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
