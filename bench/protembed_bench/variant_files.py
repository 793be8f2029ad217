"""ONNX files of one student side by side: CPU speed, batch dependence, and distance to fp32.

``protembed bench model`` times the variants a model card lists; this compares any files of the same
graph (an old int8 beside a new one, say) in one process, on the same corpus sample and the same
length-sorted token-budget batches::

    python -m protembed_bench.variant_files models/protembed-student-v1/model.onnx \\
        old/model.int8.onnx models/protembed-student-v1/model.int8.onnx --out reports/int8_static.json

Speed: rounds interleave the files (A B C, A B C, ...) and each keeps its best round, both wall-clock
and process CPU time (the CPU figure is less disturbed by other jobs on a shared machine; with one
thread it is the fairer ratio). Every file answers the default request's output only, as a server
does. Batch dependence: each of ``--dependence-sequences`` sequences alone against the same sequence
in a padded batch of 8 mixed lengths, all outputs at real positions. Distance: max abs diff and cosine
of each output to the first file's (fp32), one sequence per run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from protembed import tokenizer
from protembed.packing import Budget, pack_sorted


def _session(path: Path, threads: int) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def speed(
    paths: Sequence[Path], sequences: Sequence[str], threads: int, batch_tokens: int, rounds: int
) -> dict[str, dict[str, float]]:
    """Best residues/s per file over interleaved rounds: wall-clock and process CPU time."""
    sessions = {str(p): _session(p, threads) for p in paths}
    feeds = []
    for batch in pack_sorted([len(s) for s in sequences], Budget(batch_tokens)):
        enc = tokenizer.batch_encode([sequences[i] for i in batch])
        feeds.append({"input_ids": enc.input_ids, "attention_mask": enc.attention_mask})
    residues = sum(len(s) for s in sequences)
    best = {k: {"wall_residues_per_s": 0.0, "cpu_residues_per_s": 0.0} for k in sessions}
    for sess in sessions.values():
        sess.run(["student"], feeds[0])  # warm-up
    for _ in range(rounds):
        for key, sess in sessions.items():
            wall, cpu = time.perf_counter(), time.process_time()
            for feed in feeds:
                sess.run(["student"], feed)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            best[key]["wall_residues_per_s"] = max(best[key]["wall_residues_per_s"], residues / wall)
            best[key]["cpu_residues_per_s"] = max(best[key]["cpu_residues_per_s"], residues * threads / cpu)
    return best


def _run_one_by_one(path: Path, sequences: Sequence[str]) -> list[list[np.ndarray]]:
    sess = _session(path, 1)
    rows = []
    for seq in sequences:
        enc = tokenizer.batch_encode([seq])
        values = sess.run(None, {"input_ids": enc.input_ids, "attention_mask": enc.attention_mask})
        rows.append([np.asarray(v[0]) for v in values])
    return rows


def distance(reference: Path, path: Path, sequences: Sequence[str]) -> dict[str, dict[str, float]]:
    """Per output: max abs diff and mean/min cosine to ``reference``'s (per residue for residue outputs)."""
    names = [o.name for o in _session(path, 1).get_outputs()]
    ref, got = _run_one_by_one(reference, sequences), _run_one_by_one(path, sequences)
    out = {}
    for k, name in enumerate(names):
        r = np.concatenate([np.atleast_2d(row[k]) for row in ref])
        g = np.concatenate([np.atleast_2d(row[k]) for row in got])
        cos = (r * g).sum(-1) / (np.linalg.norm(r, axis=-1) * np.linalg.norm(g, axis=-1) + 1e-12)
        out[name] = {
            "max_abs_diff": float(np.abs(r - g).max()),
            "cosine_mean": float(cos.mean()),
            "cosine_min": float(cos.min()),
        }
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    from protembed_bench.model import length_stats, sample_sequences
    from protembed_distill.export.variants import batch_dependence

    paths = [Path(p) for p in args.files]
    sequences = sample_sequences(args.corpus, args.sequences, args.seed, args.crop)
    probe = sample_sequences(args.corpus, args.dependence_sequences, args.seed + 1, args.crop)
    rates = speed(paths, sequences, args.threads, args.batch_tokens, args.rounds)
    first = str(paths[0])
    files = {}
    for p in paths:
        key = str(p)
        files[key] = {
            **rates[key],
            "wall_ratio_to_first": rates[key]["wall_residues_per_s"] / rates[first]["wall_residues_per_s"],
            "cpu_ratio_to_first": rates[key]["cpu_residues_per_s"] / rates[first]["cpu_residues_per_s"],
            "batch_dependence_max_abs_diff": batch_dependence(p, probe),
            "distance_to_first": distance(paths[0], p, probe) if p != paths[0] else None,
        }
    return {
        "command": "python -m protembed_bench.variant_files " + " ".join(sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "settings": {
            "threads": args.threads,
            "batch_tokens": args.batch_tokens,
            "rounds": args.rounds,
            "corpus": str(args.corpus),
            "seed": args.seed,
            "crop": args.crop,
        },
        "set": length_stats(sequences),
        "dependence_set": length_stats(probe),
        "files": files,
    }


def main(argv: list[str] | None = None) -> int:
    from protembed_bench.evaluate import DEFAULT_DATA_DIR

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("files", nargs="+", help="ONNX files of one graph; the first is the reference (fp32)")
    parser.add_argument("--corpus", type=Path, default=DEFAULT_DATA_DIR / "corpus" / "corpus.fasta")
    parser.add_argument("--sequences", type=int, default=128)
    parser.add_argument("--dependence-sequences", type=int, default=48)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--crop", type=int, default=512)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-tokens", type=int, default=2048)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None, help="write the JSON here too")
    args = parser.parse_args(argv)
    report = run(args)
    text = json.dumps(report, indent=1)
    if args.out is not None:
        args.out.write_text(text + "\n", encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
