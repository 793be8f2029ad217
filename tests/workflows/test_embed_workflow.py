"""workflows/embed run by real Snakemake (`snakemake --cores 2`) on corpus sequences and the tiny model:
shard jobs with the in-process model or against a running server over gRPC, then the merge; the result
equals the server's vectors, a bad record is named in its shard's log, and `snakemake --lint` is clean."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from protembed_testing import corpus_sequences

from protembed.bulk import format_for, read_embeddings
from protembed.client import Client

REPO = Path(__file__).resolve().parents[2]
SNAKEFILE = REPO / "workflows" / "embed" / "Snakefile"
SHARDS = 3

pytestmark = pytest.mark.skipif(
    shutil.which("snakemake", path=str(Path(sys.executable).parent)) is None,
    reason="snakemake is a dev dependency (pip install snakemake)",
)


def _snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [str(Path(sys.executable).parent / "snakemake"), "-s", str(SNAKEFILE), "-d", str(workdir)]
    return subprocess.run([*command, *args], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def fasta(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[tuple[str, str, str]]]:
    records = corpus_sequences(36, max_length=60, skip=5000)
    # One record longer than the tiny model's 64-residue window: chunked unless told otherwise.
    long = "".join(seq for _, _, seq in records[:3])
    assert len(long) > 64
    records.append(("joined", "joined three records", long))
    path = tmp_path_factory.mktemp("data") / "proteins.fasta"
    path.write_text("".join(f">{header}\n{seq}\n" for _, header, seq in records) + ">broken\nMKB1\n")
    return path, records


@pytest.fixture(scope="module")
def server_vectors(server: Any, fasta: tuple[Path, list[tuple[str, str, str]]]) -> dict[str, np.ndarray]:
    records = fasta[1]
    with Client(server.http_url) as client:
        vectors = client.embed([seq for _, _, seq in records])
    return {rid: v for (rid, _, _), v in zip(records, vectors, strict=True)}


def _config(fasta: Path, out: Path, **extra: object) -> list[str]:
    values = {
        "fasta": fasta,
        "out": out,
        "shards": SHARDS,
        "protembed": f"{sys.executable} -m protembed",
        **extra,
    }
    return ["--config", *(f"{k}={v}" for k, v in values.items())]


def _check(out: Path, want: dict[str, np.ndarray]) -> None:
    got = read_embeddings(out)
    assert set(got) == set(want)
    for rid, vec in want.items():
        np.testing.assert_allclose(got[rid], vec, atol=1e-5)


def test_in_process_model(
    tmp_path: Path,
    tiny_model_dir: Path,
    fasta: tuple[Path, list[tuple[str, str, str]]],
    server_vectors: dict[str, np.ndarray],
) -> None:
    out = tmp_path / "results" / "proteins.h5"
    config = _config(fasta[0], out, model=tiny_model_dir, providers="cpu", threads=1)
    run = _snakemake(tmp_path, "--cores", "2", *config)
    assert run.returncode == 0, run.stderr[-4000:]
    _check(out, server_vectors)
    logs = {p.name: p.read_text() for p in (tmp_path / "embed-work" / "logs").glob("embed-*.log")}
    assert sorted(logs) == [f"embed-{i}-of-{SHARDS}.log" for i in range(SHARDS)]
    bad = [text for text in logs.values() if "id 'broken'): invalid character '1'" in text]
    assert len(bad) == 1, logs  # reported once, by the shard that owns the id
    shards = sorted((tmp_path / "embed-work" / "shards").iterdir())
    assert len(shards) == SHARDS and sum(len(read_embeddings(s)) for s in shards) == len(server_vectors)
    # Everything is up to date: a second run does nothing.
    again = _snakemake(tmp_path, "--cores", "2", *config)
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr


def test_against_a_running_server_over_grpc(
    tmp_path: Path,
    server: Any,
    fasta: tuple[Path, list[tuple[str, str, str]]],
    server_vectors: dict[str, np.ndarray],
) -> None:
    out = tmp_path / "proteins.parquet"
    config = _config(
        fasta[0],
        out,
        server=server.grpc_url,
        shard_suffix=".parquet",
        keep_shards=False,
        long_sequences="truncate",
        split=True,  # one job writes the parts; each shard job reads its own
    )
    run = _snakemake(tmp_path, "--cores", "2", *config)
    assert run.returncode == 0, run.stderr[-4000:]
    long = fasta[1][-1][2]
    with Client(server.grpc_url) as client:
        cut = client.embed([long], long_sequences="truncate")[0]
    _check(out, {**server_vectors, "joined": cut})
    truncated = {r.id for r in format_for(out).read(out) if r.truncated}
    assert truncated == {"joined"}
    assert not list((tmp_path / "embed-work" / "shards").glob("*.parquet")), "temporary shards were kept"
    assert "3 parts in" in (tmp_path / "embed-work" / "logs" / "split.log").read_text()
    assert not list((tmp_path / "embed-work" / "split").glob("*.fasta")), "temporary parts were kept"


def test_lint_is_clean(tmp_path: Path) -> None:
    run = _snakemake(tmp_path, "--lint")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "Congratulations" in run.stdout + run.stderr


def test_cluster_profiles_name_real_rules_and_resources() -> None:
    """The SLURM and Kubernetes profiles are configuration only; their executor plugins are not installed
    here, so check what can go stale without them: they parse, and name rules the Snakefile has."""
    rules = set(re.findall(r"^rule (\w+):", SNAKEFILE.read_text(), re.MULTILINE))
    assert rules == {"all", "split", "embed_shard", "merge"}
    for name, executor in (("slurm", "slurm"), ("kubernetes", "kubernetes")):
        profile = yaml.safe_load((SNAKEFILE.parent / "profiles" / name / "config.yaml").read_text())
        assert profile["executor"] == executor
        assert set(profile.get("set-resources", {})) <= rules
        assert set(profile.get("set-threads", {})) <= rules
