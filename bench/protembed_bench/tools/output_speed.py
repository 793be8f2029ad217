"""Residues/s of two model folders' files, or of one folder's file with and without the load-time
attention fusion (``--fusion``), per output, through the server's model layer (``OnnxModel``: per-protein
batches on the graph cut to the per-protein outputs), in interleaved rounds so the ratios come from one
run::

    python -m protembed_bench.tools.output_speed models/protembed-student-v1 /path/to/previous/folder \\
        --variant int8 --outputs student residue_states --rounds 3
    python -m protembed_bench.tools.output_speed models/protembed-student-v1 --fusion --variant int8
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
    p.add_argument("folders", type=Path, nargs="+", help="two model folders (e.g. new and previous), or one")
    p.add_argument(
        "--fusion",
        action="store_true",
        help="time each folder with its attention fused (the default) and as exported (fuse_attention off)",
    )
    p.add_argument("--variant", default="int8")
    p.add_argument("--outputs", nargs="+", default=["student", "residue_states"], help="ONNX output names")
    p.add_argument("--corpus", type=Path, default=Path("../shared/data/corpus/corpus.fasta"))
    p.add_argument("--sequences", type=int, default=300)
    p.add_argument("--batch-tokens", type=int, default=4096, help="padded tokens per length-sorted batch")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    if len(args.folders) != (1 if args.fusion else 2):
        p.error("give two folders, or one with --fusion")
    opts = SessionOptions(intra_op_threads=args.threads, inter_op_threads=1)
    models = {str(f): OnnxModel.open(f, args.variant, opts) for f in args.folders}
    if args.fusion:
        folder = args.folders[0]
        exported = SessionOptions(intra_op_threads=args.threads, inter_op_threads=1, fuse_attention=False)
        models = {
            f"{folder} (attention fused: {models[str(folder)].fused_attention} blocks)": models[str(folder)],
            f"{folder} (as exported)": OnnxModel.open(folder, args.variant, exported),
        }
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
    first_name, second_name = models
    print(f"first: {first_name}; second: {second_name}")
    for out in args.outputs:
        a, b = (float(np.median(rates[(name, out)])) for name in models)
        first = [round(x) for x in rates[(first_name, out)]]
        second = [round(x) for x in rates[(second_name, out)]]
        print(f"{out}: {a:.0f} vs {b:.0f} -> {a / b:.3f}x  (rounds: {first} vs {second})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
