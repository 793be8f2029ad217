"""The teachers' vectors for the fidelity evaluation, computed once into resumable HDF5 caches.

Two caches per teacher under ``cache_dir`` (the distillation cache format, keyed by sequence hash):
``residues/<teacher>.h5`` holds per-residue states of the per-residue tasks' chains, and
``proteins/<teacher>.h5`` per-protein vectors of the per-protein sets in :func:`sets.teacher_order`.
The chains come first (small and the per-residue question needs them); then the proteins a chunk at a
time, every teacher per chunk, so whatever is cached when the time runs out is a stratified subset that
both teachers share. A kill loses at most the batch in flight.

    python -m protembed_bench.fidelity.teacher_vectors --until 08:50 --threads 1
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from protembed_bench.fidelity.sets import (
    BINDING_FILE,
    ProteinSet,
    load_protein_sets,
    residue_chains,
    sequence_key,
    teacher_order,
    unknown_sets,
)

__all__ = ["TEACHERS", "cached_vectors", "main", "protein_order"]

TEACHERS = ("unirep1900", "near")
DEFAULT_CACHE = Path("~/.cache/protembed/fidelity").expanduser()


def _items(seqs: Sequence[str]) -> list:  # list[Item]; imported lazily (torch-side package)
    from protembed_distill.data.dataset import Item

    unique = {sequence_key(s): s for s in seqs}
    return [Item(f"eval|{k[:16]}", "eval", s, k) for k, s in unique.items()]


def cached_vectors(path: Path, seqs: Sequence[str], residues: bool = False) -> dict[str, np.ndarray]:
    """key -> float32 vector (or [L, dim] residue states) for the sequences the cache file holds."""
    from protembed_distill.teacher_cache import EmbeddingStore

    if not path.is_file():
        return {}
    with EmbeddingStore(path, mode="r") as store:
        if not store.initialized:
            return {}
        index = store.index()
        keys = [k for k in dict.fromkeys(sequence_key(s) for s in seqs) if k in index]
        if not keys:
            return {}
        if not residues:
            return dict(zip(keys, store.per_protein(keys).astype(np.float32), strict=True))
        starts, lengths = store.residue_spans(keys)
        data = store.residues()
        return {
            k: np.asarray(data[int(s) : int(s) + int(n)], dtype=np.float32)
            for k, s, n in zip(keys, starts, lengths, strict=True)
        }


def protein_order(sets: dict[str, ProteinSet], priority: Sequence[str] | None, seed: int) -> list[str]:
    """The per-protein sequences in the order the job embeds them: the sets named in ``priority`` one
    after another (each a stratified interleaving of its splits, so a set is whole before the next
    starts), or every set interleaved when ``priority`` is None."""
    if problem := unknown_sets(sets, priority):
        raise SystemExit(problem)
    groups = [list(sets)] if priority is None else [[name] for name in priority]
    seqs: list[str] = []
    for group in groups:
        order = teacher_order({n: sets[n] for n in group}, seed)
        seqs.extend(getattr(sets[n], split)[i] for n, split, i in order)
    return list(dict.fromkeys(seqs))


def _deadline(text: str | None) -> float:
    if not text:
        return float("inf")
    hh, mm = (int(x) for x in text.split(":"))
    now = dt.datetime.now(dt.UTC)
    end = now.replace(hour=hh, minute=mm, second=0, microsecond=0)
    return time.time() + (end - now).total_seconds()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m protembed_bench.fidelity.teacher_vectors")
    p.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    p.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    p.add_argument("--train-chains", type=int, default=300)
    p.add_argument("--binding-file", type=Path, default=BINDING_FILE, help="the ligand-binding chains")
    p.add_argument("--seed", type=int, default=0)
    # UniRep-1900 wants hundreds of rows a batch on a CPU (teachers/unirep.py: 2-3x the rate of 64), so a
    # round, and a chunk of the chains, holds a few hundred sequences.
    p.add_argument("--chunk", type=int, default=512, help="sequences per round of every teacher")
    p.add_argument(
        "--batch-tokens",
        type=int,
        default=None,
        help="padded residues per teacher call (default: each teacher's own, Teacher.call_tokens)",
    )
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--until", help="HH:MM UTC: start no chunk after this time")
    p.add_argument(
        "--sets",
        nargs="+",
        default=None,
        help="per-protein sets to cover, in this order of priority (default: all, interleaved); a later "
        "run without it resumes with the rest",
    )
    p.add_argument(
        "--no-chains",
        action="store_true",
        help="skip the per-residue chains' states (the per-residue tables need them; retention does not)",
    )
    args = p.parse_args(argv)

    import torch

    from protembed_distill.teacher_cache import EmbeddingStore, embed_into
    from protembed_distill.teachers.registry import load_teacher

    torch.set_num_threads(args.threads)
    end = _deadline(args.until)
    (args.cache_dir / "residues").mkdir(parents=True, exist_ok=True)
    (args.cache_dir / "proteins").mkdir(parents=True, exist_ok=True)
    teachers = {name: load_teacher(name) for name in TEACHERS}

    def log(rec: dict[str, object]) -> None:
        print(json.dumps({"t": dt.datetime.now(dt.UTC).strftime("%H:%M:%S"), **rec}), flush=True)

    tasks = residue_chains(args.data_dir, args.train_chains, args.seed, args.binding_file)
    chain_seqs = [] if args.no_chains else [s for ch in tasks.values() for s in ch.test + ch.train]
    for name, teacher in teachers.items() if chain_seqs else ():
        items = _items(chain_seqs)
        with EmbeddingStore(args.cache_dir / "residues" / f"{name}.h5") as store:
            stats = embed_into(
                teacher,
                items,
                store,
                per_residue=True,
                batch_tokens=args.batch_tokens,
                progress=False,
                chunk_size=args.chunk,
            )
        log({"stage": "chains", "teacher": name, **stats})

    sets = load_protein_sets(args.data_dir)
    seqs = protein_order(sets, args.sets, args.seed)
    done_rows = 0
    for start in range(0, len(seqs), args.chunk):
        if time.time() > end:
            log({"stage": "proteins", "stopped": "deadline", "rows_done": done_rows, "rows": len(seqs)})
            return 0
        items = _items(seqs[start : start + args.chunk])
        for name, teacher in teachers.items():
            with EmbeddingStore(args.cache_dir / "proteins" / f"{name}.h5") as store:
                stats = embed_into(
                    teacher, items, store, per_residue=False, batch_tokens=args.batch_tokens, progress=False
                )
            if stats["embedded"]:
                log({"stage": "proteins", "teacher": name, "rows_done": start + args.chunk, **stats})
        done_rows = min(len(seqs), start + args.chunk)
    log({"stage": "proteins", "finished": True, "rows": len(seqs)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
