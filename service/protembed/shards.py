"""Which shard a record belongs to: ``protembed embed --shard I/N`` embeds only the records of shard I.

The shard of a record is a function of its id alone, never of its position in the file, so the same
record lands in the same shard on every machine and on every rerun, and records added anywhere in the
file do not move any other record. Ids are hashed with BLAKE2b (stable across processes and Python
versions, unlike ``hash()``), and the 64-bit digest picks a shard by jump consistent hashing (Lamping &
Veach, 2014): besides spreading ids evenly, growing N to N+1 moves only the 1/(N+1) of records that the
new shard takes, so shards already embedded with N stay almost entirely valid.

Shards are numbered from 0, as a Kubernetes Indexed Job numbers its pods (JOB_COMPLETION_INDEX) and as
a scheduler's array job can (SLURM_ARRAY_TASK_ID with ``--array=0-(N-1)``).
"""

from __future__ import annotations

import contextlib
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

_SPEC = re.compile(r"\s*(\d+)\s*/\s*(\d+)\s*")
_MASK = (1 << 64) - 1


def id_key(record_id: str) -> int:
    """The 64-bit key of an id (BLAKE2b of its UTF-8 bytes)."""
    return int.from_bytes(hashlib.blake2b(record_id.encode("utf-8"), digest_size=8).digest(), "big")


def jump_hash(key: int, buckets: int) -> int:
    """Lamping & Veach's jump consistent hash: the bucket in [0, buckets) of a 64-bit key."""
    b, j = -1, 0
    while j < buckets:
        b = j
        key = (key * 2862933555777941757 + 1) & _MASK
        j = int((b + 1) * ((1 << 31) / ((key >> 33) + 1)))
    return b


def shard_of(record_id: str, count: int) -> int:
    """The shard (0 .. count-1) of a record id."""
    return jump_hash(id_key(record_id), count)


@dataclass(frozen=True)
class Shard:
    index: int  # 0 .. count-1
    count: int

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ValueError(f"shard count must be at least 1, got {self.count}")
        if not 0 <= self.index < self.count:
            raise ValueError(
                f"shard index {self.index} is outside 0..{self.count - 1} (shards are numbered from 0)"
            )

    @classmethod
    def parse(cls, spec: str) -> Shard:
        """``"I/N"``: shard I of N, I counted from 0."""
        found = _SPEC.fullmatch(spec)
        if found is None:
            raise ValueError(f"{spec!r}: a shard is written I/N, e.g. 0/8 (shard 0 of 8; I from 0 to N-1)")
        return cls(int(found.group(1)), int(found.group(2)))

    def holds(self, record_id: str) -> bool:
        return self.count == 1 or shard_of(record_id, self.count) == self.index

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def split_fasta(path: str | Path, count: int, out_dir: str | Path) -> list[Path]:
    """Write the records of a FASTA file into ``count`` files, ``OUT_DIR/shard-I-of-N.fasta``, by the same
    assignment as ``--shard I/N``, in one pass; returns the paths in shard order.

    For many shard jobs over a very large file: each then reads its own part instead of scanning the
    whole file. Records are copied as read (header and residues, one sequence line), bad ones included,
    so embedding part I gives what ``--shard I/N`` over the whole file gives; only the record numbers in
    problem reports count within the part. The files appear together at the end (written under temporary
    names first), so an interrupted split leaves no part that looks complete.
    """
    from protembed.fasta import read_fasta

    if count < 1:
        raise ValueError(f"shard count must be at least 1, got {count}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"shard-{i}-of-{count}.fasta" for i in range(count)]
    temporary = [p.with_name(p.name + ".tmp") for p in paths]
    try:
        with contextlib.ExitStack() as stack:
            handles = [stack.enter_context(open(t, "w", encoding="utf-8")) for t in temporary]
            for record in read_fasta(path):
                handles[shard_of(record.id, count)].write(f">{record.header}\n{record.sequence}\n")
    except BaseException:
        for tmp in temporary:
            tmp.unlink(missing_ok=True)
        raise
    for tmp, final in zip(temporary, paths, strict=True):
        tmp.replace(final)
    return paths
