"""Every protein embeds with the default settings: sequences past the model's window are chunked (or,
per request, truncated or refused), over REST, gRPC and ``protembed embed``, on the bundled model."""

from __future__ import annotations

import base64
import csv
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import h5py
import httpx
import numpy as np
import pytest

from protembed.proto import embedder_pb2 as pb
from protembed.proto import embedder_pb2_grpc as pb_grpc
from protembed.settings import default_model_dir
from protembed.testing import free_port

pytestmark = pytest.mark.slow

DEEPLOC_TEST = (
    Path(__file__).resolve().parents[2].parent / "shared" / "data" / "eval" / "deeploc" / "test.tsv"
)
WINDOW = 512


@pytest.fixture(scope="module")
def long_proteins() -> list[tuple[str, str]]:
    """40 DeepLoc test proteins of 600 to 3,000 residues (ids and sequences), longest first."""
    import os

    path = (
        Path(os.environ.get("PROTEMBED_DATA_DIR", DEEPLOC_TEST.parents[2])) / "eval" / "deeploc" / "test.tsv"
    )
    if not path.is_file():
        pytest.skip(f"{path} not found (set PROTEMBED_DATA_DIR to the shared data folder)")
    with path.open() as fh:
        rows = [(r["id"], r["sequence"]) for r in csv.DictReader(fh, delimiter="\t")]
    picked = [r for r in rows if 600 <= len(r[1]) <= 3000]
    picked.sort(key=lambda r: -len(r[1]))
    step = max(1, len(picked) // 40)
    chosen = picked[::step][:40]
    assert len(chosen) == 40 and max(len(s) for _, s in chosen) > 2000
    return chosen


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, subprocess.Popen[bytes]]]:
    """``protembed serve`` on the bundled model with default settings (gRPC on)."""
    from protembed.testing import serve_env, spawn_server, stop_server, wait_ready

    port, grpc_port = free_port(), free_port()
    env = serve_env(
        port,
        {
            "PROTEMBED_GRPC_PORT": str(grpc_port),
            "PROTEMBED_PROVIDERS": "CPUExecutionProvider",
            "PROTEMBED_LOG_LEVEL": "warning",
        },
    )
    log = tmp_path_factory.mktemp("long") / "server.log"
    proc = spawn_server(env, log)
    url = f"http://127.0.0.1:{port}"
    wait_ready(url, proc, log, 90)
    yield url, f"127.0.0.1:{grpc_port}", proc
    stop_server(proc)


def _windows(length: int, overlap: int = 64) -> int:
    from protembed.windows import plan_windows

    return len(plan_windows(length, WINDOW, overlap))


def test_rest_embeds_every_long_protein_by_default(
    server: tuple[str, str, Any], long_proteins: list[tuple[str, str]]
) -> None:
    url, _, _ = server
    body = {"sequences": [{"id": i, "sequence": s} for i, s in long_proteins], "encoding": "base64"}
    r = httpx.post(url + "/embed", json=body, timeout=300)
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    assert [d["id"] for d in data] == [i for i, _ in long_proteins]
    for d, (_, seq) in zip(data, long_proteins, strict=True):
        vec = np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4")
        assert vec.shape == (768,) and np.isfinite(vec).all()
        assert d["windows"] == _windows(len(seq)) > 1 and d["truncated"] is False and d["length"] == len(seq)


def test_grpc_embeds_every_long_protein_by_default(
    server: tuple[str, str, Any], long_proteins: list[tuple[str, str]]
) -> None:
    _, target, _ = server
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.EmbedderStub(channel)
        seqs = [pb.Sequence(id=i, sequence=s) for i, s in long_proteins[:20]]
        reply = stub.Embed(pb.EmbedRequest(sequences=seqs), timeout=300)
    for e, (_, seq) in zip(reply.embeddings, long_proteins[:20], strict=True):
        vec = np.frombuffer(e.vector, dtype="<f4")
        assert np.isfinite(vec).all() and e.windows == _windows(len(seq)) and not e.truncated


def test_per_residue_of_a_chunked_protein_has_one_vector_per_residue(
    server: tuple[str, str, Any], long_proteins: list[tuple[str, str]]
) -> None:
    url, _, _ = server
    seq = long_proteins[0][1]
    r = httpx.post(
        url + "/embed", json={"sequences": [seq], "per_residue": True, "encoding": "base64"}, timeout=120
    )
    d = r.json()["data"][0]
    rows = np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4").reshape(-1, r.json()["dim"])
    assert rows.shape[0] == len(seq) and np.isfinite(rows).all() and d["windows"] > 1


def test_truncate_and_reject_per_request(
    server: tuple[str, str, Any], long_proteins: list[tuple[str, str]]
) -> None:
    url, target, _ = server
    seq = long_proteins[-1][1]
    cut = httpx.post(
        url + "/embed", json={"sequences": [seq], "long_sequences": "truncate"}, timeout=60
    ).json()
    prefix = httpx.post(url + "/embed", json={"sequences": [seq[:WINDOW]]}, timeout=60).json()
    d = cut["data"][0]
    assert d["truncated"] is True and d["windows"] == 1 and d["length"] == WINDOW
    assert np.abs(np.array(d["embedding"]) - np.array(prefix["data"][0]["embedding"])).max() <= 1e-4
    refused = httpx.post(
        url + "/embed",
        json={"sequences": ["MK", {"id": "long", "sequence": seq}], "long_sequences": "reject"},
    )
    assert refused.status_code == 413
    err = refused.json()["error"]
    assert err["type"] == "sequence_too_long" and err["index"] == 1 and err["id"] == "long"
    assert f"{len(seq)} residues" in err["message"] and "long_sequences='chunk'" in err["message"]
    openai = httpx.post(url + "/v1/embeddings", json={"input": [seq], "long_sequences": "truncate"}).json()
    assert openai["data"][0]["truncated"] is True
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.EmbedderStub(channel)
        with pytest.raises(grpc.RpcError) as exc:
            stub.Embed(
                pb.EmbedRequest(
                    sequences=[pb.Sequence(sequence=seq)], options=pb.EmbedOptions(long_sequences="reject")
                ),
                timeout=60,
            )
        assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        bad = httpx.post(url + "/embed", json={"sequences": ["MK"], "long_sequences": "split"})
        assert bad.status_code == 422


def test_a_titin_sized_protein_within_a_memory_bound(server: tuple[str, str, Any]) -> None:
    """40,000 residues (the max_sequence_length default) answered; the server's peak RSS stays bounded."""
    url, _, proc = server
    rng = np.random.default_rng(0)
    seq = "".join(rng.choice(list("ACDEFGHIKLMNPQRSTVWY"), 40_000))
    r = httpx.post(
        url + "/embed", json={"sequences": [seq], "per_residue": True, "encoding": "base64"}, timeout=300
    )
    assert r.status_code == 200, r.text
    d = r.json()["data"][0]
    assert d["windows"] == _windows(40_000) and d["length"] == 40_000
    too_long = httpx.post(url + "/embed", json={"sequences": [seq + "A"]})
    assert too_long.status_code == 413 and "max_sequence_length" in too_long.json()["error"]["message"]
    status = Path(f"/proc/{proc.pid}/status").read_text()
    peak_kb = int(next(line for line in status.splitlines() if line.startswith("VmHWM")).split()[1])
    assert peak_kb < 1.5 * 2**20, f"server peak RSS {peak_kb / 2**20:.2f} GiB"


def test_bulk_cli_skips_none(long_proteins: list[tuple[str, str]], tmp_path: Path) -> None:
    fasta = tmp_path / "long.fasta"
    fasta.write_text("".join(f">{i}\n{s}\n" for i, s in long_proteins[:12]))
    out = tmp_path / "long.h5"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "protembed",
            "embed",
            str(fasta),
            "-o",
            str(out),
            "--no-progress",
            "--providers",
            "CPUExecutionProvider",
            "--model",
            str(default_model_dir()),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    assert "12 embedded" in done.stderr and "0 skipped" in done.stderr
    with h5py.File(out) as h5:
        for i, _ in long_proteins[:12]:
            assert np.isfinite(h5[i][()]).all()

