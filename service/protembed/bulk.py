"""Bulk embedding of FASTA files into HDF5, Parquet or NPZ files keyed by sequence id.

Crash safety and resumability come from one mechanism shared by all three formats: embeddings are
buffered briefly, then written as atomic checkpoint parts (``OUT.parts/part-000001.npz``, written to a
temporary name and renamed). When the run ends, the parts are merged into a temporary copy of the
output, which is renamed over ``OUT`` in one step, and the parts are deleted. A run killed at any moment
therefore leaves ``OUT`` either untouched or complete, plus parts holding everything checkpointed since;
the next run reads the ids from both and skips them. Memory stays bounded: at most one checkpoint of
embeddings is buffered (``checkpoint_records`` / ``checkpoint_bytes``), and merging streams one part at a
time.

Layouts:
- HDF5 (as bio_embeddings): one dataset per id, named by the id (``/`` and ``%`` escaped as ``%2F`` and
  ``%25``, since ``/`` separates HDF5 groups), shape ``[dim]`` or ``[length, dim]``, with attributes
  ``original_id`` (the full FASTA header), ``id``, ``length``, ``windows`` (model windows the vector
  was pooled from: over 1 for a sequence longer than the model's window) and ``truncated`` (only the
  first max_length residues were embedded). File attributes: model, model_version, output,
  per_residue, dim.
- Parquet: columns ``id``, ``header``, ``length``, ``embedding`` (``fixed_size_list<float32, dim>``,
  or per residue ``list<fixed_size_list<float32, dim>>``), ``windows`` and ``truncated``; schema
  metadata ``protembed`` holds the JSON of the same model fields.
- NPZ: one array per id (``np.load(path)[id]``); the zip comment holds the JSON of the model fields.
  NPZ keeps vectors only: no header, windows or truncation per record.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import time
import zipfile
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from protembed.errors import OverloadedError, ProtembedError
from protembed.fasta import CheckedRecord, FastaRecord, RecordChecker, RecordProblem
from protembed.packing import Budget, pack


class BulkOutputError(RuntimeError):
    """The output file cannot be used (unknown format, or written by another model / output kind)."""


@dataclass(frozen=True)
class OutputMeta:
    """What produced the vectors of an output file; a resumed run must match it exactly."""

    model: str
    model_version: str
    output: str
    per_residue: bool
    dim: int
    model_variant: str = ""  # "" = not recorded (files written before the field; old servers)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    def describe(self) -> str:
        """How errors name these vectors, e.g. "per-protein 'student' vectors (dim 768) of M 1.1.0"."""
        return _describe(self)

    def matches(self, other: OutputMeta) -> bool:
        """Same vectors: equal in every field; an unrecorded variant matches any variant."""
        if "" in (self.model_variant, other.model_variant):
            return replace(self, model_variant="") == replace(other, model_variant="")
        return self == other

    @classmethod
    def of(cls, answer: Any) -> OutputMeta:
        """The meta of an answer that names its vectors with the same fields: the engine's
        ``EmbedResponse`` (local runs) or the client's ``EmbedResult`` (through a server)."""
        return cls(**{f.name: getattr(answer, f.name) for f in fields(cls)})

    @classmethod
    def from_json(cls, text: str | bytes) -> OutputMeta:
        data = json.loads(text)
        return cls(
            model=str(data["model"]),
            model_version=str(data["model_version"]),
            output=str(data["output"]),
            per_residue=bool(data["per_residue"]),
            dim=int(data["dim"]),
            model_variant=str(data.get("model_variant", "")),
        )


@dataclass(frozen=True)
class Embedded:
    id: str
    header: str
    length: int
    embedding: np.ndarray  # float32 [dim] or [length, dim]
    windows: int = 1  # model windows the vector was pooled from (over 1: a chunked long sequence)
    truncated: bool = False  # only the first max_length residues were embedded


# --- formats -----------------------------------------------------------------------------------------


class OutputFormat(ABC):
    """One file format: read ids/meta of an existing file, and merge new records into a copy of it."""

    name: str
    suffixes: tuple[str, ...]

    @abstractmethod
    def read_ids(self, path: Path) -> set[str]: ...

    @abstractmethod
    def read_meta(self, path: Path) -> OutputMeta | None: ...

    @abstractmethod
    def read(self, path: Path) -> Iterator[Embedded]:
        """All records of a file (for users and tests), one at a time."""

    @abstractmethod
    def merge(
        self, existing: Path | None, batches: Iterable[list[Embedded]], dest: Path, meta: OutputMeta
    ) -> None:
        """Write ``dest``: the records of ``existing`` (if any) followed by ``batches``."""


def _h5_name(record_id: str) -> str:
    return record_id.replace("%", "%25").replace("/", "%2F")


class HDF5Format(OutputFormat):
    name = "hdf5"
    suffixes = (".h5", ".hdf5")

    def read_ids(self, path: Path) -> set[str]:
        import h5py

        with h5py.File(path, "r") as f:
            return {str(f[name].attrs.get("id", name)) for name in f}

    def read_meta(self, path: Path) -> OutputMeta | None:
        import h5py

        with h5py.File(path, "r") as f:
            if "model" not in f.attrs:
                return None
            return OutputMeta(
                model=str(f.attrs["model"]),
                model_version=str(f.attrs["model_version"]),
                output=str(f.attrs["output"]),
                per_residue=bool(f.attrs["per_residue"]),
                dim=int(f.attrs["dim"]),
                model_variant=str(f.attrs.get("model_variant", "")),
            )

    def read(self, path: Path) -> Iterator[Embedded]:
        import h5py

        with h5py.File(path, "r") as f:
            for name in f:
                ds = f[name]
                arr = np.asarray(ds[()], dtype=np.float32)
                yield Embedded(
                    str(ds.attrs.get("id", name)),
                    str(ds.attrs.get("original_id", name)),
                    int(ds.attrs.get("length", arr.shape[0] if arr.ndim == 2 else 0)),
                    arr,
                    int(ds.attrs.get("windows", 1)),  # absent from files written before the fields
                    bool(ds.attrs.get("truncated", False)),
                )

    def merge(
        self, existing: Path | None, batches: Iterable[list[Embedded]], dest: Path, meta: OutputMeta
    ) -> None:
        import h5py

        if existing is not None:
            shutil.copyfile(existing, dest)  # appending to a copy keeps the original intact until the rename
        with h5py.File(dest, "a" if existing is not None else "w") as f:
            for key, value in asdict(meta).items():
                f.attrs[key] = value
            for batch in batches:
                for rec in batch:
                    name = _h5_name(rec.id)
                    if name in f:  # already there: a resumed run never writes an id twice
                        continue
                    ds = f.create_dataset(name, data=rec.embedding)
                    ds.attrs["original_id"] = rec.header
                    ds.attrs["id"] = rec.id
                    ds.attrs["length"] = rec.length
                    ds.attrs["windows"] = rec.windows
                    ds.attrs["truncated"] = rec.truncated


class ParquetFormat(OutputFormat):
    name = "parquet"
    suffixes = (".parquet", ".pq")

    @staticmethod
    def _schema(meta: OutputMeta) -> Any:
        import pyarrow as pa

        vector = pa.list_(pa.float32(), meta.dim)
        return pa.schema(
            [
                ("id", pa.string()),
                ("header", pa.string()),
                ("length", pa.int32()),
                ("embedding", pa.list_(vector) if meta.per_residue else vector),
                ("windows", pa.int32()),
                ("truncated", pa.bool_()),
            ],
            metadata={"protembed": meta.to_json()},
        )

    def read_ids(self, path: Path) -> set[str]:
        import pyarrow.parquet as pq

        ids: set[str] = set()
        for batch in pq.ParquetFile(path).iter_batches(columns=["id"]):
            ids.update(batch.column(0).to_pylist())
        return ids

    def read_meta(self, path: Path) -> OutputMeta | None:
        import pyarrow.parquet as pq

        metadata = pq.read_schema(path).metadata or {}
        raw = metadata.get(b"protembed")
        return None if raw is None else OutputMeta.from_json(raw)

    def read(self, path: Path) -> Iterator[Embedded]:
        import pyarrow.parquet as pq

        meta = self.read_meta(path)
        for batch in pq.ParquetFile(path).iter_batches():
            cols = batch.to_pydict()
            n = batch.num_rows
            # Files written before the windows/truncated columns: one window, not truncated.
            windows, truncated = cols.get("windows", [1] * n), cols.get("truncated", [False] * n)
            for rid, header, length, emb, win, cut in zip(
                cols["id"], cols["header"], cols["length"], cols["embedding"], windows, truncated, strict=True
            ):
                arr = np.asarray(emb, dtype=np.float32)
                if meta is not None and meta.per_residue:
                    arr = arr.reshape(-1, meta.dim)
                yield Embedded(rid, header, int(length), arr, int(win), bool(cut))

    def _table(self, batch: list[Embedded], meta: OutputMeta) -> Any:
        import pyarrow as pa

        schema = self._schema(meta)
        flat = pa.array(
            np.concatenate([r.embedding.reshape(-1) for r in batch]).astype(np.float32, copy=False),
            type=pa.float32(),
        )
        vectors = pa.FixedSizeListArray.from_arrays(flat, meta.dim)
        if meta.per_residue:
            rows = np.array([r.embedding.shape[0] for r in batch], dtype=np.int32)
            offsets = pa.array(np.concatenate([[0], np.cumsum(rows)]).astype(np.int32), type=pa.int32())
            embedding = pa.ListArray.from_arrays(offsets, vectors)
        else:
            embedding = vectors
        return pa.Table.from_arrays(
            [
                pa.array([r.id for r in batch], type=pa.string()),
                pa.array([r.header for r in batch], type=pa.string()),
                pa.array([r.length for r in batch], type=pa.int32()),
                embedding,
                pa.array([r.windows for r in batch], type=pa.int32()),
                pa.array([r.truncated for r in batch], type=pa.bool_()),
            ],
            schema=schema,
        )

    @staticmethod
    def _upgrade(table: Any, schema: Any) -> Any:
        """A row group of a file written before the windows/truncated columns, in today's schema."""
        import pyarrow as pa

        defaults = {"windows": (1, pa.int32()), "truncated": (False, pa.bool_())}
        for name, (value, typ) in defaults.items():
            if name not in table.column_names:
                table = table.append_column(name, pa.array([value] * table.num_rows, type=typ))
        return table.select(schema.names).cast(schema)

    def merge(
        self, existing: Path | None, batches: Iterable[list[Embedded]], dest: Path, meta: OutputMeta
    ) -> None:
        import pyarrow.parquet as pq

        schema = self._schema(meta)
        with pq.ParquetWriter(dest, schema) as writer:
            if existing is not None:  # a parquet file cannot be appended to: stream its row groups over
                source = pq.ParquetFile(existing)
                for group in range(source.num_row_groups):
                    writer.write_table(self._upgrade(source.read_row_group(group), schema))
            for batch in batches:
                if batch:
                    writer.write_table(self._table(batch, meta))


class NPZFormat(OutputFormat):
    name = "npz"
    suffixes = (".npz",)

    def read_ids(self, path: Path) -> set[str]:
        with zipfile.ZipFile(path) as zf:
            return {n.removesuffix(".npy") for n in zf.namelist()}

    def read_meta(self, path: Path) -> OutputMeta | None:
        with zipfile.ZipFile(path) as zf:
            return OutputMeta.from_json(zf.comment) if zf.comment else None

    def read(self, path: Path) -> Iterator[Embedded]:
        with np.load(path) as data:
            for key in data.files:
                arr = np.asarray(data[key], dtype=np.float32)
                yield Embedded(key, key, int(arr.shape[0]) if arr.ndim == 2 else 0, arr)

    def merge(
        self, existing: Path | None, batches: Iterable[list[Embedded]], dest: Path, meta: OutputMeta
    ) -> None:
        if existing is not None:
            shutil.copyfile(existing, dest)
        # Same member layout as np.savez (stored, one .npy per key), written one array at a time.
        with zipfile.ZipFile(
            dest, "a" if existing is not None else "w", zipfile.ZIP_STORED, allowZip64=True
        ) as zf:
            names = set(zf.namelist())
            for batch in batches:
                for rec in batch:
                    member = f"{rec.id}.npy"
                    if member in names:
                        continue
                    names.add(member)
                    with zf.open(member, "w", force_zip64=True) as handle:
                        np.lib.format.write_array(
                            handle, np.ascontiguousarray(rec.embedding), allow_pickle=False
                        )
            zf.comment = meta.to_json().encode()


FORMATS: tuple[OutputFormat, ...] = (HDF5Format(), ParquetFormat(), NPZFormat())


def format_for(path: str | Path) -> OutputFormat:
    suffix = Path(path).suffix.lower()
    for fmt in FORMATS:
        if suffix in fmt.suffixes:
            return fmt
    known = ", ".join(s for f in FORMATS for s in f.suffixes)
    raise BulkOutputError(f"{path}: unknown output format {suffix!r}; use one of {known}")


def read_embeddings(path: str | Path) -> dict[str, np.ndarray]:
    """All vectors of a bulk output file keyed by id (loads the whole file: for small files and tests)."""
    return {rec.id: rec.embedding for rec in format_for(path).read(Path(path))}


# --- the crash-safe writer ---------------------------------------------------------------------------


class BulkWriter:
    """Incremental, resumable writer of one output file (see the module docstring for the mechanism)."""

    def __init__(
        self,
        path: str | Path,
        *,
        checkpoint_records: int = 1000,
        checkpoint_bytes: int = 64 * 2**20,
        checkpoint_seconds: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = Path(path)
        self.format = format_for(self.path)
        self.parts_dir = self.path.with_name(self.path.name + ".parts")
        self._tmp = self.path.with_name(self.path.name + ".tmp")
        self.checkpoint_records = checkpoint_records
        self.checkpoint_bytes = checkpoint_bytes
        self.checkpoint_seconds = checkpoint_seconds
        self._clock = clock
        self._buffer: list[Embedded] = []
        self._buffer_bytes = 0
        self._last_checkpoint = clock()
        self._meta: OutputMeta | None = None
        # Left by a run killed while merging (the parts are still there) or while checkpointing.
        self._tmp.unlink(missing_ok=True)
        if self.parts_dir.is_dir():
            for stale in self.parts_dir.glob("tmp-*.npz"):
                stale.unlink()
        self._existing_meta = self._read_existing_meta()

    # -- what is already done
    def _part_files(self) -> list[Path]:
        if not self.parts_dir.is_dir():
            return []
        return sorted(p for p in self.parts_dir.glob("part-*.npz"))

    def _read_existing_meta(self) -> OutputMeta | None:
        meta_file = self.parts_dir / "meta.json"
        metas = []
        try:
            if self.path.exists():
                metas.append(self.format.read_meta(self.path))
        except Exception as err:  # h5py/pyarrow/zipfile each raise their own types for a damaged file
            raise BulkOutputError(
                f"{self.path}: cannot read the existing output ({err}); move it away"
            ) from err
        if meta_file.exists():
            metas.append(OutputMeta.from_json(meta_file.read_text()))
        known = [m for m in metas if m is not None]
        if any(not m.matches(known[0]) for m in known):
            raise BulkOutputError(
                f"{self.path} and {self.parts_dir} were written by different models/outputs"
            )
        return known[0] if known else None

    def done_ids(self) -> set[str]:
        """Ids already in the output file or in checkpoint parts of an interrupted run."""
        ids = self.format.read_ids(self.path) if self.path.exists() else set()
        for part in self._part_files():
            with np.load(part) as data:
                ids.update(str(i) for i in data["ids"])
        return ids

    @property
    def meta(self) -> OutputMeta | None:
        """What produces the vectors: this run's, else the existing output's; None before any vector."""
        return self._meta or self._existing_meta

    def set_meta(self, meta: OutputMeta) -> None:
        """Record what produces the vectors; refuses to mix with an output written by something else."""
        if self._meta == meta:
            return
        for earlier in (self._meta, self._existing_meta):  # this run's first batch, the file on disk
            if earlier is not None and not earlier.matches(meta):
                raise BulkOutputError(
                    f"{self.path} holds {_describe(earlier)}, "
                    f"but this run produces {_describe(meta)}; write to another file"
                )
        self._meta = meta
        self.parts_dir.mkdir(parents=True, exist_ok=True)
        meta_file = self.parts_dir / "meta.json"
        if not meta_file.exists():
            _atomic_write_bytes(meta_file, meta.to_json().encode())

    # -- writing
    def add(self, record: Embedded) -> None:
        if self._meta is None:
            raise RuntimeError("set_meta() must be called before add()")
        self._buffer.append(record)
        self._buffer_bytes += record.embedding.nbytes
        if (
            len(self._buffer) >= self.checkpoint_records
            or self._buffer_bytes >= self.checkpoint_bytes
            or self._clock() - self._last_checkpoint >= self.checkpoint_seconds
        ):
            self.checkpoint()

    def checkpoint(self) -> None:
        """Write the buffered records as one atomic part file."""
        self._last_checkpoint = self._clock()
        if not self._buffer:
            return
        parts = self._part_files()
        number = int(parts[-1].stem.split("-")[1]) + 1 if parts else 1
        target = self.parts_dir / f"part-{number:06d}.npz"
        tmp = self.parts_dir / f"tmp-{number:06d}.npz"  # np.savez insists on .npz; not a part- name
        np.savez(
            tmp,
            ids=np.array([r.id for r in self._buffer], dtype=np.str_),
            headers=np.array([r.header for r in self._buffer], dtype=np.str_),
            lengths=np.array([r.length for r in self._buffer], dtype=np.int64),
            windows=np.array([r.windows for r in self._buffer], dtype=np.int64),
            truncated=np.array([r.truncated for r in self._buffer], dtype=np.bool_),
            shapes=np.array([r.embedding.shape for r in self._buffer], dtype=np.int64),
            data=np.concatenate([r.embedding.reshape(-1) for r in self._buffer]).astype(
                np.float32, copy=False
            ),
        )
        _fsync(tmp)
        os.replace(tmp, target)
        self._buffer, self._buffer_bytes = [], 0

    def _read_parts(self, parts: list[Path]) -> Iterator[list[Embedded]]:
        for part in parts:
            with np.load(part) as data:
                shapes, flat = data["shapes"], data["data"]
                sizes = np.prod(shapes, axis=1)
                offsets = np.concatenate([[0], np.cumsum(sizes)])
                n = len(shapes)
                # Parts checkpointed by a version before the fields: one window, not truncated.
                windows = data["windows"] if "windows" in data.files else np.ones(n, dtype=np.int64)
                truncated = data["truncated"] if "truncated" in data.files else np.zeros(n, dtype=np.bool_)
                yield [
                    Embedded(
                        str(rid),
                        str(header),
                        int(length),
                        flat[offsets[i] : offsets[i + 1]].reshape(tuple(int(s) for s in shapes[i])),
                        int(windows[i]),
                        bool(truncated[i]),
                    )
                    for i, (rid, header, length) in enumerate(
                        zip(data["ids"], data["headers"], data["lengths"], strict=True)
                    )
                ]

    def finish(self) -> None:
        """Checkpoint, merge every part into the output (atomically), and delete the parts."""
        self.checkpoint()
        parts = self._part_files()
        meta = self._meta or self._existing_meta
        if meta is None:
            return  # nothing was ever embedded (e.g. every record was bad)
        if not parts and self.path.exists():
            self._remove_parts()
            return
        self.format.merge(self.path if self.path.exists() else None, self._read_parts(parts), self._tmp, meta)
        _fsync(self._tmp)
        os.replace(self._tmp, self.path)
        self._remove_parts()

    def _remove_parts(self) -> None:
        if self.parts_dir.is_dir():
            shutil.rmtree(self.parts_dir)


def _describe(meta: OutputMeta) -> str:
    level = "per-residue" if meta.per_residue else "per-protein"
    variant = f" ({meta.model_variant})" if meta.model_variant else ""
    return f"{level} '{meta.output}' vectors (dim {meta.dim}) of {meta.model} {meta.model_version}{variant}"


def _fsync(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    _fsync(tmp)
    os.replace(tmp, path)


# --- the pipeline ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BatchEmbeddings:
    meta: OutputMeta
    embeddings: list[np.ndarray]  # in the order of the sequences sent
    windows: list[int] | None = None  # per sequence; None: one window each (an older server)
    truncated: list[bool] | None = None  # per sequence; None: none truncated


class BatchEmbedder(Protocol):
    """Where vectors come from: the in-process Engine or a server (see protembed.commands.embed)."""

    async def embed_batch(self, sequences: Sequence[str], ids: Sequence[str]) -> BatchEmbeddings: ...


class BulkAborted(Exception):
    """--on-error fail met a bad record; what was embedded before it is kept in the output."""

    def __init__(self, problem: RecordProblem) -> None:
        super().__init__(str(problem))
        self.problem = problem


@dataclass
class BulkStats:
    records: int = 0  # records read from the input
    embedded: int = 0  # embedded and written by this run
    already_done: int = 0  # skipped because the output already had them
    skipped: int = 0  # bad records (problems)
    residues: int = 0
    truncated: int = 0  # embedded from their first max_length residues only (long_sequences=truncate)


def _item_index(err: BaseException) -> int | None:
    """Index of the offending item when an error is about one sequence of a batch (local or remote)."""
    if getattr(err, "error_type", None) in {"invalid_sequence", "sequence_too_long"}:
        index = getattr(err, "index", None)
        return index if isinstance(index, int) else None
    return None


async def embed_records(
    records: Iterable[FastaRecord],
    embedder: BatchEmbedder,
    writer: BulkWriter,
    *,
    batch_items: int = 64,
    batch_residues: int = 16384,
    concurrency: int = 2,
    on_error: Literal["skip", "fail"] = "skip",
    on_problem: Callable[[RecordProblem], None] | None = None,
    on_progress: Callable[[int], None] | None = None,
    overloaded_wait_s: float = 30.0,
) -> BulkStats:
    """Embed the records lazily into ``writer``, at most ``concurrency`` batches in flight.

    Bad records (empty or duplicate id, bad residues, or refused by the model — e.g. too long) are
    reported through ``on_problem`` with their record number and skipped. With ``on_error="fail"`` the
    first bad record stops reading; the records read before it are still embedded, then
    :class:`BulkAborted` is raised. The caller calls ``writer.finish()`` in either case.
    """
    stats = BulkStats()
    done = writer.done_ids()
    checker = RecordChecker()
    in_flight: set[asyncio.Task[None]] = set()
    aborted: list[RecordProblem] = []  # the first bad record under on_error="fail"

    def problem(p: RecordProblem) -> None:
        stats.skipped += 1
        if on_error == "fail":
            if not aborted:
                aborted.append(p)
        elif on_problem is not None:
            on_problem(p)
        if on_progress is not None:
            on_progress(1)

    async def run(batch: list[CheckedRecord]) -> None:
        waited = 0.0
        while batch:
            try:
                result = await embedder.embed_batch([c.sequence for c in batch], [c.record.id for c in batch])
            except OverloadedError as err:
                # Only the local engine raises this here (the client already retried): wait as told.
                if waited >= overloaded_wait_s:
                    raise
                await asyncio.sleep(err.retry_after_s)
                waited += err.retry_after_s
                continue
            except ProtembedError as err:
                index = _item_index(err)
                if index is None or not 0 <= index < len(batch):
                    raise
                # One item is refused: report it, and send the others again without it.
                bad = batch.pop(index)
                problem(RecordProblem(bad.record, getattr(err, "message", str(err))))
                continue
            writer.set_meta(result.meta)
            windows = result.windows or [1] * len(batch)
            truncated = result.truncated or [False] * len(batch)
            for checked, emb, win, cut in zip(batch, result.embeddings, windows, truncated, strict=True):
                record = checked.record
                writer.add(Embedded(record.id, record.header, len(checked.sequence), emb, win, cut))
                stats.residues += len(checked.sequence)
                stats.truncated += cut
            stats.embedded += len(batch)
            if on_progress is not None:
                on_progress(len(batch))
            return

    async def wait_for_room(limit: int) -> None:
        while len(in_flight) > limit:
            finished, _ = await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
            for task in finished:
                in_flight.discard(task)
                task.result()  # re-raise a failure at once

    try:
        def to_embed() -> Iterator[CheckedRecord]:
            """The records still to embed, checked, in file order; reading stops at an abort."""
            for record in records:
                if aborted:
                    return
                stats.records += 1
                checked = checker.check(record)
                if isinstance(checked, RecordProblem):
                    problem(checked)
                    continue
                if record.id in done:
                    stats.already_done += 1
                    if on_progress is not None:
                        on_progress(1)
                    continue
                yield checked

        # Plain residue sums: the engine or the server re-batches by its own padded budget.
        budget = Budget(batch_residues, batch_items, padded=False)
        for batch in pack(to_embed(), budget, lambda c: len(c.sequence)):
            await wait_for_room(concurrency - 1)
            in_flight.add(asyncio.create_task(run(batch)))
        await wait_for_room(0)
    finally:
        for task in in_flight:
            task.cancel()
        for task in in_flight:
            with contextlib.suppress(BaseException):
                await task
    if aborted:
        raise BulkAborted(aborted[0])
    return stats
