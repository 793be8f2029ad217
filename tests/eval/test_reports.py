"""Report files: strict JSON, the summary merge, the recorded command and machine."""

from __future__ import annotations

import json
import math
from pathlib import Path

from protembed_distill import reports


def test_write_report_is_strict_json(tmp_path: Path) -> None:
    report = reports.new_report("x", command="protembed evaluate --smoke")
    report["value"] = math.nan
    report["nested"] = {"a": [1.0, math.inf]}
    json_path, md_path = reports.write_report(tmp_path, "x", report, reports.header("Title", report))
    data = json.loads(json_path.read_text())  # strict: would fail on NaN tokens
    assert data["value"] is None and data["nested"]["a"] == [1.0, None]
    assert data["command"] == "protembed evaluate --smoke"
    assert data["machine"]["cores"] >= 1 and data["machine"]["cpu"]
    md = md_path.read_text()
    assert md.startswith("# Title") and "`protembed evaluate --smoke`" in md


def test_summary_merges_and_keeps_other_keys(tmp_path: Path) -> None:
    reports.update_summary(tmp_path, {"retention": {"deepsol": 0.98}, "speedup_vs_teachers": 30.0}, "a")
    reports.update_summary(tmp_path, {"retention": {"capsid": 0.97}, "server_vs_raw_ort": 0.9}, "b")
    summary = json.loads((tmp_path / reports.SUMMARY_FILE).read_text())
    assert summary["retention"] == {"deepsol": 0.98, "capsid": 0.97}
    assert summary["speedup_vs_teachers"] == 30.0 and summary["server_vs_raw_ort"] == 0.9
    assert summary["sources"]["speedup_vs_teachers"]["report"] == "a"
    assert summary["sources"]["retention"]["report"] == "b"


def test_invocation_reads_like_the_typed_command() -> None:
    assert reports.invocation(["/venv/bin/protembed", "bench", "model", "--seed", "1"]) == (
        "protembed bench model --seed 1"
    )
    assert (
        reports.invocation(["/x/service/protembed/__main__.py", "evaluate"]) == "python -m protembed evaluate"
    )


def test_plots_are_drawn_from_the_reports(tmp_path: Path) -> None:
    from protembed_bench import plots

    score = {"point": 0.8, "low": 0.7, "high": 0.9}
    evaluation = {
        "tasks": {
            t: {
                "metric": "accuracy",
                "results": {
                    m: {"metrics": {"accuracy": score}} for m in ("composition", "student", "teacher:near")
                },
            }
            for t in ("deepsol", "capsid", "deeploc")
        }
    }
    bench = {"results": {"student": {"residues_per_s": 30000.0}, "teacher:near": {"residues_per_s": 16000.0}}}
    row = {"concurrency": 1, "residues_per_s": 5000.0, "p50_ms": 5.0, "p95_ms": 8.0}
    serve = {
        "levels": {"http": [row], "grpc": [dict(row, concurrency=4)]},
        "raw_ort": {"residues_per_s": 9e4},
    }
    assert plots.refresh(tmp_path) == []  # nothing to draw yet
    for name, data in (("evaluate", evaluation), ("bench_model", bench), ("bench_serve", serve)):
        (tmp_path / f"{name}.json").write_text(json.dumps(data))
    made = plots.refresh(tmp_path)
    assert [p.name for p in made] == [plots.QUALITY_PLOT, plots.LATENCY_PLOT]
    for p in made:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_distill_report_rebuilds_from_its_own_copies_with_a_new_benchmark(tmp_path: Path) -> None:
    """The bundled model's run folder is long gone (a GPU box); its report can still take a new bench."""
    import shutil

    import pytest

    from protembed_distill import distill_report
    from protembed_distill.config import load_config

    repo = Path(__file__).resolve().parents[2]
    (tmp_path / "distill").mkdir()
    shutil.copyfile(repo / "reports" / "distill.json", tmp_path / "distill.json")
    shutil.copyfile(repo / "reports" / "distill" / "train.jsonl", tmp_path / "distill" / "train.jsonl")
    bench = json.loads((repo / "reports" / "bench_model.json").read_text())
    bench["ratios"]["student:int8"]["teachers_combined"] = 123.4  # a benchmark the old report never saw
    (tmp_path / "bench_model.json").write_text(json.dumps(bench))
    cfg = load_config(
        repo / "distill" / "configs" / "gpu.toml",
        [f"run.dir='{tmp_path / 'gone'}'", f"output.model_dir='{repo / 'models' / 'protembed-student-v1'}'"],
    )
    previous = json.loads((tmp_path / "distill.json").read_text())

    _, md_path = distill_report.write(cfg, tmp_path, from_reports=True)
    rebuilt = json.loads((tmp_path / "distill.json").read_text())
    assert rebuilt["epochs"] == previous["epochs"] and len(rebuilt["epochs"]) >= 1
    assert rebuilt["sweep"] == previous["sweep"]
    assert rebuilt["teacher_embedding"] == previous["teacher_embedding"]
    assert rebuilt["throughput"]["student:int8"]["teachers_combined"] == 123.4
    assert "123.4" in md_path.read_text()
    assert (tmp_path / "distill" / "train.jsonl").is_file()  # its own log is kept, not cleared

    other = dict(previous, model={"id": "another-model"})
    (tmp_path / "distill.json").write_text(json.dumps(other))
    with pytest.raises(ValueError, match="another-model"):
        distill_report.build(cfg, tmp_path, from_reports=True)
