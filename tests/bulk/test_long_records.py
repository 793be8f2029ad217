"""Sequences longer than the model's window in bulk runs: --long-sequences reaches the engine or the
server, and each record's windows and truncation are kept in HDF5 and Parquet outputs, through
checkpoints, resumes and merges."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from protembed.bulk import BulkWriter, Embedded, OutputMeta, format_for
from protembed.commands.embed import EXIT_OK, EXIT_SKIPPED, main
from protembed.merge import merge_shards

LOCAL = ["--providers", "cpu", "--intra-op-threads", "1", "--chunk-overlap", "16", "--no-progress"]
META = OutputMeta("m", "1", "student", per_residue=False, dim=4, model_variant="fp32")
SHORT, LONG = "MKTAYIAKQR", "MKTAYIAKQRQISFVKSHFSRQ" * 7  # 10 and 154 residues; the tiny window is 64


def _records() -> list[Embedded]:
    rng = np.random.default_rng(3)
    vector = lambda: rng.normal(size=4).astype(np.float32)  # noqa: E731
    return [
        Embedded("short", "short h", 10, vector()),
        Embedded("chunked", "chunked h", 154, vector(), windows=3),
        Embedded("cut", "cut h", 154, vector(), truncated=True),
    ]


def _fields(path: Path) -> dict[str, tuple[int, int, bool]]:
    return {r.id: (r.length, r.windows, r.truncated) for r in format_for(path).read(path)}


WANT = {"short": (10, 1, False), "chunked": (154, 3, False), "cut": (154, 1, True)}


@pytest.mark.parametrize("suffix", [".h5", ".parquet"])
def test_windows_and_truncation_survive_checkpoints_resume_and_merge(tmp_path: Path, suffix: str) -> None:
    out = tmp_path / f"out{suffix}"
    first, *rest = _records()
    writer = BulkWriter(out, checkpoint_records=1)
    writer.set_meta(META)
    writer.add(first)
    writer.finish()
    writer = BulkWriter(out, checkpoint_records=1)  # a resumed run appends to the finished file
    writer.set_meta(META)
    for rec in rest:
        writer.add(rec)  # each one a checkpoint part on its own
    writer.finish()
    assert _fields(out) == WANT
    merged = tmp_path / "merged.parquet"
    merge_shards(merged, [out])
    assert _fields(merged) == WANT


def test_files_and_parts_from_before_the_fields_read_as_one_window(tmp_path: Path) -> None:
    # A Parquet file without the two columns, as written before them, resumed by today's writer.
    old = tmp_path / "old.parquet"
    vector = pa.list_(pa.float32(), 4)
    schema = pa.schema(
        [("id", pa.string()), ("header", pa.string()), ("length", pa.int32()), ("embedding", vector)],
        metadata={"protembed": META.to_json()},
    )
    flat = pa.array(np.arange(4, dtype=np.float32))
    columns = [pa.array(["a"]), pa.array(["a h"]), pa.array([7], pa.int32())]
    table = pa.Table.from_arrays([*columns, pa.FixedSizeListArray.from_arrays(flat, 4)], schema=schema)
    pq.write_table(table, old)
    writer = BulkWriter(old)
    writer.set_meta(META)
    writer.add(_records()[1])
    writer.finish()
    assert _fields(old) == {"a": (7, 1, False), "chunked": (154, 3, False)}
    # A checkpoint part without the two arrays, as an interrupted older run left it.
    out = tmp_path / "out.h5"
    parts = tmp_path / "out.h5.parts"
    parts.mkdir()
    (parts / "meta.json").write_text(META.to_json())
    np.savez(
        parts / "part-000001.npz",
        ids=np.array(["p"]),
        headers=np.array(["p h"]),
        lengths=np.array([5]),
        shapes=np.array([[4]]),
        data=np.ones(4, dtype=np.float32),
    )
    BulkWriter(out).finish()
    assert _fields(out) == {"p": (5, 1, False)}


def _fasta(tmp_path: Path) -> Path:
    path = tmp_path / "in.fasta"
    path.write_text(f">short\n{SHORT}\n>long\n{LONG}\n")
    return path


@pytest.mark.parametrize(("mode", "truncated"), [("chunk", False), ("truncate", True)])
def test_local_runs_follow_long_sequences(
    tmp_path: Path, tiny_model_dir: Path, mode: str, truncated: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out.h5"
    args = [str(_fasta(tmp_path)), "-o", str(out), "--model", str(tiny_model_dir), "--long-sequences", mode]
    assert main([*args, *LOCAL]) == EXIT_OK
    fields = _fields(out)
    assert fields["short"] == (10, 1, False)
    assert fields["long"][0] == len(LONG) and fields["long"][2] is truncated
    assert (fields["long"][1] > 1) is (mode == "chunk")
    with h5py.File(out, "r") as f:
        assert int(f["long"].attrs["windows"]) == fields["long"][1]
    assert ("1 truncated to the model's window" in capsys.readouterr().err) is truncated


def test_local_reject_skips_the_long_record(
    tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out.parquet"
    args = [str(_fasta(tmp_path)), "-o", str(out), "--model", str(tiny_model_dir)]
    assert main([*args, "--long-sequences", "reject", *LOCAL]) == EXIT_SKIPPED
    assert "skipped record 2 (line 3, id 'long')" in capsys.readouterr().err
    assert set(_fields(out)) == {"short"}


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_through_a_server_the_mode_is_sent_with_each_request(
    tmp_path: Path, server: Any, transport: str
) -> None:
    url = server.http_url if transport == "http" else server.grpc_url
    fasta = _fasta(tmp_path)
    for mode in ("truncate", "chunk"):
        out = tmp_path / f"{mode}.parquet"
        code = main([str(fasta), "-o", str(out), "--server", url, "--long-sequences", mode, "--no-progress"])
        assert code == EXIT_OK
        long = _fields(out)["long"]
        assert long[2] is (mode == "truncate") and (long[1] > 1) is (mode == "chunk")
