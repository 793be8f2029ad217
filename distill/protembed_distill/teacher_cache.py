"""Teacher embeddings computed once into HDF5 (float16), keyed by sequence hash, resumable after a kill.

Layout of ``<cache_dir>/<teacher>[-<options hash>].h5`` (one file per teacher configuration):
  keys         [N]           S64   sha256 hex of the cropped sequence (``data.sequence_key``)
  lengths      [N]           int32 residues the teacher saw
  per_protein  [N, dim]      f16
  res_offsets  [N]           int64 row of the first residue in ``residues`` (per-residue files only)
  residues     [R, rdim]     f16   per-residue states of every sequence, concatenated
  attrs: count, residue_count (rows that are complete), teacher (JSON of Teacher.describe()), per_residue

Writes extend the datasets first and bump ``count`` last, then flush; a kill between the two leaves
rows past ``count`` that are ignored and overwritten on reopen, so a resumed run never trusts a
half-written batch. Keys make the cache independent of corpus order and subset size: growing the
subset only embeds the new sequences.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from protembed.packing import Budget, pack_sorted
from protembed_distill.config import DistillConfig, TeacherConfig
from protembed_distill.data.dataset import Item
from protembed_distill.teachers.base import Teacher

__all__ = ["CacheError", "EmbeddingStore", "build_caches", "cache_path", "embed_into"]

CACHE_FORMAT = 1
# Loader options that change where or how fast a teacher runs, never what it outputs: a cache filled on
# a GPU box (device="cuda", big batches) is the same cache a CPU machine reads.
RUNTIME_OPTIONS = frozenset({"device", "max_batch_tokens", "max_batch_size", "batch_size"})


class CacheError(RuntimeError):
    """A cache that does not match its teacher or is missing entries; the message says which."""


def cache_path(cache_dir: Path, teacher: TeacherConfig) -> Path:
    """Options that change the outputs (e.g. which esm2 checkpoint) are part of the file name; runtime
    options (:data:`RUNTIME_OPTIONS`) are not."""
    options = {k: v for k, v in teacher.options.items() if k not in RUNTIME_OPTIONS}
    if not options:
        return cache_dir / f"{teacher.name}.h5"
    digest = hashlib.sha256(json.dumps(options, sort_keys=True, default=str).encode()).hexdigest()
    return cache_dir / f"{teacher.name}-{digest[:10]}.h5"


class EmbeddingStore:
    """One teacher's HDF5 cache file. Use as a context manager."""

    def __init__(self, path: Path, *, mode: str = "a") -> None:
        self.path = path
        if mode == "r" and not path.is_file():
            raise CacheError(f"teacher cache {path} does not exist; run the embed stage first")
        path.parent.mkdir(parents=True, exist_ok=True)
        self._f = h5py.File(path, mode)
        self._index: dict[str, int] | None = None

    # -- lifecycle ------------------------------------------------------------------------------
    def __enter__(self) -> EmbeddingStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._f.close()

    @property
    def initialized(self) -> bool:
        return "keys" in self._f

    def init(self, meta: dict[str, Any], dim: int, residue_dim: int | None) -> None:
        """Create the datasets, or check an existing file was made for the same teacher shape."""
        if self.initialized:
            have = self.meta
            if have.get("dim") != dim:
                raise CacheError(f"{self.path}: cached dim {have.get('dim')} != teacher dim {dim}")
            if residue_dim is not None and "residues" not in self._f:
                raise CacheError(
                    f"{self.path} was built without per-residue states; delete it (or give the teacher "
                    "per_residue = false) to rebuild"
                )
            return
        f = self._f
        f.attrs["format"] = CACHE_FORMAT
        f.attrs["teacher"] = json.dumps(meta, default=str)
        f.attrs["count"] = 0
        f.attrs["residue_count"] = 0
        f.attrs["per_residue"] = residue_dim is not None
        f.create_dataset("keys", (0,), maxshape=(None,), dtype="S64", chunks=(4096,))
        f.create_dataset("lengths", (0,), maxshape=(None,), dtype="i4", chunks=(4096,))
        f.create_dataset("per_protein", (0, dim), maxshape=(None, dim), dtype="f2", chunks=(256, dim))
        if residue_dim is not None:
            f.create_dataset("res_offsets", (0,), maxshape=(None,), dtype="i8", chunks=(4096,))
            f.create_dataset(
                "residues",
                (0, residue_dim),
                maxshape=(None, residue_dim),
                dtype="f2",
                chunks=(max(1, 65536 // residue_dim), residue_dim),
            )
        f.flush()

    # -- reading --------------------------------------------------------------------------------
    @property
    def meta(self) -> dict[str, Any]:
        meta: dict[str, Any] = json.loads(str(self._f.attrs["teacher"]))
        return meta

    @property
    def count(self) -> int:
        return int(self._f.attrs["count"]) if self.initialized else 0

    @property
    def has_residues(self) -> bool:
        return "residues" in self._f

    def index(self) -> dict[str, int]:
        if self._index is None:
            keys = self._f["keys"][: self.count] if self.initialized else []
            self._index = {k.decode("ascii"): i for i, k in enumerate(keys)}
        return self._index

    def _rows(self, keys: Sequence[str]) -> np.ndarray:
        idx = self.index()
        missing = [k for k in keys if k not in idx]
        if missing:
            raise CacheError(
                f"{self.path}: {len(missing)} of {len(keys)} sequences are not cached (first key "
                f"{missing[0][:12]}...); run the embed stage"
            )
        return np.fromiter((idx[k] for k in keys), dtype=np.int64, count=len(keys))

    def per_protein(self, keys: Sequence[str]) -> np.ndarray:
        """float32 [len(keys), dim] in the order of ``keys``."""
        rows = self._rows(keys)
        data = self._f["per_protein"][: self.count]  # one contiguous read beats fancy indexing in h5py
        out: np.ndarray = np.asarray(data[rows], dtype=np.float32)
        return out

    def residue_spans(self, keys: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(offsets, lengths) into ``residues`` for each key."""
        if not self.has_residues:
            raise CacheError(f"{self.path} holds no per-residue states")
        rows = self._rows(keys)
        return self._f["res_offsets"][: self.count][rows], self._f["lengths"][: self.count][rows]

    def residues(self) -> h5py.Dataset:
        return self._f["residues"]

    # -- writing --------------------------------------------------------------------------------
    def append(
        self,
        keys: Sequence[str],
        per_protein: np.ndarray,
        per_residue: Sequence[np.ndarray] | None,
        lengths: Sequence[int],
    ) -> None:
        f = self._f
        n0, n = self.count, len(keys)
        r0 = int(f.attrs["residue_count"])
        for name in ("keys", "lengths", "per_protein"):
            f[name].resize(n0 + n, axis=0)
        f["keys"][n0:] = np.array([k.encode("ascii") for k in keys], dtype="S64")
        f["lengths"][n0:] = np.asarray(lengths, dtype=np.int32)
        f["per_protein"][n0:] = per_protein.astype(np.float16)
        r1 = r0
        if self.has_residues:
            if per_residue is None:
                raise CacheError(
                    f"{self.path}: per-residue cache but the teacher returned no per-residue states"
                )
            total = sum(len(r) for r in per_residue)
            f["res_offsets"].resize(n0 + n, axis=0)
            f["residues"].resize(r0 + total, axis=0)
            offsets = r0 + np.concatenate([[0], np.cumsum([len(r) for r in per_residue])[:-1]])
            f["res_offsets"][n0:] = offsets
            f["residues"][r0:] = np.concatenate(per_residue).astype(np.float16)
            r1 = r0 + total
        f.flush()  # data first ...
        f.attrs["residue_count"] = r1
        f.attrs["count"] = n0 + n  # ... then the commit marker
        f.flush()
        if self._index is not None:
            self._index.update({k: n0 + i for i, k in enumerate(keys)})


def embed_into(
    teacher: Teacher,
    items: Sequence[Item],
    store: EmbeddingStore,
    *,
    per_residue: bool,
    batch_tokens: int | None = None,
    progress: bool = True,
    chunk_size: int = 512,
    log: Callable[[str], None] | None = None,
    log_every_s: float = 120.0,
) -> dict[str, float]:
    """Embed the items not yet in ``store``, ``batch_tokens`` padded residues a call (default: the
    teacher's own ``call_tokens``); returns counts and the measured residues/s.

    ``log`` gets a line every ``log_every_s`` (residues done, rate, time left): a background job's log
    file shows its progress without tqdm's carriage returns (the whole corpus takes tens of minutes)."""
    residue_dim = teacher.per_residue_dim if per_residue else None
    store.init({**teacher.describe(), "cache_format": CACHE_FORMAT}, teacher.dim, residue_dim)
    done = store.index()
    todo_map = {it.key: it for it in items if it.key not in done}  # dedupe identical sequences
    todo = list(todo_map.values())
    seqs = [it.sequence[: teacher.max_length] for it in todo]  # crop again only if the teacher is shorter
    total = sum(len(s) for s in seqs)
    stats = {
        "cached_before": float(len(items) - len(todo)),
        "embedded": float(len(todo)),
        "residues": float(total),
        "seconds": 0.0,
        "residues_per_s": 0.0,
    }
    if not todo:
        return stats
    budget = Budget(batch_tokens or teacher.call_tokens)
    from tqdm import tqdm

    # Work through the items in their given (subset-rank) order, a chunk at a time, length-sorting
    # only within a chunk: a run killed part-way leaves a cached prefix of the ranked subset, so a
    # smaller data.max_sequences is then fully cached instead of missing its long sequences.
    chunks = [list(range(i, min(i + chunk_size, len(seqs)))) for i in range(0, len(seqs), chunk_size)]
    bar = tqdm(
        total=total,
        unit="res",
        unit_scale=True,
        desc=f"embed {teacher.name}",
        disable=not progress,
        file=sys.stderr,
        smoothing=0.05,
    )
    t0 = last = time.perf_counter()
    done_res = 0
    try:
        for chunk, local in (
            (c, b) for c in chunks for b in pack_sorted([len(seqs[i]) for i in c], budget)
        ):
            batch = [chunk[j] for j in local]
            bseqs = [seqs[i] for i in batch]
            out = teacher.embed(bseqs, per_residue=per_residue)
            pp = np.asarray(out.per_protein, dtype=np.float32)
            if pp.shape != (len(batch), teacher.dim):
                raise CacheError(
                    f"teacher {teacher.name} returned per_protein {pp.shape}, "
                    f"expected {(len(batch), teacher.dim)}"
                )
            if not np.isfinite(pp).all():
                bad = todo[batch[int(np.argmax(~np.isfinite(pp).all(axis=1)))]]
                raise CacheError(f"teacher {teacher.name} returned non-finite values for {bad.id}")
            if np.abs(pp).max() > 65000:  # would overflow float16 silently
                raise CacheError(f"teacher {teacher.name} values exceed the float16 range")
            res = None
            if per_residue:
                if out.per_residue is None or len(out.per_residue) != len(batch):
                    raise CacheError(f"teacher {teacher.name} returned no per-residue states")
                res = [np.asarray(r, dtype=np.float32) for r in out.per_residue]
                for r, s in zip(res, bseqs, strict=True):
                    if r.shape != (len(s), teacher.per_residue_dim):
                        raise CacheError(
                            f"teacher {teacher.name} per-residue shape {r.shape}, expected "
                            f"{(len(s), teacher.per_residue_dim)}"
                        )
            store.append([todo[i].key for i in batch], pp, res, [len(s) for s in bseqs])
            batch_res = sum(len(s) for s in bseqs)
            bar.update(batch_res)
            done_res += batch_res
            now = time.perf_counter()
            if log is not None and now - last >= log_every_s and done_res < total:
                last = now
                rate = done_res / (now - t0)
                log(
                    f"{teacher.name}: {done_res:,} of {total:,} residues ({100 * done_res / total:.0f}%), "
                    f"{rate:,.0f} res/s, ~{(total - done_res) / rate / 60:.0f} min left"
                )
    finally:
        bar.close()
    secs = time.perf_counter() - t0
    stats.update(seconds=secs, residues_per_s=total / secs if secs > 0 else 0.0)
    return stats


TeacherLoader = Callable[..., Teacher]


def _default_loader(name: str, **options: Any) -> Teacher:
    from protembed_distill.teachers.registry import load_teacher

    return load_teacher(name, **options)


def build_caches(
    cfg: DistillConfig,
    items: Sequence[Item],
    *,
    loader: TeacherLoader | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> dict[str, dict[str, float]]:
    """Embed ``items`` with every configured teacher (skipping what is cached); teacher -> stats.
    A teacher is loaded only when something is missing, so a complete cache needs no weights."""
    load = loader or _default_loader
    cache_dir = cfg.teacher_cache_dir()
    report: dict[str, dict[str, float]] = {}
    for tcfg in cfg.teachers:
        path = cache_path(cache_dir, tcfg)
        with EmbeddingStore(path) as store:
            have = store.index() if store.initialized else {}
            missing = [it for it in items if it.key not in have]
            if not missing and (store.has_residues or not tcfg.per_residue):
                report[tcfg.name] = {"cached_before": float(len(items)), "embedded": 0.0}
                if log:
                    log(f"{tcfg.name}: all {len(items)} sequences already cached in {path}")
                continue
            teacher = load(tcfg.name, **tcfg.options)
            if log:
                log(f"{tcfg.name}: {len(missing)} of {len(items)} sequences to embed -> {path}")
            report[tcfg.name] = embed_into(
                teacher,
                items,
                store,
                per_residue=tcfg.per_residue,
                batch_tokens=tcfg.embed_batch_tokens or cfg.run.embed_batch_tokens,
                progress=progress,
                log=None if progress else log,  # the bar shows it already
            )
            del teacher
    return report
