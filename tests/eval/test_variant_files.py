"""The side-by-side comparisons of model files (speed, batch dependence, distance; probe scores) run end to
end on the tiny model; two copies of one graph must come out identical."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from protembed_bench import variant_files, variant_probes


def test_variant_files_compares_speed_dependence_and_distance(
    tiny_model_dir: Path, eval_data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "files.json"
    fp32, copy = tiny_model_dir / "model.onnx", tiny_model_dir / "model.int8.onnx"
    argv = [str(fp32), str(copy), "--corpus", str(eval_data_dir / "corpus" / "corpus.fasta")]
    argv += ["--sequences", "16", "--dependence-sequences", "8", "--rounds", "1", "--crop", "64"]
    assert variant_files.main([*argv, "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert json.loads(capsys.readouterr().out) == report
    first, second = report["files"][str(fp32)], report["files"][str(copy)]
    assert first["wall_ratio_to_first"] == 1.0 and second["cpu_residues_per_s"] > 0
    assert first["distance_to_first"] is None
    assert all(d["max_abs_diff"] == 0.0 for d in second["distance_to_first"].values())
    # the tiny graph computes each residue on its own: no batch-mate can move it
    assert first["batch_dependence_max_abs_diff"] <= 1e-6
    assert report["set"]["sequences"] == 16


def test_variant_probes_scores_each_file_on_the_same_subsets(
    tiny_model_dir: Path, eval_data_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "probes.json"
    argv = [f"a={tiny_model_dir}:fp32", f"b={tiny_model_dir}:int8", "--data-dir", str(eval_data_dir)]
    argv += ["--tasks", "deepsol", "--max-train", "40", "--max-test", "30", "--resamples", "20"]
    assert variant_probes.main([*argv, "--out", str(out)]) == 0
    scores = json.loads(out.read_text())["tasks"]["deepsol"]["scores"]
    assert {"a:student", "b:student"} <= set(scores)
    assert scores["a:student"] == scores["b:student"]  # one graph in two files: the same probe
    with pytest.raises(SystemExit):
        variant_probes.main(["no-colon"])
