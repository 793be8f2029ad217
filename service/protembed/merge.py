"""``protembed merge OUT SHARD...``: the outputs of sharded ``protembed embed`` runs as one file.

Everything is checked before anything is written, so a refused merge leaves no partial OUT behind:
- every shard is a finished output (no ``SHARD.parts/`` of an interrupted run beside it);
- every shard holds vectors of the same model, variant, output, level and dimension (a merged file has
  one set of model attributes, and vectors of two models in one file would be silently incomparable);
- no id is in two shards (shards of one ``--shard I/N`` split never share an id, so a duplicate means
  overlapping inputs, or a shard given twice).

The duplicate check streams ids and keeps 8 bytes per id (a BLAKE2b digest) rather than the ids
themselves, so merging tens of millions of records stays within a few hundred MB; digests that meet are
confirmed on the real ids before an error is raised. OUT is written to a temporary name and renamed in
one step, in any format ``protembed embed`` writes (by its suffix), whatever the formats of the shards.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from protembed.bulk import BulkOutputError, Embedded, OutputFormat, OutputMeta, format_for


class MergeError(BulkOutputError):
    """The shards cannot be merged; the message names the file (and the id) at fault."""


@dataclass(frozen=True)
class _Shard:
    path: Path
    format: OutputFormat
    meta: OutputMeta


@dataclass(frozen=True)
class MergeStats:
    shards: int
    records: int
    meta: OutputMeta


def _digest(record_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(record_id.encode(), digest_size=8).digest(), "little")


def _digests(ids: Iterable[str]) -> np.ndarray:
    return np.fromiter((_digest(i) for i in ids), dtype=np.uint64)


def _open_shards(paths: Sequence[Path], out: Path) -> list[_Shard]:
    seen: dict[Path, Path] = {}
    shards: list[_Shard] = []
    for path in paths:
        real = path.resolve()
        if real == out.resolve():
            raise MergeError(f"{path}: a shard cannot also be the output")
        if real in seen:
            raise MergeError(f"{path}: given twice (also as {seen[real]})")
        seen[real] = path
        if not path.is_file():
            raise MergeError(f"{path}: no such file")
        parts = path.with_name(path.name + ".parts")
        if parts.is_dir():
            raise MergeError(
                f"{path}: its run did not finish ({parts} holds checkpoints); rerun its protembed embed "
                "command to complete it"
            )
        fmt = format_for(path)
        try:
            meta = fmt.read_meta(path)
        except Exception as err:  # h5py/pyarrow/zipfile each raise their own types for a damaged file
            raise MergeError(f"{path}: cannot read it as {fmt.name} ({err})") from err
        if meta is None:
            raise MergeError(f"{path}: not written by protembed embed (no model attributes)")
        shards.append(_Shard(path, fmt, meta))
    return shards


def _common_meta(shards: list[_Shard]) -> OutputMeta:
    first = shards[0]
    for shard in shards[1:]:
        if not shard.meta.matches(first.meta):
            raise MergeError(
                f"{shard.path} holds {shard.meta.describe()}, but {first.path} holds "
                f"{first.meta.describe()}; merge only shards of one model, variant and output"
            )
    # A recorded variant names the vectors better than an unrecorded one (files from before the field).
    return next((s.meta for s in shards if s.meta.model_variant), first.meta)


def _check_unique_ids(shards: list[_Shard]) -> int:
    """The number of records; raises naming an id found twice and where."""
    per_shard = [_digests(s.format.read_ids(s.path)) for s in shards]
    # read_ids returns a set, so an id repeated inside one shard cannot be seen here: a shard written by
    # protembed embed never holds one (the writer skips ids it has), and each format keys records by id.
    digests = np.concatenate(per_shard) if per_shard else np.zeros(0, dtype=np.uint64)
    owner = np.repeat(np.arange(len(shards)), [len(d) for d in per_shard])
    order = np.argsort(digests, kind="stable")
    ordered = digests[order]
    twice = np.flatnonzero(ordered[1:] == ordered[:-1])
    if len(twice):
        suspects = set(ordered[twice].tolist())
        holders: dict[str, list[Path]] = {}
        for index in sorted(set(owner[order[twice]].tolist()) | set(owner[order[twice + 1]].tolist())):
            shard = shards[index]
            for record_id in sorted(shard.format.read_ids(shard.path)):
                if _digest(record_id) in suspects:
                    holders.setdefault(record_id, []).append(shard.path)
        for record_id, paths in holders.items():
            if len(paths) > 1:
                raise MergeError(
                    f"id {record_id!r} is in both {paths[0]} and {paths[1]}; shards of one split never "
                    "share an id (overlapping inputs, or the same records embedded twice?)"
                )
        # Otherwise two different ids shared a 64-bit digest: not a duplicate.
    return len(digests)


def _batches(shards: list[_Shard], size: int = 1000) -> Iterator[list[Embedded]]:
    batch: list[Embedded] = []
    for shard in shards:
        for record in shard.format.read(shard.path):
            batch.append(record)
            if len(batch) >= size:
                yield batch
                batch = []
    if batch:
        yield batch


def merge_shards(out: str | Path, shard_paths: Sequence[str | Path]) -> MergeStats:
    """Check the shards, then write them into ``out`` (atomically replacing it)."""
    out = Path(out)
    if not shard_paths:
        raise MergeError("no shards to merge")
    out_format = format_for(out)  # refuse an unknown suffix before reading anything
    shards = _open_shards([Path(p) for p in shard_paths], out)
    meta = _common_meta(shards)
    records = _check_unique_ids(shards)
    tmp = out.with_name(out.name + ".tmp")
    tmp.unlink(missing_ok=True)
    try:
        out_format.merge(None, _batches(shards), tmp, meta)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return MergeStats(len(shards), records, meta)
