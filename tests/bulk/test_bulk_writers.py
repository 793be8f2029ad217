"""Bulk output files: layouts, checkpoints, resume and refusal to mix outputs."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from protembed.bulk import BulkOutputError, BulkWriter, Embedded, OutputMeta, format_for, read_embeddings

META = OutputMeta(model="m", model_version="1", output="student", per_residue=False, dim=4)
META_RES = OutputMeta(model="m", model_version="1", output="student", per_residue=True, dim=4)


def _records(n: int, per_residue: bool, start: int = 0) -> list[Embedded]:
    rng = np.random.default_rng(start)
    out = []
    for i in range(start, start + n):
        length = 3 + i % 5
        shape = (length, 4) if per_residue else (4,)
        out.append(
            Embedded(
                f"id/{i}" if i % 4 == 0 else f"id{i}",
                f"id{i} header text",
                length,
                rng.normal(size=shape).astype(np.float32),
            )
        )
    return out


def _write(
    path: Path, records: list[Embedded], meta: OutputMeta = META, *, finish: bool = True, **kwargs: int
) -> BulkWriter:
    """A writer on ``path`` given ``meta`` and ``records``; finished unless ``finish=False``."""
    writer = BulkWriter(path, **kwargs)
    writer.set_meta(meta)
    for rec in records:
        writer.add(rec)
    if finish:
        writer.finish()
    return writer


@pytest.mark.parametrize("suffix", [".h5", ".parquet", ".npz"])
@pytest.mark.parametrize("per_residue", [False, True])
def test_round_trip_in_every_format(tmp_path: Path, suffix: str, per_residue: bool) -> None:
    path = tmp_path / f"out{suffix}"
    meta = META_RES if per_residue else META
    records = _records(10, per_residue)
    writer = _write(path, records, meta, checkpoint_records=3)
    assert not writer.parts_dir.exists()
    got = read_embeddings(path)
    assert set(got) == {r.id for r in records}
    for rec in records:
        assert np.array_equal(got[rec.id], rec.embedding)
    assert format_for(path).read_meta(path) == meta


def test_hdf5_layout_is_bio_embeddings(tmp_path: Path) -> None:
    path = tmp_path / "out.h5"
    _write(path, _records(2, False))
    with h5py.File(path, "r") as f:
        assert sorted(f) == ["id%2F0", "id1"]  # one dataset per id; '/' escaped
        assert f["id1"].attrs["original_id"] == "id1 header text"
        assert f["id%2F0"].attrs["id"] == "id/0"
        assert f["id1"].shape == (4,) and f["id1"].dtype == np.float32
        assert f.attrs["model"] == "m" and f.attrs["dim"] == 4


def test_parquet_columns(tmp_path: Path) -> None:
    path = tmp_path / "out.parquet"
    _write(path, _records(3, False))
    table = pq.read_table(path)
    assert table.column_names == ["id", "header", "length", "embedding", "windows", "truncated"]
    kind = table.schema.field("embedding").type
    assert pa.types.is_fixed_size_list(kind) and kind.list_size == 4 and pa.types.is_float32(kind.value_type)
    assert table.column("windows").to_pylist() == [1, 1, 1]
    assert table.column("truncated").to_pylist() == [False, False, False]


@pytest.mark.parametrize("suffix", [".h5", ".parquet", ".npz"])
def test_a_killed_run_resumes_from_its_checkpoints(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"out{suffix}"
    first = _records(10, False)
    writer = _write(path, first[:9], finish=False, checkpoint_records=4)
    # killed here: no finish(); 8 records are in two checkpoint parts, 1 was only buffered
    assert not path.exists()
    assert len(list(writer.parts_dir.glob("part-*.npz"))) == 2

    again = BulkWriter(path, checkpoint_records=4)
    done = again.done_ids()
    assert done == {r.id for r in first[:8]}
    again.set_meta(META)
    for rec in first:
        if rec.id not in done:
            again.add(rec)
    again.finish()
    got = read_embeddings(path)
    assert set(got) == {r.id for r in first}

    # a later run over a longer file appends to the finished output
    third = BulkWriter(path)
    assert third.done_ids() == {r.id for r in first}
    third.set_meta(META)
    for rec in _records(3, False, start=10):
        third.add(rec)
    third.finish()
    assert len(read_embeddings(path)) == 13


def test_a_run_killed_while_merging_leaves_the_output_intact(tmp_path: Path) -> None:
    path = tmp_path / "out.h5"
    _write(path, _records(3, False))
    before = path.read_bytes()
    _write(path, _records(2, False, start=3), finish=False).checkpoint()
    (tmp_path / "out.h5.tmp").write_bytes(b"half a merge")  # what a kill during the merge leaves
    half_part = tmp_path / "out.h5.parts" / "tmp-000002.npz"
    half_part.write_bytes(b"half a checkpoint")  # ... and a kill during a checkpoint
    assert path.read_bytes() == before
    resumed = BulkWriter(path)  # removes the stale temporary files, keeps the parts
    assert not (tmp_path / "out.h5.tmp").exists() and not half_part.exists()
    assert len(resumed.done_ids()) == 5
    resumed.finish()
    assert len(read_embeddings(path)) == 5


def test_refuses_to_mix_outputs(tmp_path: Path) -> None:
    path = tmp_path / "out.npz"
    _write(path, _records(1, False))
    other = BulkWriter(path)
    with pytest.raises(BulkOutputError, match="per-protein 'student' vectors \\(dim 4\\) of m 1"):
        other.set_meta(OutputMeta("m", "2", "student", False, 4))


def test_unknown_suffix_is_refused(tmp_path: Path) -> None:
    with pytest.raises(BulkOutputError, match=r"unknown output format '\.csv'"):
        BulkWriter(tmp_path / "out.csv")


@pytest.mark.parametrize("suffix", [".h5", ".parquet", ".npz"])
def test_the_model_variant_is_recorded_and_never_mixed(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"out{suffix}"
    int8 = OutputMeta("m", "1", "student", False, 4, "int8")
    _write(path, _records(2, False), int8)
    assert format_for(path).read_meta(path) == int8
    with pytest.raises(BulkOutputError, match=r"of m 1 \(int8\), but this run produces .* of m 1 \(fp32\)"):
        BulkWriter(path).set_meta(OutputMeta("m", "1", "student", False, 4, "fp32"))
    # within one run too: a second batch from another variant (a mixed fleet behind one address)
    writer = BulkWriter(tmp_path / f"new{suffix}")
    writer.set_meta(int8)
    with pytest.raises(BulkOutputError, match="fp32"):
        writer.set_meta(OutputMeta("m", "1", "student", False, 4, "fp32"))
    # files written before the field have no variant: they resume with any
    legacy = tmp_path / f"legacy{suffix}"
    _write(legacy, _records(1, False), META)
    _write(legacy, _records(1, False, start=1), int8)
    assert len(read_embeddings(legacy)) == 2
