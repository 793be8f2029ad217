from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from distill_fakes import prepared_run

from protembed_distill.config import ConfigError, DistillConfig
from protembed_distill.student.model import Student
from protembed_distill.train.batches import epoch_plan, epoch_rows, make_batches
from protembed_distill.train.checkpoint import (
    atomic_save,
    blend_checkpoints,
    load_checkpoint,
    student_from_checkpoint,
)
from protembed_distill.train.targets import load_targets
from protembed_distill.train.trainer import evaluate, train

torch.set_num_threads(1)


def test_make_batches_deterministic_within_budget() -> None:
    lengths = [((i * 37) % 90) + 5 for i in range(200)]
    a = make_batches(lengths, 400, seed=1, epoch=0)
    assert a == make_batches(lengths, 400, seed=1, epoch=0)
    assert a != make_batches(lengths, 400, seed=1, epoch=1)
    assert sorted(i for b in a for i in b) == list(range(200))
    assert all(max(lengths[i] for i in b) * len(b) <= 400 for b in a)


def test_source_weights_draw_rows_per_epoch() -> None:
    sources = ["corpus"] * 300 + ["uniprot"] * 300
    assert epoch_rows(sources, {}, seed=1, epoch=0) == list(range(600))
    twice = epoch_rows(sources, {"corpus": 2.0}, seed=1, epoch=0)
    assert sorted(twice) == sorted([*range(300), *range(300), *range(300, 600)])
    halves = [epoch_rows(sources, {"uniprot": 0.5}, seed=1, epoch=e) for e in range(8)]
    assert halves[0] == epoch_rows(sources, {"uniprot": 0.5}, seed=1, epoch=0)  # replayable on resume
    for rows in halves:
        assert [r for r in rows if r < 300] == list(range(300))  # unnamed sources: once each
        assert 110 < sum(r >= 300 for r in rows) < 190  # about half of the weighted source
    assert {r for r in halves[0] if r >= 300} != {r for r in halves[1] if r >= 300}  # another half
    assert {r for rows in halves for r in rows} == set(range(600))  # every row, over epochs
    lengths = [((i * 37) % 90) + 5 for i in range(600)]
    assert epoch_plan(lengths, sources, {}, 400, seed=1, epoch=3) == make_batches(lengths, 400, 1, 3)
    weighted = epoch_plan(lengths, sources, {"uniprot": 0.5}, 400, seed=1, epoch=3)
    assert sorted(i for b in weighted for i in b) == sorted(epoch_rows(sources, {"uniprot": 0.5}, 1, 3))
    assert all(max(lengths[i] for i in b) * len(b) <= 400 for b in weighted)


def test_source_weights_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"data.source_weights: weights must be > 0 .*; not src"):
        prepared_run(tmp_path / "a", n=20, data={"source_weights": {"src": 0.0}})
    cfg, ds = prepared_run(
        tmp_path / "b", n=20, data={"source_weights": {"uniprot": 0.5}}, optim={"epochs": 1}
    )
    with pytest.raises(ValueError, match=r"data.source_weights: uniprot not among .*\(src\)"):
        train(cfg, ds, echo=False)


def test_source_weights_scale_the_epoch(tmp_path: Path) -> None:
    """Weight 2 on the only source: each epoch trains on every sequence twice (twice the residues)."""
    once = train(*prepared_run(tmp_path / "a", n=30, optim={"epochs": 1}), echo=False)
    cfg, ds = prepared_run(tmp_path / "b", n=30, data={"source_weights": {"src": 2.0}}, optim={"epochs": 1})
    twice = train(cfg, ds, echo=False)
    residues = [load_checkpoint(r.last_checkpoint)["state"]["train_residues"] for r in (once, twice)]
    assert residues[1] == 2 * residues[0] == 2 * sum(len(i.sequence) for i in ds.train)
    log = [json.loads(x) for x in (cfg.run.dir / "train.jsonl").read_text().splitlines()]
    assert [r["train_residues"] for r in log if r["kind"] == "epoch"] == [residues[1]]


def test_tiny_distillation_lowers_the_loss(tmp_path: Path) -> None:
    cfg, ds = prepared_run(tmp_path, optim={"epochs": 15, "lr": 5e-3})
    loaded = load_targets(cfg, ds)
    torch.manual_seed(cfg.run.seed)
    untrained = Student(cfg.student, {"fake_a": 12, "fake_b": 6}, {"fake_b": 6})
    before = evaluate(untrained, ds.val, loaded.val, loaded, cfg, torch.device("cpu"))
    loaded.close()
    res = train(cfg, ds, echo=False)
    assert res.finished and res.step > 10
    assert res.val["val_loss"] < 0.7 * before["val_loss"]
    for t in ("fake_a", "fake_b"):
        assert res.val["val_cosine_std"][t] > before["val_cosine_std"][t] + 0.1
    assert "val_residue_cosine_std" in res.val  # the per-residue teacher was aligned too
    log = [json.loads(line) for line in (cfg.run.dir / "train.jsonl").read_text().splitlines()]
    steps = [r for r in log if r["kind"] == "step"]
    assert sum(r["loss"] for r in steps[-5:]) < sum(r["loss"] for r in steps[:5])
    assert "fake_b.residue" in steps[0]
    assert len((cfg.run.dir / "train.csv").read_text().splitlines()) == 1 + 15
    best = load_checkpoint(res.best_checkpoint)
    assert best["state"]["best_epoch"] == min(best["state"]["history"], key=lambda r: r["val_loss"])["epoch"]


def test_resume_after_interruption_matches_uninterrupted_run(tmp_path: Path) -> None:
    sections = {"optim": {"epochs": 2, "checkpoint_every_steps": 3}, "student": {"dropout": 0.1}}
    cfg, ds = prepared_run(tmp_path / "a", n=30, **sections)
    full = train(cfg, ds, echo=False)
    ref = load_checkpoint(full.last_checkpoint)

    cfg_b, ds_b = prepared_run(tmp_path / "b", n=30, **sections)
    stop = full.step // 2 + 1  # lands mid-epoch
    part = train(cfg_b, ds_b, stop_after_steps=stop, echo=False)
    assert not part.finished and part.step == stop
    resumed = train(cfg_b, ds_b, echo=False)
    assert resumed.finished and resumed.step == full.step
    got = load_checkpoint(resumed.last_checkpoint)
    for k, v in ref["model"].items():
        torch.testing.assert_close(got["model"][k], v, rtol=0, atol=1e-6, msg=k)
    assert [r["val_loss"] for r in got["state"]["history"]] == pytest.approx(
        [r["val_loss"] for r in ref["state"]["history"]], abs=1e-6
    )
    kinds = [json.loads(x)["kind"] for x in (cfg_b.run.dir / "train.jsonl").read_text().splitlines()]
    assert "resume" in kinds


def test_resume_refuses_a_different_student(tmp_path: Path) -> None:
    cfg, ds = prepared_run(tmp_path, n=20, optim={"epochs": 1})
    train(cfg, ds, echo=False)
    other = cfg.model_copy(update={"student": cfg.student.model_copy(update={"d_model": 16})})
    with pytest.raises(ValueError, match="different student"):
        train(other, ds, echo=False)


def test_init_from_starts_at_the_given_weights_with_a_fresh_schedule(tmp_path: Path) -> None:
    cfg, ds = prepared_run(tmp_path, n=24, optim={"epochs": 2, "lr": 5e-3})
    first = train(cfg, ds, echo=False)
    start = load_checkpoint(first.best_checkpoint)
    # lr ~0: the warm-started run must keep the first run's weights and so its validation loss
    update = {"init_from": first.best_checkpoint, "lr": 1e-12, "epochs": 1, "warmup_steps": 0}
    warm = cfg.model_copy(
        update={
            "optim": cfg.optim.model_copy(update=update),
            "run": cfg.run.model_copy(update={"dir": tmp_path / "w"}),
        }
    )
    res = train(warm, ds, echo=False)
    got = load_checkpoint(res.last_checkpoint)
    assert got["state"]["step"] < first.step  # a new schedule, not a resume of the first run
    for k, v in start["model"].items():
        torch.testing.assert_close(got["model"][k], v, rtol=0, atol=1e-6, msg=k)
    assert res.val["val_loss"] == pytest.approx(min(r["val_loss"] for r in first.history), abs=1e-5)

    def variant(name: str, **update: object) -> DistillConfig:
        return warm.model_copy(update={**update, "run": warm.run.model_copy(update={"dir": tmp_path / name})})

    other = variant("o", student=warm.student.model_copy(update={"d_model": 16}))
    with pytest.raises(ValueError, match=r"optim\.init_from: .* different student"):
        train(other, ds, echo=False)
    missing = variant("m", optim=warm.optim.model_copy(update={"init_from": tmp_path / "no.pt"}))
    with pytest.raises(ValueError, match=r"optim\.init_from: .*no\.pt is neither a checkpoint"):
        train(missing, ds, echo=False)


def test_blend_checkpoints_interpolates_one_runs_weights(tmp_path: Path) -> None:
    cfg, ds = prepared_run(tmp_path / "a", n=24, optim={"epochs": 2, "lr": 5e-3})
    part = train(cfg, ds, stop_after_steps=1, echo=False)
    early = tmp_path / "early.pt"
    shutil.copy(part.last_checkpoint, early)
    full = train(cfg, ds, echo=False)
    a, b = load_checkpoint(early), load_checkpoint(full.last_checkpoint)
    assert any(not torch.equal(a["model"][k], v) for k, v in b["model"].items())  # training moved them
    for alpha in (0.0, 0.3, 1.0):
        got = blend_checkpoints(early, full.last_checkpoint, alpha)
        for k, v in b["model"].items():
            torch.testing.assert_close(got["model"][k], (1 - alpha) * a["model"][k] + alpha * v, msg=k)
        assert got["blend"] == {"start": str(early), "end": str(full.last_checkpoint), "alpha": alpha}
        assert got["val_sequences"] == b["val_sequences"] and got["config"] == b["config"]
    student_from_checkpoint(got)  # the blend is a checkpoint the export can rebuild a student from

    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\], got 1.5"):
        blend_checkpoints(early, full.last_checkpoint, 1.5)
    cfg_o, ds_o = prepared_run(tmp_path / "o", n=30, optim={"epochs": 1})
    other = train(cfg_o, ds_o, echo=False)
    with pytest.raises(ValueError, match=r"standardize teacher .* differently"):
        blend_checkpoints(early, other.last_checkpoint, 0.5)
    wider = tmp_path / "wider.pt"
    atomic_save({**a, "student_config": {**a["student_config"], "d_model": 16}}, wider)
    with pytest.raises(ValueError, match="differ in student_config"):
        blend_checkpoints(wider, full.last_checkpoint, 0.5)


def test_init_from_an_exported_model_folder(tmp_path: Path) -> None:
    # The committed model folder is the one copy of the weights every later run can reach: training
    # continues from it, its heads unfolded back to this run's standardized targets.
    from protembed_distill.export.model_folder import export_checkpoint

    cfg, ds = prepared_run(tmp_path, n=24, optim={"epochs": 2, "lr": 5e-3})
    first = train(cfg, ds, echo=False)
    folder = tmp_path / "models" / "tiny"
    export_checkpoint(first.best_checkpoint, folder, int8=False, fp16=False, quality_sequences=8)
    start = load_checkpoint(first.best_checkpoint)["model"]
    update = {"init_from": folder, "lr": 1e-12, "epochs": 1, "warmup_steps": 0}
    warm = cfg.model_copy(
        update={
            "optim": cfg.optim.model_copy(update=update),
            "run": cfg.run.model_copy(update={"dir": tmp_path / "w"}),
        }
    )
    res = train(warm, ds, echo=False)
    got = load_checkpoint(res.last_checkpoint)["model"]
    shared = [k for k in start if not k.startswith("residue_heads.")]  # training-only, not exported
    assert any(k.startswith("heads.") for k in shared)
    for k in shared:  # the same corpus and teachers give the same statistics: the heads come back exactly
        torch.testing.assert_close(got[k], start[k], rtol=1e-5, atol=1e-5, msg=k)

    wide = warm.model_copy(
        update={
            "student": warm.student.model_copy(update={"ffn": 2 * warm.student.ffn}),
            "run": warm.run.model_copy(update={"dir": tmp_path / "x"}),
        }
    )
    with pytest.raises(ValueError, match=r"optim\.init_from: .*different student: ffn"):
        train(wide, ds, echo=False)


def test_kl_option_and_early_stopping(tmp_path: Path) -> None:
    # lr 0 cannot improve after the first epoch, so patience 1 stops at epoch 2 of 5.
    cfg, ds = prepared_run(
        tmp_path,
        n=20,
        optim={"epochs": 5, "patience": 1, "lr": 1e-12, "warmup_steps": 0},
        loss={"kl": 1.0, "kl_temperature": 2.0},
    )
    res = train(cfg, ds, echo=False)
    assert len(res.history) == 2
    kinds = [json.loads(x)["kind"] for x in (cfg.run.dir / "train.jsonl").read_text().splitlines()]
    assert "early_stop" in kinds
    steps = [json.loads(x) for x in (cfg.run.dir / "train.jsonl").read_text().splitlines()]
    assert any("fake_a.kl" in r for r in steps)


def test_lr_schedule_warms_up_and_decays_on_steps_or_time() -> None:
    from protembed_distill.train.trainer import lr_factor

    assert lr_factor(0, 10, 100) == pytest.approx(0.1)
    assert lr_factor(10, 10, 100) == pytest.approx(1.0)
    assert lr_factor(100, 10, 100) == pytest.approx(0.02)
    assert lr_factor(20, 10, 100, time_fraction=1.0) == pytest.approx(0.02)  # time budget used up
    assert lr_factor(55, 10, 100) < lr_factor(30, 10, 100)


def test_size_sweep_reports_quality_and_speed_per_size(tmp_path: Path) -> None:
    from protembed_distill.sweep import run_sweep

    sizes = [
        {"layers": 1, "d_model": 16, "heads": 2, "ffn": 32, "max_length": 128},
        {"layers": 2, "d_model": 32, "heads": 4, "ffn": 64, "max_length": 128},
    ]
    cfg, ds = prepared_run(tmp_path, n=24, sweep={"sizes": sizes, "steps": 3})
    report = run_sweep(cfg, ds, threads=1, echo=False, bench_seconds=0.1)
    assert [r["size"] for r in report["sizes"]] == ["L1-d16-h2-f32", "L2-d32-h4-f64"]
    for row in report["sizes"]:
        assert row["steps"] == 3 and row["onnx_cpu_residues_per_s"] > 0
        assert set(row["val_cosine"]) == {"fake_a", "fake_b"}
    md = (cfg.run.dir / "sweep" / "sweep.md").read_text()
    assert "L2-d32-h4-f64" in md and "ONNX CPU res/s" in md


def test_cpu_amp_trains_in_bfloat16_where_the_cpu_has_matrix_units(tmp_path: Path) -> None:
    from protembed_distill.train.trainer import use_bf16_autocast

    cfg, ds = prepared_run(tmp_path, optim={"epochs": 6, "lr": 5e-3, "cpu_amp": True})
    cpu = torch.device("cpu")
    assert not use_bf16_autocast(
        cfg.model_copy(update={"optim": cfg.optim.model_copy(update={"cpu_amp": False})}), cpu
    )
    units = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    assert use_bf16_autocast(cfg, cpu) is units  # elsewhere: float32, with a line on stderr
    res = train(cfg, ds, echo=False)
    log = [json.loads(line) for line in (cfg.run.dir / "train.jsonl").read_text().splitlines()]
    assert log[0]["bf16_autocast"] is units
    steps = [r for r in log if r["kind"] == "step"]
    assert all(r["loss"] == r["loss"] for r in steps)  # no NaN under bfloat16
    assert sum(r["loss"] for r in steps[-3:]) < sum(r["loss"] for r in steps[:3])
    # Weights and checkpoints stay float32: autocast only changes the products' inputs.
    assert all(p.dtype == torch.float32 for p in load_checkpoint(res.best_checkpoint)["model"].values())
