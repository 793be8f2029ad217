"""`protembed embed` end to end: a FASTA file of corpus sequences in, files keyed by id out, vectors equal
to the server's; bad records reported by number; a killed run resumed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
from protembed_testing import corpus_sequences

from protembed.bulk import read_embeddings
from protembed.client import Client
from protembed.commands.embed import EXIT_FAILED, EXIT_OK, EXIT_SKIPPED, main

SERVICE = Path(__file__).resolve().parents[2] / "service"
LOCAL = ["--providers", "cpu", "--intra-op-threads", "1", "--inter-op-threads", "1", "--no-progress"]


def _write_fasta(path: Path, records: list[tuple[str, str, str]], extra: str = "") -> None:
    with open(path, "w") as handle:
        for _, header, seq in records:
            handle.write(f">{header} from the corpus\n")
            for i in range(0, len(seq), 30):  # wrapped lines, as real FASTA files are
                handle.write(seq[i : i + 30] + "\n")
        handle.write(extra)


@pytest.fixture(scope="module")
def corpus() -> list[tuple[str, str, str]]:
    return corpus_sequences(120, max_length=60, skip=1000)


@pytest.fixture(scope="module")
def server_vectors(server: Any, corpus: list[tuple[str, str, str]]) -> dict[str, np.ndarray]:
    with Client(server.http_url) as client:
        vectors = client.embed([s for _, _, s in corpus])
    return {rid: v for (rid, _, _), v in zip(corpus, vectors, strict=True)}


@pytest.mark.parametrize("suffix", [".h5", ".parquet", ".npz"])
def test_local_run_matches_the_server_and_reports_bad_records(
    tmp_path: Path,
    tiny_model_dir: Path,
    corpus: list[tuple[str, str, str]],
    server_vectors: dict[str, np.ndarray],
    suffix: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    fasta = tmp_path / "in.fasta"
    bad = f">bad1\nMKJ9\n>\nMKV\n>{corpus[0][0]}\nMKV\n>long\n{'M' * 80}\n"
    _write_fasta(fasta, corpus, extra=bad)
    out = tmp_path / f"out{suffix}"
    args = ["--model", str(tiny_model_dir), "--batch-items", "16", "--long-sequences", "reject"]
    code = main([str(fasta), "-o", str(out), *args, *LOCAL])
    err = capsys.readouterr().err
    assert code == EXIT_SKIPPED
    n = len(corpus)
    assert f"skipped record {n + 1} (line" in err and "id 'bad1'): invalid character 'J' at position 3" in err
    assert f"skipped record {n + 2} (line" in err and "empty id" in err
    assert f"skipped record {n + 3}" in err and "duplicate id, first seen at record 1" in err
    assert f"skipped record {n + 4}" in err and "80 residues, more than the maximum of 64" in err
    assert f"{n + 4} records: {n} embedded, 0 already in" in err and "4 skipped" in err
    got = read_embeddings(out)
    assert set(got) == set(server_vectors)
    for rid, vec in server_vectors.items():
        np.testing.assert_allclose(got[rid], vec, atol=1e-5)
    if suffix == ".h5":
        with h5py.File(out, "r") as f:
            assert f[corpus[1][0]].attrs["original_id"] == f"{corpus[1][1]} from the corpus"


def test_server_run_over_grpc_matches_the_server(
    tmp_path: Path, server: Any, corpus: list[tuple[str, str, str]], server_vectors: dict[str, np.ndarray]
) -> None:
    fasta = tmp_path / "in.fasta"
    _write_fasta(fasta, corpus)
    out = tmp_path / "out.npz"
    assert (
        main(
            [str(fasta), "-o", str(out), "--server", server.grpc_url, "--batch-items", "25", "--no-progress"]
        )
        == EXIT_OK
    )
    got = read_embeddings(out)
    assert set(got) == set(server_vectors)
    assert all(np.array_equal(got[k], v) for k, v in server_vectors.items())


def test_per_residue_over_rest_with_a_bad_record(
    tmp_path: Path, server: Any, corpus: list[tuple[str, str, str]], capsys: pytest.CaptureFixture[str]
) -> None:
    fasta = tmp_path / "in.fasta"
    # a record past the tiny model's 64-residue window is chunked by the server's default and stitched
    _write_fasta(fasta, corpus[:10], extra=f">bad\nMKJ9\n>long\n{'A' * 70}\n")
    out = tmp_path / "out.h5"
    code = main([str(fasta), "-o", str(out), "--server", server.http_url, "--per-residue", "--no-progress"])
    assert code == EXIT_SKIPPED
    assert "skipped record 11" in capsys.readouterr().err
    got = read_embeddings(out)
    want = {rid: (len(seq), 8) for rid, _, seq in corpus[:10]} | {"long": (70, 8)}
    assert {k: v.shape for k, v in got.items()} == want


def test_on_error_fail_stops_but_keeps_what_came_before(
    tmp_path: Path,
    tiny_model_dir: Path,
    corpus: list[tuple[str, str, str]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    fasta = tmp_path / "in.fasta"
    _write_fasta(fasta, corpus[:5], extra=">x\nMK1\n" + "".join(f">{r}\n{s}\n" for r, _, s in corpus[5:8]))
    out = tmp_path / "out.parquet"
    code = main([str(fasta), "-o", str(out), "--model", str(tiny_model_dir), "--on-error", "fail", *LOCAL])
    assert code == EXIT_FAILED
    assert "stopped at record 6" in capsys.readouterr().err
    assert set(read_embeddings(out)) == {r for r, _, _ in corpus[:5]}


def test_resume_after_a_killed_run(
    tmp_path: Path,
    tiny_model_dir: Path,
    server_vectors: dict[str, np.ndarray],
    corpus: list[tuple[str, str, str]],
) -> None:
    """Kill a real `protembed embed` process mid-run (SIGKILL: no cleanup at all), rerun the same command,
    and every id is in the output exactly once with the right vector."""
    records = corpus_sequences(400, max_length=60, skip=3000) + corpus
    fasta = tmp_path / "in.fasta"
    _write_fasta(fasta, records)
    out = tmp_path / "out.h5"
    parts = tmp_path / "out.h5.parts"
    # Slow on purpose (batches of 4 that wait 40 ms each) so the kill lands mid-way.
    slow = ["--batch-items", "4", "--concurrency", "1", "--max-wait-ms", "40", "--checkpoint-every", "8"]
    env = {**os.environ, "PYTHONPATH": str(SERVICE)}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "protembed.commands.embed",
            str(fasta),
            "-o",
            str(out),
            "--model",
            str(tiny_model_dir),
            *LOCAL,
            *slow,
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while len(list(parts.glob("part-*.npz"))) < 2:
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            assert time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
        if proc.stderr is not None:
            proc.stderr.close()
    assert not out.exists()  # killed before the merge: only checkpoints
    checkpointed = {str(i) for p in parts.glob("part-*.npz") for i in np.load(p)["ids"]}
    assert 0 < len(checkpointed) < len(records)

    code = main([str(fasta), "-o", str(out), "--model", str(tiny_model_dir), *LOCAL])
    assert code == EXIT_OK
    assert not parts.exists()
    with h5py.File(out, "r") as f:
        ids = [str(f[name].attrs["id"]) for name in f]
    assert len(ids) == len(set(ids)) == len(records)
    assert set(ids) == {r for r, _, _ in records}
    got = read_embeddings(out)
    for rid, vec in server_vectors.items():
        np.testing.assert_allclose(got[rid], vec, atol=1e-5)
