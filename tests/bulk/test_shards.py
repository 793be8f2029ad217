"""Shard assignment (stable, even, growth-friendly), `split_fasta`, and `merge_shards`' checks on real
output files."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import h5py
import numpy as np
import pytest

from protembed.bulk import BulkOutputError, BulkWriter, Embedded, OutputMeta, read_embeddings
from protembed.fasta import FastaFormatError, read_fasta
from protembed.merge import MergeError, merge_shards
from protembed.shards import Shard, jump_hash, shard_of, split_fasta

META = OutputMeta("m", "1", "student", per_residue=False, dim=4, model_variant="fp32")
IDS = [f"UniRef50_{i:07d}" for i in range(20000)]


def test_jump_hash_matches_the_reference_vectors() -> None:
    # The vectors the reference implementations (the paper's C++, dgryski/go-jump) test against.
    cases = [(1, 1, 0), (42, 57, 43), (0xDEAD10CC, 1, 0), (0xDEAD10CC, 666, 361), (256, 1024, 520)]
    cases += [(1, 128, 55), (129, 128, 120), (128, 100_000_000, 38172097), (2**64 - 1, 128, 92)]
    assert [jump_hash(key, buckets) for key, buckets, _ in cases] == [want for _, _, want in cases]


def test_shards_are_even_and_growing_n_moves_only_what_the_new_shard_takes() -> None:
    counts = Counter(shard_of(i, 8) for i in IDS)
    assert set(counts) == set(range(8))
    assert max(counts.values()) / min(counts.values()) < 1.1
    for rid in IDS:
        # N -> N+1: a record stays where it was, or moves to the new shard; never between old shards.
        assert shard_of(rid, 9) in (shard_of(rid, 8), 8)
    moved = sum(shard_of(rid, 9) == 8 for rid in IDS) / len(IDS)
    assert moved == pytest.approx(1 / 9, abs=0.01)


def test_the_assignment_depends_on_the_id_alone() -> None:
    # Pinned values: a change of hash (e.g. to Python's per-process string hash) would reshuffle every
    # shard already embedded, so it must fail here first.
    assert [shard_of(rid, 16) for rid in ("P12345", "sp|Q9Y6K9|NEMO_HUMAN", "")] == [12, 12, 5]
    assert all(Shard(k, 4).holds(rid) == (shard_of(rid, 4) == k) for rid in IDS[:500] for k in range(4))
    assert sum(Shard(k, 4).holds(rid) for rid in IDS[:500] for k in range(4)) == 500


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("3/3", "outside 0..2"),
        ("-1/3", "written I/N"),
        ("1/0", "at least 1"),
        ("1", "written I/N"),
        ("a/b", "written I/N"),
    ],
)
def test_bad_shard_specs_say_what_is_wrong(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Shard.parse(spec)


def test_shard_specs_parse() -> None:
    assert Shard.parse("0/8") == Shard(0, 8) and Shard.parse(" 7 / 8 ") == Shard(7, 8)
    assert str(Shard(3, 8)) == "3/8"


# --- merge ------------------------------------------------------------------------------------------


def _records(ids: list[str], per_residue: bool = False) -> list[Embedded]:
    rng = np.random.default_rng(len(ids))
    return [
        Embedded(rid, f"{rid} header", 5, rng.normal(size=(5, 4) if per_residue else (4,)).astype(np.float32))
        for rid in ids
    ]


def _shard_file(path: Path, records: list[Embedded], meta: OutputMeta = META) -> Path:
    writer = BulkWriter(path)
    writer.set_meta(meta)
    for rec in records:
        writer.add(rec)
    writer.finish()
    return path


def _split(tmp_path: Path, suffixes: list[str]) -> tuple[list[Path], dict[str, np.ndarray]]:
    records = _records(IDS[:300])
    n = len(suffixes)
    files = [
        _shard_file(tmp_path / f"shard-{k}{suffix}", [r for r in records if shard_of(r.id, n) == k])
        for k, suffix in enumerate(suffixes)
    ]
    return files, {r.id: r.embedding for r in records}


@pytest.mark.parametrize("out_suffix", [".h5", ".parquet", ".npz"])
def test_merge_joins_shards_of_any_format(tmp_path: Path, out_suffix: str) -> None:
    files, want = _split(tmp_path, [".h5", ".parquet", ".npz"])
    out = tmp_path / f"all{out_suffix}"
    stats = merge_shards(out, files)
    assert (stats.shards, stats.records, stats.meta) == (3, 300, META)
    got = read_embeddings(out)
    assert set(got) == set(want)
    assert all(np.array_equal(got[k], v) for k, v in want.items())
    assert not out.with_name(out.name + ".tmp").exists()


def test_merge_refuses_an_id_in_two_shards_naming_it_and_both_files(tmp_path: Path) -> None:
    a = _shard_file(tmp_path / "a.h5", _records(IDS[:50]))
    b = _shard_file(tmp_path / "b.parquet", _records(IDS[49:100]))
    out = tmp_path / "all.h5"
    with pytest.raises(MergeError, match=rf"id '{IDS[49]}' is in both .*a\.h5 and .*b\.parquet"):
        merge_shards(out, [a, b])
    assert not out.exists()


def test_merge_refuses_mixed_models_variants_and_outputs(tmp_path: Path) -> None:
    a = _shard_file(tmp_path / "a.h5", _records(IDS[:10]))
    others = {
        "variant": OutputMeta("m", "1", "student", False, 4, "int8"),
        "output": OutputMeta("m", "1", "alpha", False, 4, "fp32"),
        "model": OutputMeta("other", "1", "student", False, 4, "fp32"),
    }
    for name, meta in others.items():
        b = _shard_file(tmp_path / f"b-{name}.npz", _records(IDS[10:20]), meta)
        with pytest.raises(MergeError, match=rf"b-{name}\.npz holds .* but .*a\.h5 holds"):
            merge_shards(tmp_path / "all.h5", [a, b])
    per_residue = OutputMeta("m", "1", "student", True, 4, "fp32")
    level = _shard_file(tmp_path / "b-level.h5", _records(IDS[10:20], per_residue=True), per_residue)
    with pytest.raises(MergeError, match=r"per-residue 'student' vectors .* per-protein"):
        merge_shards(tmp_path / "all.h5", [a, level])
    # A file from before the variant was recorded may join any variant; the merged file names it.
    old = _shard_file(tmp_path / "b-old.h5", _records(IDS[10:20]), OutputMeta("m", "1", "student", False, 4))
    assert merge_shards(tmp_path / "all.h5", [old, a]).meta == META


def test_merge_refuses_unfinished_missing_repeated_and_foreign_files(tmp_path: Path) -> None:
    a = _shard_file(tmp_path / "a.h5", _records(IDS[:10]))
    unfinished = BulkWriter(tmp_path / "b.h5")
    unfinished.set_meta(META)
    for rec in _records(IDS[10:20]):
        unfinished.add(rec)
    unfinished.checkpoint()  # killed here: checkpoints only
    out = tmp_path / "all.parquet"
    with pytest.raises(MergeError, match=r"b\.h5: no such file"):
        merge_shards(out, [a, tmp_path / "b.h5"])
    _shard_file(tmp_path / "c.h5", _records(IDS[20:30]))
    (tmp_path / "c.h5.parts").mkdir()
    with pytest.raises(MergeError, match=r"c\.h5: its run did not finish .*rerun its protembed embed"):
        merge_shards(out, [a, tmp_path / "c.h5"])
    with pytest.raises(MergeError, match=r"a\.h5: given twice"):
        merge_shards(out, [a, tmp_path / "." / "a.h5"])
    with pytest.raises(MergeError, match="cannot also be the output"):
        merge_shards(a, [a])
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f["x"] = np.zeros(4, dtype=np.float32)
    with pytest.raises(MergeError, match=r"foreign\.h5: not written by protembed embed"):
        merge_shards(out, [a, foreign])
    with pytest.raises(BulkOutputError, match=r"all\.csv: unknown output format '\.csv'"):
        merge_shards(tmp_path / "all.csv", [a])
    assert not out.exists()


def test_merge_replaces_an_existing_output_and_keeps_empty_shards(tmp_path: Path) -> None:
    a = _shard_file(tmp_path / "a.h5", _records(IDS[:10]))
    empty = tmp_path / "empty.parquet"
    writer = BulkWriter(empty)
    writer.set_meta(META)
    writer.finish()  # a shard that held no records still leaves a file with its model fields
    assert empty.exists()
    out = tmp_path / "all.h5"
    merge_shards(out, [_shard_file(tmp_path / "z.h5", _records(IDS[100:105]))])
    assert merge_shards(out, [a, empty]).records == 10
    assert set(read_embeddings(out)) == set(IDS[:10])


def test_split_writes_each_shards_records_or_nothing(tmp_path: Path) -> None:
    fasta = tmp_path / "in.fasta"
    ids = IDS[:200]
    fasta.write_text("".join(f">{rid} desc\nMKV\nLLA\n" for rid in ids) + ">\nMK\n")
    parts = split_fasta(fasta, 4, tmp_path / "parts")
    for k, part in enumerate(parts):
        records = list(read_fasta(part))
        assert [r.id for r in records] == [rid for rid in [*ids, ""] if shard_of(rid, 4) == k]
        named = [r for r in records if r.id]
        assert all(r.sequence == "MKVLLA" and r.header == f"{r.id} desc" for r in named)
    broken = tmp_path / "broken.fasta"
    broken.write_text("MK\n>a\nMK\n")  # sequence before the first header: not FASTA
    with pytest.raises(FastaFormatError):
        split_fasta(broken, 3, tmp_path / "broken-parts")
    assert list((tmp_path / "broken-parts").iterdir()) == []  # no part, complete-looking or temporary
