"""`protembed bench peers`: each server's wire format, the peers' shared model wrapper, and short real runs.

The peer frameworks live in their own virtualenvs (``~/.cache/protembed/peers``, built by the benchmark
on first use); the run against a real peer is skipped, saying so, where that venv has not been built.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest

from protembed import tokenizer
from protembed_bench.peers import envs
from protembed_bench.peers import report as peers_report
from protembed_bench.peers.catalog import PEERS, PROTEMBED, SERVERS, setting_env
from protembed_bench.peers.peer_model import PeerModel, from_b64, to_b64
from protembed_bench.peers.run import (
    Checker,
    PeersConfig,
    WrongAnswer,
    headline,
    peer_batching,
    run_peers_bench,
)
from protembed_bench.serve.clients import read_chunked

SEQ = "MKTAYIAKQRQISFVKSHFSRQ"


def _wire_answer(name: str, vector: np.ndarray) -> bytes:
    """The body each server sends for one sequence, in the shape its wrapper (or protembed) writes."""
    if name == PROTEMBED:
        return json.dumps({"data": [{"index": 0, "embedding": to_b64(vector), "cached": False}]}).encode()
    if name == "bentoml":  # a batchable API answers one list item per item sent
        return json.dumps([to_b64(vector)]).encode()
    if name == "pytriton":  # KServe v2 JSON
        out = {"name": "embedding", "datatype": "FP32", "shape": [1, len(vector)], "data": vector.tolist()}
        return json.dumps({"model_name": "embedder", "outputs": [out]}).encode()
    return json.dumps({"embedding": to_b64(vector)}).encode()


@pytest.mark.parametrize("name", list(SERVERS))
def test_each_servers_answer_decodes_to_the_vector_it_carries(name: str) -> None:
    vector = np.random.default_rng(0).normal(size=7).astype(np.float32)
    assert np.array_equal(SERVERS[name].vector(_wire_answer(name, vector)), vector)
    payload = json.dumps(SERVERS[name].payload(SEQ))  # JSON-serialisable, carrying the sequence once
    assert payload.count(SEQ) == 1


def test_settings_reach_the_wrappers_as_json_and_protembed_as_its_own_variables() -> None:
    peer = setting_env(SERVERS["litserve"], {"max_batch_size": 64, "batch_timeout": 0.01})
    assert {k: json.loads(v) for k, v in peer.items()} == {
        "PROTEMBED_PEER_MAX_BATCH_SIZE": 64,
        "PROTEMBED_PEER_BATCH_TIMEOUT": 0.01,
    }
    assert setting_env(SERVERS[PROTEMBED], {"max_batch_tokens": 4096}) == {
        "PROTEMBED_MAX_BATCH_TOKENS": "4096"
    }
    for name in PEERS:  # two documented batching settings each, and pinned requirements
        assert len(SERVERS[name].settings) == 2
        assert all("==" in line for line in envs.requirements_text(SERVERS[name]).splitlines())


def test_peer_model_feeds_the_model_what_protembeds_tokenizer_does(tiny_model_dir: Path) -> None:
    model = PeerModel(tiny_model_dir, "fp32", 1)
    raw = ["mktayiakqrq", "ACDEFGHIKLMNPQRSTVWY", "MSUZOBX"]
    ids, mask = model.encode(raw)
    expected = tokenizer.batch_encode([tokenizer.normalize(s) for s in raw])
    assert np.array_equal(ids, expected.input_ids)
    assert np.array_equal(mask, expected.attention_mask)
    # The tiny model is batch-independent: a padded batch answers as each sequence alone.
    together = model.embed(raw)
    for row, seq in enumerate(raw):
        np.testing.assert_allclose(together[row], model.embed([seq])[0], atol=1e-6)
    assert np.array_equal(from_b64(to_b64(together[0])), together[0])


def test_peer_model_counts_real_and_padded_tokens_per_batch(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stats = tmp_path / "stats"
    monkeypatch.setenv("PROTEMBED_PEER_STATS", str(stats))
    model = PeerModel(tiny_model_dir, "fp32", 1)
    model.embed(["MKT"])
    offset = stats.stat().st_size
    model.embed(["MKTAYIAKQR", "MK"])  # 12 real tokens padded to 2 x 10
    got = peer_batching(stats, offset)
    assert got["batches"] == 1 and got["mean_batch_size"] == 2
    assert got["padding_share_of_tokens"] == pytest.approx(1 - 12 / 20)


def test_checker_refuses_another_sequences_vector() -> None:
    rng = np.random.default_rng(1)
    refs = {"AAA": rng.normal(size=16).astype(np.float32), "CCC": rng.normal(size=16).astype(np.float32)}
    checker = Checker(refs, 1e-4, 0.99999)
    checker.check("AAA", refs["AAA"].copy())
    with pytest.raises(WrongAnswer, match="length 3"):
        checker.check("AAA", refs["CCC"])
    with pytest.raises(WrongAnswer, match="shape"):
        checker.check("AAA", refs["AAA"][:8])
    assert checker.summary()["checked"] == 2


def test_chunked_bodies_are_reassembled() -> None:
    async def read(raw: bytes) -> bytes:
        reader = asyncio.StreamReader()
        reader.feed_data(raw)
        reader.feed_eof()
        return await read_chunked(reader)

    body = b'{"embedding": "AAAA"}'
    wire = b"5\r\n" + body[:5] + b"\r\n" + hex(len(body) - 5)[2:].encode() + b";ext=1\r\n" + body[5:]
    assert asyncio.run(read(wire + b"\r\n0\r\nx-trailer: 1\r\n\r\n")) == body


def _server(top_rates: list[float]) -> dict:
    """A server's runs, one per setting, each with only its top-level row."""
    return {
        "install": {"ok": True},
        "runs": [
            {
                "round": 0,
                "setting": {"n": i},
                "error": None,
                "levels": [
                    {"concurrency": 64, "requests": 10, "errors": 0, "residues_per_s": rps, "p99_ms": 100.0}
                ],
            }
            for i, rps in enumerate(top_rates)
        ],
    }


def test_headline_keeps_each_servers_better_setting_and_names_the_failed() -> None:
    servers = {
        PROTEMBED: _server([3000.0, 4000.0]),
        "mosec": _server([1000.0, 1500.0]),
        "bentoml": _server([1800.0, 1200.0]),
        "pytriton": {
            "install": {"ok": True},
            "runs": [{"round": 0, "setting": {}, "error": "x", "levels": []}],
        },
    }
    servers[PROTEMBED]["runs"][1]["raw_ort"] = {"ratio": 0.97, "ratio_to_length_sorted": 0.9}
    h = headline(servers, 64)
    assert h["best_peer"] == "bentoml" and h["protembed_residues_per_s"] == 4000.0
    assert h["protembed_vs_best_peer"] == pytest.approx(4000 / 1800)
    assert h["protembed_vs_raw_ort_same_batches"] == 0.97
    assert h["failed"] == ["pytriton"]


def _config(model: Path, data: Path, servers: list[str], root: Path, install: bool) -> PeersConfig:
    return PeersConfig(
        model_dir=model,
        corpus=data / "corpus" / "corpus.fasta",
        threads=1,
        sequences=12,
        levels=[1, 4],
        servers=servers,
        seconds_per_level=10.0,
        warmup_requests=2,
        env_root=root,
        install=install,
        startup_timeout_s=90.0,
        raw_min_seconds=0.0,
    )


def test_a_peer_that_is_not_installed_is_reported_and_the_rest_runs(
    tiny_model_dir: Path, eval_data_dir: Path, tmp_path: Path
) -> None:
    cfg = _config(tiny_model_dir, eval_data_dir, [PROTEMBED, "litserve"], tmp_path / "envs", install=False)
    report = run_peers_bench(cfg, tmp_path)
    litserve = report["servers"]["litserve"]
    assert not litserve["install"]["ok"] and "not installed" in litserve["install"]["error"]
    assert litserve["runs"] == []
    assert report["headline"]["failed"] == ["litserve"]
    ours = report["servers"][PROTEMBED]["runs"]
    assert len(ours) == 2 and all(r["error"] is None for r in ours)
    for run in ours:
        for row in run["levels"]:
            assert row["errors"] == 0 and row["requests"] == 12
            assert row["correctness"]["checked"] == 12 and row["correctness"]["max_abs_diff"] < 1e-4
        assert run["raw_ort"]["same_batches_residues_per_s"] > 0
    # The write-up: litserve named as not installed, protembed's row and its raw-ORT ratio, and the plot.
    markdown = peers_report.render_markdown({**report, "machine": {}}, "# head", "plot.png")
    assert "| servers that did not install, start or finish cleanly | litserve |" in markdown
    assert "protembed / raw ONNX Runtime on the same batches" in markdown
    assert "**LitServe** (LitAPI(max_batch_size, batch_timeout), one worker); not installed" in markdown
    assert peers_report.plot(report, tmp_path / "plot.png") == tmp_path / "plot.png"
    assert (tmp_path / "plot.png").stat().st_size > 0


def test_mosec_serves_the_model_through_its_dynamic_batching(
    tiny_model_dir: Path, eval_data_dir: Path, tmp_path: Path
) -> None:
    """A real peer for a few seconds (mosec starts in about 3 s), answers checked like the benchmark's."""
    if envs.ensure(SERVERS["mosec"], envs.DEFAULT_ROOT, False, print).python is None:
        pytest.skip(
            f"mosec's venv is not built under {envs.DEFAULT_ROOT}: `protembed bench peers --smoke "
            "--servers mosec` builds it (pinned, from PyPI)"
        )
    cfg = _config(tiny_model_dir, eval_data_dir, ["mosec"], envs.DEFAULT_ROOT, install=False)
    report = run_peers_bench(cfg, tmp_path)
    runs = report["servers"]["mosec"]["runs"]
    assert [r["error"] for r in runs] == [None, None]
    for run in runs:
        assert run["startup_s"] > 0
        for row in run["levels"]:
            assert row["errors"] == 0 and row["requests"] == 12
            assert row["batching"]["batches"] >= 1
    # Every request counted by the wrapper's stats; at 4 in flight batches form.
    assert max(r["levels"][1]["batching"]["mean_batch_size"] for r in runs) > 1.0
