"""The student's vectors as the server gives them: the chosen variant's ONNX file in ONNX Runtime, and a
sequence longer than the model's context cut into the server's overlapping windows and pooled back with
the server's own code (``protembed.windows``, overlap = the ``chunk_overlap`` setting's default), which
is what a user gets with ``long_sequences=chunk``.

Results are cached per model file (its sha256) in one ``.npz`` per output, keyed by sequence hash, so the
same model is never run twice on a sequence across invocations.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from protembed import tokenizer
from protembed.artifact import ModelCard, load_model, sha256_file
from protembed.windows import Window, plan_windows, pool_windows
from protembed_bench.fidelity.sets import sequence_key

__all__ = ["ServedStudent", "served_overlap", "window_batches"]


def served_overlap() -> int:
    """The server's default ``chunk_overlap`` (the setting, not a copy of its number)."""
    from protembed.settings import Settings

    return int(Settings.model_fields["chunk_overlap"].default)


def window_batches(
    seqs: Sequence[str], plans: Sequence[Sequence[Window]], batch_tokens: int
) -> Iterator[tuple[list[int], tokenizer.EncodedBatch]]:
    """Every window of every sequence in length-sorted batches of at most ``batch_tokens`` padded
    tokens: (the batch's piece indices, its encoded batch). Piece ``j`` is the ``j``-th (sequence,
    window) pair in plan order, so a sequence's windows are consecutive pieces."""
    pieces = [(i, w) for i, plan in enumerate(plans) for w in plan]
    lengths = [w.end - w.start for _, w in pieces]
    order = sorted(range(len(pieces)), key=lambda j: lengths[j])
    batch: list[int] = []
    for j in [*order, -1]:
        if j >= 0 and (not batch or lengths[j] * (len(batch) + 1) <= batch_tokens):  # j is the longest
            batch.append(j)
            continue
        yield (
            batch,
            tokenizer.batch_encode(
                [seqs[pieces[b][0]][pieces[b][1].start : pieces[b][1].end] for b in batch]
            ),
        )
        batch = [j] if j >= 0 else []


class ServedStudent:
    """One variant of an exported model folder, run as the server runs it (one intra-op thread here)."""

    def __init__(
        self, folder: Path, variant: str, cache_dir: Path, threads: int = 1, overlap: int | None = None
    ) -> None:
        import onnxruntime as ort

        loaded = load_model(folder, variant)
        self.card: ModelCard = loaded.card
        self.variant = variant
        self.onnx_path = loaded.onnx_path
        self.sha256 = sha256_file(loaded.onnx_path)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(loaded.onnx_path), opts, providers=["CPUExecutionProvider"])
        self.overlap = served_overlap() if overlap is None else overlap
        # The overlap is part of the name: the served default can change (it went 128 -> 64 on 2026-12-06).
        self.cache_dir = cache_dir / f"{self.card.id}-{variant}-{self.sha256[:12]}-overlap{self.overlap}"
        self.cache_dir.mkdir(parents=True, exist_ok=True)

    def outputs(self, name: str) -> str:
        """ONNX output name of a card output (``student``, ``unirep1900``, ``near``, ``residues``)."""
        for o in self.card.outputs:
            if o.name == name:
                return o.onnx_output
        raise ValueError(f"{self.card.id} has no output {name!r} (has {[o.name for o in self.card.outputs]})")

    def embed(
        self, sequences: Sequence[str], names: Sequence[str], batch_tokens: int = 16384
    ) -> dict[str, list[np.ndarray]]:
        """Card output name -> one array per sequence ([dim] per protein, [len, dim] per residue).

        What is not cached yet is computed in one pass for all ``names`` and written as a new part
        file per output (append-only: a kill loses only the pass in flight)."""
        onnx = {n: self.outputs(n) for n in names}
        cached = {n: self._load(n) for n in names}
        keys = [sequence_key(s) for s in sequences]
        todo = list(
            {
                k: s for k, s in zip(keys, sequences, strict=True) if any(k not in cached[n] for n in names)
            }.items()
        )
        if todo:
            fresh = self._run([s for _, s in todo], [k for k, _ in todo], onnx, batch_tokens)
            for n in names:
                folder = self.cache_dir / n
                folder.mkdir(exist_ok=True)
                part = folder / f"part-{time.time_ns()}-{os.getpid()}.npz"  # unique: two writers may share it
                tmp = folder / f"writing-{os.getpid()}.tmp.npz"
                # keys are sha256 hex, never numpy's own keyword (allow_pickle) that mypy fears
                np.savez(tmp, **fresh[n])  # type: ignore[arg-type]
                tmp.replace(part)
                cached[n].update(fresh[n])
        return {n: [cached[n][k] for k in keys] for n in names}

    def cached_keys(self, name: str) -> set[str]:
        """Sequence keys whose output ``name`` is cached (reads only the part files' key lists)."""
        keys: set[str] = set()
        for part in sorted((self.cache_dir / name).glob("part-*.npz")):
            with np.load(part) as data:
                keys.update(data.files)
        return keys

    def _load(self, name: str) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        for part in sorted((self.cache_dir / name).glob("part-*.npz")):
            with np.load(part) as data:
                out.update({k: data[k] for k in data.files})
        return out

    def _run(
        self, seqs: list[str], keys: list[str], onnx: dict[str, str], batch_tokens: int
    ) -> dict[str, dict[str, np.ndarray]]:
        limit = self.card.max_length
        plans: list[list[Window]] = [plan_windows(len(s), limit, self.overlap) for s in seqs]
        names = list(onnx)
        outs: dict[str, list[np.ndarray]] = {n: [np.empty(0)] * sum(map(len, plans)) for n in names}
        for batch, enc in window_batches(seqs, plans, batch_tokens):
            arrs = self.session.run(
                [onnx[n] for n in names], {"input_ids": enc.input_ids, "attention_mask": enc.attention_mask}
            )
            for n, arr in zip(names, arrs, strict=True):
                for row, b in enumerate(batch):
                    outs[n][b] = arr[row, : enc.lengths[row]] if arr.ndim == 3 else arr[row]
        result: dict[str, dict[str, np.ndarray]] = {n: {} for n in names}
        for n in names:
            start = 0
            for i, plan in enumerate(plans):
                vecs = outs[n][start : start + len(plan)]
                start += len(plan)
                per_residue = vecs[0].ndim == 2
                pooled = vecs[0] if len(plan) == 1 else pool_windows(plan, vecs, per_residue)
                # float16 on disk is ample for probes (the int8 variant differs from fp32 by far more)
                result[n][keys[i]] = np.asarray(pooled, dtype=np.float16 if per_residue else np.float32)
        return result


def main(argv: Sequence[str] | None = None) -> int:
    """Fill the cache for the chains (per residue) and every per-protein row, in the teachers' order."""
    import argparse
    import datetime as dt
    import json

    from protembed_bench.fidelity.sets import BINDING_FILE, load_protein_sets, residue_chains, teacher_order

    p = argparse.ArgumentParser(prog="python -m protembed_bench.fidelity.student_vectors")
    p.add_argument("--model", type=Path, default=Path("models/protembed-student-v1"))
    p.add_argument("--variant", default="int8")
    p.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    p.add_argument("--cache-dir", type=Path, default=Path("~/.cache/protembed/fidelity/student").expanduser())
    p.add_argument("--train-chains", type=int, default=300)
    p.add_argument("--binding-file", type=Path, default=BINDING_FILE, help="the ligand-binding chains")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--chunk", type=int, default=1000)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    student = ServedStudent(args.model, args.variant, args.cache_dir, args.threads)

    def log(rec: dict[str, object]) -> None:
        print(json.dumps({"t": dt.datetime.now(dt.UTC).strftime("%H:%M:%S"), **rec}), flush=True)

    log(
        {
            "model": str(args.model),
            "variant": args.variant,
            "sha256": student.sha256,
            "cache": str(student.cache_dir),
        }
    )
    tasks = residue_chains(args.data_dir, args.train_chains, args.seed, args.binding_file)
    t0 = time.perf_counter()
    student.embed([s for ch in tasks.values() for s in ch.test + ch.train], ["residues"])
    log({"stage": "chains", "seconds": round(time.perf_counter() - t0, 1)})
    sets = load_protein_sets(args.data_dir)
    seqs = [getattr(sets[s], split)[i] for s, split, i in teacher_order(sets, args.seed)]
    heads = [o.name for o in student.card.outputs if o.level == "per_protein"]
    for start in range(0, len(seqs), args.chunk):
        t0 = time.perf_counter()
        part = seqs[start : start + args.chunk]
        student.embed(part, heads)
        dt_s = time.perf_counter() - t0
        log(
            {
                "stage": "proteins",
                "rows_done": start + len(part),
                "rows": len(seqs),
                "residues_per_s": round(sum(map(len, part)) / dt_s),
            }
        )
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
