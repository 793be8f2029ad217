"""Student candidates trained as separate full runs, compared from their logs (``--stage compare``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from distill_fakes import random_sequences, tiny_config

from protembed_distill.config import DistillConfig, StudentConfig
from protembed_distill.sweep import compare_runs, size_tag

torch.set_num_threads(1)

SMALL = {"layers": 1, "d_model": 16, "heads": 2, "ffn": 32, "dropout": 0.0, "max_length": 128}


def test_size_tag_names_pool_dim_only_when_set() -> None:
    assert size_tag(StudentConfig(**SMALL)) == "L1-d16-h2-f32"
    assert size_tag(StudentConfig(**SMALL, pool_dim=64)) == "L1-d16-h2-f32-p64"
    assert size_tag(StudentConfig(layers=4, d_model=256, heads=8, ffn=1024)) == "L4-d256-h8-f1024"


def _config(tmp_path: Path) -> DistillConfig:
    return tiny_config(tmp_path, tmp_path / "unused.fasta")


def _write_run(run_dir: Path, cfg: DistillConfig, student: dict[str, Any], val_losses: list[float]) -> Path:
    """A train.jsonl as ``train`` writes it: start, step and epoch events (one epoch per val loss)."""
    start_cfg = cfg.model_dump(mode="json")
    start_cfg["student"] = {**start_cfg["student"], **student}
    events: list[dict[str, Any]] = [
        {"kind": "start", "config": start_cfg, "parameters": 12345, "device": "cuda:0", "threads": 1}
    ]
    for epoch, loss in enumerate(val_losses):
        step = 10 * (epoch + 1)
        events.append({"kind": "step", "step": step - 5, "epoch": epoch, "loss": 9.0})
        events.append(
            {
                "kind": "epoch",
                "epoch": epoch,
                "step": step,
                "train_loss": 1.0,
                "train_residues_per_s": 1000.0 * (epoch + 1),
                "val_loss": loss,
                "val_cosine": {
                    "fake_a": [0.5, 0.51, 0.52, 0.53][epoch],
                    "fake_b": [0.4, 0.41, 0.42, 0.43][epoch],
                },
                "val_cosine_std": {"fake_a": [0.3, 0.31, 0.32, 0.33][epoch], "fake_b": 0.2},
            }
        )
    events.append({"kind": "done", "step": 10 * len(val_losses) + 3, "best_epoch": 0})
    run_dir.mkdir(parents=True)
    (run_dir / "train.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    return run_dir


def test_compare_runs_reads_the_best_epoch_and_measures_speed(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    plain = _write_run(tmp_path / "runs" / "plain", cfg, SMALL, [0.9, 0.5, 0.7])
    pooled = _write_run(tmp_path / "runs" / "pooled", cfg, {**SMALL, "pool_dim": 48}, [0.8, 0.6, 0.4, 0.45])
    bench = random_sequences(4, 10, 40, seed=1)
    report = compare_runs(cfg, [plain, pooled], threads=1, bench_sequences=bench, seconds=0.2)

    assert report["mode"] == "full runs compared" and report["bench_sequences"] == 4
    a, b = report["sizes"]
    assert (a["size"], b["size"]) == ("L1-d16-h2-f32", "L1-d16-h2-f32-p48")
    assert (a["run"], b["run"]) == (str(plain), str(pooled))
    assert (a["pool_dim"], b["pool_dim"]) == (0, 48)
    # the best epoch is the lowest validation loss, not the last one, with that epoch's numbers
    assert (a["best_epoch"], a["val_loss"], a["steps"]) == (1, 0.5, 33)
    assert a["val_cosine"] == {"fake_a": 0.51, "fake_b": 0.41} and a["train_residues_per_s"] == 2000.0
    assert (b["best_epoch"], b["val_loss"], b["steps"]) == (2, 0.4, 43)
    assert b["val_cosine_std"] == {"fake_a": 0.32, "fake_b": 0.2}
    # training speed is the run's median epoch, not the best epoch's (a budget-cut epoch is all validation)
    assert b["train_residues_per_s"] == 3000.0
    assert report["steps_per_size"] == 43
    for row in (a, b):
        assert row["parameters"] == 12345 and row["device"] == "cuda:0" and row["threads"] == 1
        assert row["onnx_cpu_residues_per_s"] > 0

    out = cfg.run.dir / "sweep"
    assert json.loads((out / "sweep.json").read_text()) == report
    md = (out / "sweep.md").read_text()
    assert md.startswith("# Student candidates, full runs side by side (up to 43 steps")
    assert "| plain | L1-d16-h2-f32 |" in md and "| pooled | L1-d16-h2-f32-p48 |" in md
    assert "val cos fake_a" in md and "0.5100" in md and "0.5200" in md


def test_compare_runs_refuses_folders_that_are_not_finished_runs(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    bench = random_sequences(2, 10, 20, seed=2)
    missing = tmp_path / "runs" / "never-trained"
    missing.mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="not a training run folder") as err:
        compare_runs(cfg, [missing], 1, bench, seconds=0.1)
    assert str(missing / "train.jsonl") in str(err.value)
    started = _write_run(tmp_path / "runs" / "started", cfg, SMALL, [])
    with pytest.raises(ValueError, match="no validated epoch"):
        compare_runs(cfg, [started], 1, bench, seconds=0.1)
    with pytest.raises(ValueError, match="--runs"):
        compare_runs(cfg, [], 1, bench, seconds=0.1)
    assert not (cfg.run.dir / "sweep").exists()


def test_cli_compare_stage_uses_set_and_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from protembed.cli import main

    corpus = tmp_path / "c.fasta"
    corpus.write_text("".join(f">src|s{i}\n{s}\n" for i, s in enumerate(random_sequences(30, 20, 60, 5))))
    config = tmp_path / "c.toml"
    config.write_text(
        f'[run]\ndir = "{tmp_path / "run"}"\nthreads = 1\n'
        f'[output]\nteacher_cache_dir = "{tmp_path / "cache"}"\n'
        f'[[teachers]]\nname = "fake_a"\n[data]\ncorpus = "{corpus}"\nmax_length = 64\nmin_length = 5\n'
        "validation_fraction = 0.2\n[student]\nlayers = 1\nd_model = 16\nheads = 2\nffn = 32\n"
    )
    elsewhere = tmp_path / "elsewhere"
    args = ["distill", str(config), "--stage", "compare", "--set", f'run.dir="{elsewhere}"']
    assert main([*args, "--runs", str(tmp_path / "nope")]) == 1
    err = capsys.readouterr().err
    assert "compare:" in err and str(tmp_path / "nope" / "train.jsonl") in err
    assert (elsewhere / "data_stats.json").is_file() and not (tmp_path / "run").exists()
    assert main(args) == 1
    assert "--runs: give the candidates' run folders" in capsys.readouterr().err
