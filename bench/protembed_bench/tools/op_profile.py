"""Where a model file's time goes: ONNX Runtime's own per-node trace, summed by operator type, on the
``bench model`` set (same seeded corpus sample and crop) through the server's model layer (per-protein
batches run on the graph cut to the per-protein outputs)::

    python -m protembed_bench.tools.op_profile models/protembed-student-v1 --variant int8 \\
        --batch-tokens 2048 --out reports/op_profile_int8.json

Shares of summed kernel time, not of wall time: with 2 intra-op threads a node's kernel time is its
wall time, and the gaps between nodes (a few percent) are left out.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from protembed import tokenizer
from protembed.packing import Budget, pack_sorted
from protembed.runtime import OnnxModel, SessionOptions

__all__ = ["main", "op_shares"]


def op_shares(trace: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Kernel time per operator type of one ORT trace, largest first: op, microseconds, calls, share."""
    micros: dict[str, float] = defaultdict(float)
    calls: dict[str, int] = defaultdict(int)
    for event in trace:
        if event.get("cat") == "Node" and str(event.get("name", "")).endswith("_kernel_time"):
            op = str(event.get("args", {}).get("op_name", "?"))
            micros[op] += float(event.get("dur", 0))
            calls[op] += 1
    total = sum(micros.values())
    if not total:
        raise ValueError("the trace holds no node kernel times")
    return [
        {"op": op, "us": us, "calls": calls[op], "share": us / total}
        for op, us in sorted(micros.items(), key=lambda kv: -kv[1])
    ]


def main(argv: Sequence[str] | None = None) -> int:
    from protembed_bench.model import sample_sequences

    p = argparse.ArgumentParser(prog="python -m protembed_bench.tools.op_profile")
    p.add_argument("folder", type=Path, help="a model folder")
    p.add_argument("--variant", default="int8")
    p.add_argument("--outputs", nargs="+", default=["student"], help="ONNX outputs asked for")
    p.add_argument("--corpus", type=Path, default=Path("../shared/data/corpus/corpus.fasta"))
    p.add_argument("--sequences", type=int, default=256, help="bench model's sample size")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-tokens", type=int, default=2048, help="padded tokens per length-sorted batch")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--top", type=int, default=12, help="operators printed")
    p.add_argument("--out", type=Path, help="also write the table as JSON here")
    args = p.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        opts = SessionOptions(intra_op_threads=args.threads, inter_op_threads=1, profile_prefix=f"{tmp}/ort")
        model = OnnxModel.open(args.folder, args.variant, opts)
        seqs = sample_sequences(args.corpus, args.sequences, args.seed, model.card.max_length)
        batches = [
            tokenizer.batch_encode([seqs[i] for i in b])
            for b in pack_sorted([len(s) for s in seqs], Budget(tokens=args.batch_tokens))
        ]
        for batch in batches:
            model.run(batch, args.outputs)
        session = model.session_for(args.outputs)
        trace = json.loads(Path(session.end_profiling()).read_text())  # type: ignore[attr-defined]
    rows = op_shares(trace)
    residues = sum(map(len, seqs))
    print(
        f"{args.folder} {model.variant}, outputs {' '.join(args.outputs)}: {residues} residues in "
        f"{len(batches)} batches of <= {args.batch_tokens} padded tokens, {args.threads} threads"
    )
    print("| operator | share of kernel time | calls |\n|---|---|---|")
    for row in rows[: args.top]:
        print(f"| {row['op']} | {100 * row['share']:.1f}% | {row['calls']} |")
    if args.out:
        settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
        args.out.write_text(json.dumps({"settings": settings, "residues": residues, "ops": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
