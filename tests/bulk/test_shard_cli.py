"""`protembed embed --shard I/N` and `protembed merge` end to end on the tiny model: the shards split the
file with no overlap and no gap, each bad record is reported by exactly one shard with its number in the
whole file, and the merged file equals an unsharded run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from protembed_testing import corpus_sequences

from protembed.bulk import format_for, read_embeddings
from protembed.cli import main as cli_main
from protembed.commands.embed import EXIT_FAILED, EXIT_OK, EXIT_SKIPPED, main
from protembed.shards import shard_of

# The tiny model's window is 64 residues: the chunk overlap must stay below half of it.
LOCAL = ["--providers", "cpu", "--intra-op-threads", "1", "--inter-op-threads", "1", "--chunk-overlap", "16"]
LOCAL += ["--no-progress"]
N = 3


@pytest.fixture(scope="module")
def fasta(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    records = corpus_sequences(60, max_length=60, skip=2000)
    path = tmp_path_factory.mktemp("in") / "in.fasta"
    body = "".join(f">{rid} corpus\n{seq}\n" for rid, _, seq in records)
    # Bad records: bad residues, and a duplicate of the first id.
    body += f">bad1\nMKJ9\n>{records[0][0]}\nMKV\n"
    path.write_text(body)
    return path, [rid for rid, _, _ in records]


def test_shards_partition_the_file_and_merge_into_the_unsharded_result(
    tmp_path: Path, tiny_model_dir: Path, fasta: tuple[Path, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    path, ids = fasta
    model = ["--model", str(tiny_model_dir), *LOCAL]
    whole = tmp_path / "whole.h5"
    assert main([str(path), "-o", str(whole), *model]) == EXIT_SKIPPED
    capsys.readouterr()
    want = read_embeddings(whole)
    assert set(want) == set(ids)

    shards, reports = [], []
    for k in range(N):
        out = tmp_path / f"shard-{k}.parquet"
        code = main([str(path), "-o", str(out), "--shard", f"{k}/{N}", "--batch-items", "8", *model])
        err = capsys.readouterr().err
        reports.append(err)
        assert code in (EXIT_OK, EXIT_SKIPPED)
        assert f"protembed embed: shard {k}/{N}: " in err
        got = set(read_embeddings(out))
        assert got == {rid for rid in ids if shard_of(rid, N) == k}
        shards.append(out)
    everything = "".join(reports)
    n = len(ids)
    expected = [(n + 1, "invalid character 'J'"), (n + 2, "duplicate id, first seen at record 1")]
    for number, problem in expected:
        lines = [line for line in everything.splitlines() if f"skipped record {number} " in line]
        assert len(lines) == 1 and problem in lines[0], lines

    merged = tmp_path / "merged.h5"
    assert cli_main(["merge", str(merged), *map(str, shards)]) == EXIT_OK
    assert f"{n} records from {N} shards" in capsys.readouterr().err
    got = read_embeddings(merged)
    assert set(got) == set(want)
    for rid, vec in want.items():
        np.testing.assert_allclose(got[rid], vec, atol=1e-6)
    assert format_for(merged).read_meta(merged) == format_for(whole).read_meta(whole)

    # Rerunning a finished shard embeds nothing; merging it with an overlapping file is refused.
    assert main([str(path), "-o", str(shards[0]), "--shard", f"0/{N}", *model]) in (EXIT_OK, EXIT_SKIPPED)
    assert " 0 embedded" in capsys.readouterr().err
    assert cli_main(["merge", str(tmp_path / "bad.h5"), str(whole), str(shards[1])]) == EXIT_FAILED
    err = capsys.readouterr().err
    assert "protembed merge: id " in err and "whole.h5 and" in err and "shard-1.parquet" in err


def test_a_shard_with_no_records_still_leaves_an_output(
    tmp_path: Path, tiny_model_dir: Path, server: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "one.fasta"
    path.write_text(">only\nMKTAYIAKQR\n")
    empty_shard = 1 - shard_of("only", 2)
    local = tmp_path / "local.h5"
    code = main(
        [str(path), "-o", str(local), "--shard", f"{empty_shard}/2", "--model", str(tiny_model_dir), *LOCAL]
    )
    assert code == EXIT_OK and "0 records: 0 embedded" in capsys.readouterr().err
    remote = tmp_path / "remote.parquet"
    code = main([str(path), "-o", str(remote), "--shard", f"{empty_shard}/2", "--server", server.grpc_url])
    assert code == EXIT_OK
    for out in (local, remote):
        assert read_embeddings(out) == {}
    # The empty files name their vectors like a real run does, so they merge with it.
    full = tmp_path / "full.npz"
    code = main([str(path), "-o", str(full), "--shard", f"{1 - empty_shard}/2", "--server", server.http_url])
    assert code == EXIT_OK
    assert format_for(local).read_meta(local) == format_for(full).read_meta(full)
    merged = tmp_path / "merged.h5"
    assert cli_main(["merge", str(merged), str(local), str(remote), str(full)]) == EXIT_OK
    assert set(read_embeddings(merged)) == {"only"}


@pytest.mark.parametrize("spec", ["2/2", "x", "1/0"])
def test_bad_shard_arguments_are_usage_errors(
    tmp_path: Path, spec: str, fasta: tuple[Path, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([str(fasta[0]), "-o", str(tmp_path / "o.h5"), "--shard", spec])
    assert exit_info.value.code == 2
    assert "--shard" in capsys.readouterr().err


def test_split_parts_embed_to_the_same_shards(
    tmp_path: Path, tiny_model_dir: Path, fasta: tuple[Path, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    path = fasta[0]
    parts_dir = tmp_path / "parts"
    assert cli_main(["split", str(path), "--shards", str(N), "-o", str(parts_dir)]) == EXIT_OK
    parts = sorted(parts_dir.iterdir())
    assert [p.name for p in parts] == [f"shard-{k}-of-{N}.fasta" for k in range(N)]
    model = ["--model", str(tiny_model_dir), *LOCAL]
    for k, part in enumerate(parts):
        from_part, from_whole = tmp_path / f"part-{k}.h5", tmp_path / f"whole-{k}.h5"
        capsys.readouterr()
        shard = ["--shard", f"{k}/{N}", *model]
        assert main([str(part), "-o", str(from_part), *shard]) in (EXIT_OK, EXIT_SKIPPED)
        part_report = capsys.readouterr().err
        assert main([str(path), "-o", str(from_whole), *shard]) in (EXIT_OK, EXIT_SKIPPED)
        whole_report = capsys.readouterr().err
        # The part holds exactly the shard's records, bad ones included (reported by the same shard).
        assert f"shard {k}/{N}: " in part_report
        assert part_report.count("skipped record") == whole_report.count("skipped record")
        want, got = read_embeddings(from_whole), read_embeddings(from_part)
        assert set(got) == set(want)
        for rid, vec in want.items():
            np.testing.assert_array_equal(got[rid], vec)
    assert cli_main(["split", str(tmp_path / "missing.fasta"), "--shards", "2", "-o", str(parts_dir)]) == 1
    assert "missing.fasta: no such file" in capsys.readouterr().err
