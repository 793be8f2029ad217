"""`protembed bench model` / `bench serve` in smoke mode on the tiny model, and the batching replay."""

from __future__ import annotations

import asyncio
import json
import re
import statistics
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_TEACHERS

from protembed.cli import main
from protembed_bench.model import BATCH_TOKENS
from protembed_bench.serve.load import closed_loop
from protembed_bench.serve.replay import queue_kwargs, replay_padding


def _bench(what: str, model_dir: Path, data_dir: Path, reports: Path, *extra: str) -> int:
    """``protembed bench <what>`` on one thread in smoke mode, reports under ``reports/smoke``."""
    corpus = data_dir / "corpus" / "corpus.fasta"
    common = ["--model", str(model_dir), "--corpus", str(corpus), "--threads", "1"]
    return main(["bench", what, *common, *extra, "--reports", str(reports), "--smoke"])


@pytest.fixture
def tiny_checkpoint(tmp_path: Path, tiny_model_dir: Path) -> Path:
    """A distillation checkpoint of a tiny student, in the format train.py writes."""
    import torch

    from protembed_distill.config import StudentConfig
    from protembed_distill.student.model import Student
    from protembed_distill.train.checkpoint import CHECKPOINT_FORMAT

    cfg = StudentConfig(layers=1, d_model=8, heads=2, ffn=16, max_length=64)
    model = Student(cfg, {"alpha": 6, "beta": 3})
    path = tmp_path / "best.pt"
    torch.save(
        {
            "format": CHECKPOINT_FORMAT,
            "student_config": cfg.model_dump(mode="json"),
            "teacher_dims": {"alpha": 6, "beta": 3},
            "residue_dims": {},
            "model": model.state_dict(),
        },
        path,
    )
    return path


def test_bench_model_smoke(
    tmp_path: Path, tiny_model_dir: Path, eval_data_dir: Path, tiny_checkpoint: Path
) -> None:
    rc = _bench(
        "model",
        tiny_model_dir,
        eval_data_dir,
        tmp_path,
        *("--teachers", *TINY_TEACHERS, "--checkpoint", str(tiny_checkpoint)),
    )
    assert rc == 0
    report = json.loads((tmp_path / "smoke" / "bench_model.json").read_text())
    results = report["results"]
    assert set(results) == {"teacher:alpha", "teacher:beta", "student:torch", "student", "student:int8"}
    for name, r in results.items():
        assert "error" not in r, name
        assert r["residues"] == report["set"]["residues"]  # one fixed set for every model
        assert r["residues_per_s"] > 0 and r["peak_rss_mb"] >= r["rss_baseline_mb"] > 0
        assert r["batch_tokens"] in BATCH_TOKENS  # every model timed at each default budget
    assert report["set"]["sequences"] == 12 and report["set"]["max"] <= 64
    assert report["settings"]["batch_tokens"] == list(BATCH_TOKENS)
    ratios = report["ratios"]
    assert ratios["student"]["teacher:alpha"] == pytest.approx(
        results["student"]["residues_per_s"] / results["teacher:alpha"]["residues_per_s"]
    )
    combined = report["set"]["residues"] / (
        results["teacher:alpha"]["seconds_per_pass"] + results["teacher:beta"]["seconds_per_pass"]
    )
    assert ratios["student"]["teachers_combined"] == pytest.approx(
        results["student"]["residues_per_s"] / combined
    )
    summary = json.loads((tmp_path / "smoke" / "summary.json").read_text())
    # the headline is the variant the server runs on the CPU (int8 when the model has one)
    assert summary["speedup_variant"] == "int8"
    assert summary["speedup_vs_teachers"] == pytest.approx(ratios["student:int8"]["teachers_combined"])
    assert summary["speedup_vs_teachers_fp32"] == pytest.approx(ratios["student"]["teachers_combined"])
    assert "## Speed-up" in (tmp_path / "smoke" / "bench_model.md").read_text()


def test_bench_model_reports_a_failing_model(
    tmp_path: Path, tiny_model_dir: Path, eval_data_dir: Path
) -> None:
    rc = _bench(
        "model",
        tiny_model_dir,
        eval_data_dir,
        tmp_path,
        *("--teachers", "ghost=eval_tiny_teachers:nothing_here", "--no-int8", "--rounds", "2"),
        *("--batch-tokens", "64", "256"),
    )
    assert rc == 1
    report = json.loads((tmp_path / "smoke" / "bench_model.json").read_text())
    assert "nothing_here" in report["results"]["teacher:ghost"]["error"]
    assert "error" not in report["results"]["student"]
    student = report["results"]["student"]
    # interleaved rounds, each at every batch budget, the fastest kept with the budget that made it
    assert len(student["rounds_residues_per_s"]) == 2 * 2
    assert student["residues_per_s"] == max(student["rounds_residues_per_s"])
    assert student["batch_tokens"] in (64, 256) and report["settings"]["batch_tokens"] == [64, 256]


def test_every_kind_embeds_through_one_protocol(tiny_model_dir: Path, tiny_checkpoint: Path) -> None:
    """The worker never branches on kinds: each spec the bench makes loads through the registry."""
    from protembed_bench.model import KINDS, ModelSpec, kind_of

    specs = [
        ModelSpec("teacher:alpha", "teacher", TINY_TEACHERS[0]),
        ModelSpec("student:torch", "torch_student", checkpoint=str(tiny_checkpoint)),
        ModelSpec("student", "onnx", model_dir=str(tiny_model_dir), variant="fp32"),
    ]
    assert {s.kind for s in specs} == set(KINDS)
    for spec in specs:
        out = kind_of(spec).load(spec, 1).embed(["MKV", "ACDEFG"])
        assert out is not None, spec.name
    with pytest.raises(ValueError, match=r"'ghost'.*unknown kind 'gpu'.*onnx"):
        kind_of(ModelSpec("ghost", "gpu"))
    no_checkpoint = ModelSpec("student", "torch_student")
    with pytest.raises(ValueError, match=r"'student'.*needs checkpoint"):
        kind_of(no_checkpoint).load(no_checkpoint, 1)


def test_bench_serve_smoke(tmp_path: Path, tiny_model_dir: Path, eval_data_dir: Path) -> None:
    rc = _bench("serve", tiny_model_dir, eval_data_dir, tmp_path)
    assert rc == 0
    out = tmp_path / "smoke"
    report = json.loads((out / "bench_serve.json").read_text())
    for transport in ("http", "grpc"):
        rows = report["levels"][transport]
        assert [r["concurrency"] for r in rows] == [1, 4]
        for r in rows:
            assert r["errors"] == 0 and r["requests"] > 0, r["first_errors"]
            assert r["p50_ms"] <= r["p95_ms"] <= r["p99_ms"]
            assert r["server_batching"]["batches"] >= 1
    raw = report["raw_ort"]
    assert len(raw["all_residues_per_s"]) == 3  # before each transport and after the run
    assert raw["residues_per_s"] == max(raw["all_residues_per_s"]) > 0
    assert raw["limit_residues_per_s"] == max(raw["all_limit_residues_per_s"]) >= raw["residues_per_s"]
    assert raw["limit_residues_per_s"] >= raw["single_residues_per_s"] > 0
    assert raw["server_batches_residues_per_s"] == max(raw["all_server_batches_residues_per_s"]) > 0
    assert raw["limit_residues_per_s"] >= raw["server_batches_residues_per_s"]
    # the server queue's batches, replayed on the top level's stream: every sequence once
    assert 1 <= raw["server_batches"] <= report["workload"]["sequences"]
    best = report["best"]["residues_per_s"]
    # the headline: the median of paired rounds, each a fresh top-level stream against raw ORT just before
    rounds = report["paired_rounds"]
    assert len(rounds) == 2 and all(r["errors"] == 0 and r["concurrency"] == 4 for r in rounds)
    for r in rounds:
        assert r["ratio"] == r["server_residues_per_s"] / r["raw_residues_per_s"] and r["ratio"] > 0
    assert report["server_vs_raw_ort"] == statistics.median(r["ratio"] for r in rounds)
    assert report["server_vs_raw_ort_best"] == best / raw["server_batches_residues_per_s"]
    assert report["server_vs_raw_ort_sorted"] == best / raw["residues_per_s"]
    assert report["server_vs_raw_ort_best_shape"] == best / raw["limit_residues_per_s"]
    assert report["cache"]["hit_median_ms"] > 0 and report["cache"]["speedup"] > 1.0
    # the headline cache figures from a blocking socket; the asyncio client's beside them, other sequences
    assert report["cache"]["client"] == "blocking socket" and report["cache_async_client"]["speedup"] > 1.0
    assert report["cache"]["sequences"] == report["cache_async_client"]["sequences"] == 3
    summary = json.loads((out / "summary.json").read_text())
    for key in ("server_vs_raw_ort", "padding_ratio_bucketed", "padding_ratio_fifo", "cache_hit_speedup"):
        assert isinstance(summary[key], float)
    assert (out / "latency_vs_throughput.png").stat().st_size > 1000
    assert "## Padding" in (out / "bench_serve.md").read_text()


def _stream(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.lognormal(np.log(230), 0.7, n).astype(int), 20, 1024)
    return [f"M{i:05d}" + "A" * (int(n_) - 6) for i, n_ in enumerate(lengths)]  # distinct, real-like lengths


def test_replay_bucketing_beats_arrival_order() -> None:
    seqs = _stream(600, 0)
    kw = {"max_batch_tokens": 16384, "max_batch_size": 64, "max_wait_s": 0.005, "tokens_per_s": 30000.0}
    for concurrency, margin in ((64, 0.1), (256, 0.3)):
        bucketed = replay_padding(seqs, fifo=False, concurrency=concurrency, **kw)
        fifo = replay_padding(seqs, fifo=True, concurrency=concurrency, **kw)
        assert bucketed["padding_ratio"] < fifo["padding_ratio"] - margin, concurrency
        assert fifo["padding_ratio"] > 0.3
    one = replay_padding(seqs[:20], fifo=False, concurrency=1, **kw)
    assert one == {"batches": 20, "mean_batch_size": 1.0, "padding_ratio": 0.0}  # one in flight: no padding


def test_replay_hands_out_the_batches_it_formed() -> None:
    # bench serve times raw ONNX Runtime on exactly these batches (the server's own, replayed)
    seqs = _stream(300, 1)
    kw = {"max_batch_tokens": 2048, "max_batch_size": 64, "max_wait_s": 0.005, "tokens_per_s": 30000.0}
    formed: list[list[str]] = []
    stats = replay_padding(seqs, fifo=False, concurrency=64, formed=formed, **kw)
    assert sorted(s for batch in formed for s in batch) == sorted(seqs)  # every sequence once
    assert len(formed) == stats["batches"] and max(map(len, formed)) > 1
    padded = sum(max(map(len, b)) * len(b) for b in formed)
    assert 1.0 - sum(map(len, seqs)) / padded == pytest.approx(stats["padding_ratio"])
    assert all(len(b) == 1 or len(b) * max(map(len, b)) <= 2048 for b in formed)


def test_replay_takes_the_servers_queue_settings() -> None:
    kwargs = queue_kwargs(
        {
            "max_batch_tokens": 100,
            "max_batch_size": 3,
            "max_wait_ms": 7.0,
            "queued_items": 0,
            "not_a_queue_setting": 1,
        }
    )
    assert kwargs == {"max_batch_tokens": 100, "max_batch_size": 3, "max_wait_s": 0.007}


def test_closed_loop_is_bounded_in_time() -> None:
    async def slow(seq: str) -> bool:
        await asyncio.sleep(0.05)
        return False

    start = time.monotonic()
    row = asyncio.run(closed_loop(slow, ["MK"] * 1000, concurrency=4, seconds=0.3))
    assert time.monotonic() - start < 2.0
    assert 0 < row["requests"] < 1000 and row["errors"] == 0
    assert row["requests_per_s"] == pytest.approx(row["requests"] / row["seconds"])


def test_closed_loop_counts_errors() -> None:
    async def failing(seq: str) -> bool:
        raise RuntimeError("HTTP 500")

    row = asyncio.run(closed_loop(failing, ["MK"] * 5, concurrency=2, seconds=5))
    assert row["errors"] == 5 and row["requests"] == 0 and "HTTP 500" in row["first_errors"][0]


def test_op_profile_shares_the_model_files_kernel_time(
    tmp_path: Path, tiny_model_dir: Path, eval_data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """ONNX Runtime's trace of the per-protein cut, summed by operator: the shares add up to the whole, the
    weight products are there, and a per-residue output is traced on the full graph instead (the bundled
    model's per-residue head is its only convolution)."""
    from protembed_bench.tools.op_profile import main as op_profile

    corpus = eval_data_dir / "corpus" / "corpus.fasta"
    common = [str(tiny_model_dir), "--variant", "fp32", "--corpus", str(corpus), "--sequences", "8"]
    assert op_profile([*common, "--threads", "1", "--out", str(tmp_path / "p.json")]) == 0
    report = json.loads((tmp_path / "p.json").read_text())
    ops = {row["op"]: row for row in report["ops"]}
    assert sum(row["share"] for row in report["ops"]) == pytest.approx(1.0)
    assert any("MatMul" in op or op == "Gemm" for op in ops) and all(r["calls"] > 0 for r in ops.values())
    assert "| operator | share of kernel time | calls |" in capsys.readouterr().out

    bundled = Path(__file__).resolve().parents[2] / "models" / "protembed-student-v1"
    traced = {}
    for output in ("student", "residue_states"):
        out = tmp_path / f"{output}.json"
        args = [str(bundled), "--corpus", str(corpus), "--sequences", "4", "--threads", "1"]
        assert op_profile([*args, "--outputs", output, "--out", str(out)]) == 0
        traced[output] = {row["op"] for row in json.loads(out.read_text())["ops"]}
    assert "Conv" not in traced["student"] and "Conv" in traced["residue_states"]
    # the served CPU path runs the attention fused (protembed.attention_fusion), one kernel per block
    assert "Attention" in traced["student"] and "Softmax" not in traced["student"]


def test_output_speed_times_one_folder_fused_and_as_exported(
    eval_data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from protembed_bench.tools.output_speed import main as output_speed

    bundled = Path(__file__).resolve().parents[2] / "models" / "protembed-student-v1"
    corpus = eval_data_dir / "corpus" / "corpus.fasta"
    args = [str(bundled), "--fusion", "--corpus", str(corpus), "--sequences", "6", "--rounds", "1"]
    assert output_speed([*args, "--threads", "1", "--outputs", "student"]) == 0
    out = capsys.readouterr().out
    layers = json.loads((bundled / "model.json").read_text())["architecture"]["layers"]
    assert f"(attention fused: {layers} blocks)" in out and "(as exported)" in out
    assert re.search(r"^student: \d+ vs \d+ -> \d+\.\d+x", out, re.M), out
    with pytest.raises(SystemExit):
        output_speed([str(bundled), str(bundled), "--fusion"])


def test_op_profile_refuses_a_trace_without_nodes() -> None:
    from protembed_bench.tools.op_profile import op_shares

    with pytest.raises(ValueError, match="no node kernel times"):
        op_shares([{"cat": "Session", "name": "model_run", "dur": 5}])
