"""The warm start kept in the repository: sessions of CPU training add up instead of restarting at 1.4.0."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from distill_fakes import prepared_run

from protembed_distill.export.model_folder import export_checkpoint
from protembed_distill.tools import warmstart
from protembed_distill.train.checkpoint import atomic_save, blend_checkpoints, load_checkpoint
from protembed_distill.train.trainer import train

torch.set_num_threads(1)


def _continuation(cfg, ds, run: Path, init_from: Path | None, export: bool = True) -> Path:
    """A continuation's run folder as continuation_curve.py leaves it: step0/ (its start at learning
    rate 0), checkpoints/best.pt, and the export the ship check writes to model/."""
    optim = cfg.optim.model_copy(update={"init_from": init_from})
    step0 = optim.model_copy(update={"lr": 0.0, "max_steps": 1, "warmup_steps": 0})
    for where, o in ((run / "step0", step0), (run, optim)):
        run_cfg = cfg.run.model_copy(update={"dir": where})
        train(cfg.model_copy(update={"optim": o, "run": run_cfg}), ds, echo=False)
    if export:
        export_checkpoint(run / "checkpoints" / "best.pt", run / "model", int8=False, quality_sequences=8)
    return run


def test_save_keeps_a_line_that_later_runs_continue(tmp_path: Path) -> None:
    cfg, ds = prepared_run(tmp_path, n=24, optim={"epochs": 2, "lr": 5e-3})
    dest = tmp_path / "warmstart"

    first = _continuation(cfg, ds, tmp_path / "r1", None)
    assert warmstart.main(["save", str(first), "--dest", str(dest)]) == 0
    assert sorted(p.name for p in dest.iterdir()) == ["lineage.json", "model.fp16.onnx", "model.json"]
    (line,) = json.loads((dest / "lineage.json").read_text())
    state = load_checkpoint(first / "checkpoints" / "best.pt")["state"]
    assert line["train_residues"] == state["train_residues"] > 0
    assert line["cumulative_train_residues"] == line["train_residues"]
    assert set(line["val_cosine"]) == set(line["val_cosine_start"]) == {"fake_a", "fake_b"}
    assert line["anchor"] is None

    # The next session starts from the saved folder (fp16 weights only) and extends the line, here
    # anchored to the first run's vectors ([anchor]), which the lineage records.
    anchor = {"model": str(first / "checkpoints" / "best.pt"), "weight": 0.5, "residue_weight": 0.25}
    anchored = cfg.model_copy(update={"anchor": cfg.anchor.model_copy(update=anchor)})
    second = _continuation(anchored, ds, tmp_path / "r2", dest)
    start = load_checkpoint(second / "step0" / "checkpoints" / "last.pt")["model"]
    saved = load_checkpoint(first / "checkpoints" / "best.pt")["model"]
    for k in (k for k in saved if k.startswith("heads.")):  # fp16's rounding, nothing more
        torch.testing.assert_close(start[k], saved[k], rtol=2e-3, atol=2e-3, msg=k)
    warmstart.save(second, second / "model", dest)
    lineage = json.loads((dest / "lineage.json").read_text())
    assert [e["run"] for e in lineage] == [str(first), str(second)]
    assert lineage[-1]["cumulative_train_residues"] == sum(e["train_residues"] for e in lineage)
    for name, end in lineage[0]["val_cosine"].items():  # r2 started where r1 ended
        assert lineage[1]["val_cosine_start"][name] == pytest.approx(end, abs=5e-3)
    assert lineage[1]["anchor"] == anchor
    table = warmstart.show(dest)
    assert (
        table.count("\n") == 3
        and str(second) in table
        and f"| 0.5 x {anchor['model']} (+ 0.25 per residue) |" in table
    )

    # A run from anywhere else starts a new line; one the ship check has not exported is exported first.
    third = _continuation(cfg, ds, tmp_path / "r3", None, export=False)
    warmstart.save(third, third / "model", dest)
    assert json.loads((third / "model" / "model.json").read_text())["version"] == "warmstart-trunk"
    assert [e["run"] for e in json.loads((dest / "lineage.json").read_text())] == [str(third)]

    # A blend carries its end's scores, so it is saved only with its own held-out score.
    blend = tmp_path / "blend"
    start, end = third / "step0" / "checkpoints" / "last.pt", third / "checkpoints" / "best.pt"
    atomic_save(blend_checkpoints(start, end, 0.5), blend / "checkpoints" / "best.pt")
    export_checkpoint(blend / "checkpoints" / "best.pt", blend / "model", int8=False, quality_sequences=8)
    with pytest.raises(ValueError, match=r"holds a blend \(alpha 0.5\).*--validated"):
        warmstart.save(blend, blend / "model", dest)
    entry = warmstart.save(blend, blend / "model", dest, validated=third / "step0")
    assert entry["blend"]["alpha"] == 0.5 and entry["val_cosine_start"] is not None

    assert warmstart.main(["save", str(tmp_path / "nothing"), "--dest", str(dest)]) == 2


def test_card_of_a_model_shipped_from_the_line_describes_the_line(tmp_path: Path) -> None:
    cfg, ds = prepared_run(tmp_path, n=24, optim={"epochs": 2, "lr": 5e-3})
    dest = tmp_path / "warmstart"
    bundled = _continuation(cfg, ds, tmp_path / "r0", None) / "model"  # the model the line continues

    def ship(run: Path) -> Path:
        """The ship path: the warm start scored at learning rate 0 (a checkpoint of exactly its weights),
        exported, its card rewritten."""
        at_rest = cfg.model_copy(update={"optim": cfg.optim.model_copy(update={"lr": 0.0})})
        return _continuation(at_rest, ds, run, dest) / "model"

    first = _continuation(cfg, ds, tmp_path / "r1", bundled)
    warmstart.save(first, first / "model", dest)
    shipped = ship(tmp_path / "ship1")
    with pytest.raises(ValueError, match="line started from"):
        warmstart.card(shipped, dest, first / "model")
    with pytest.raises(ValueError, match="own weights"):
        warmstart.card(shipped, dest, shipped)
    assert warmstart.main(["card", str(shipped), "--base", str(bundled), "--dest", str(dest)]) == 0
    card = json.loads((shipped / "model.json").read_text())
    base = json.loads((bundled / "model.json").read_text())
    data = card["training_data"]
    assert data["continued_from"] == {"id": base["id"], "version": base["version"]}
    assert data["train_sequences"] == base["training_data"]["train_sequences"]
    assert [e["run"] for e in data["continuations"]] == [str(first)]
    assert data["cumulative_train_residues"] == data["continuations"][0]["train_residues"] > 0
    assert card["metrics"]["val_cosine"] == data["continuations"][0]["val_cosine"]
    assert card["metrics"]["base_metrics"] == base["metrics"] and "steps" not in card["metrics"]

    # The next link ships on top of that model: its card keeps the first link and adds the second.
    second = _continuation(cfg, ds, tmp_path / "r2", dest)
    warmstart.save(second, second / "model", dest)
    again = ship(tmp_path / "ship2")
    with pytest.raises(ValueError, match=r"is not .*weights: per-protein cosine"):
        warmstart.card(first / "model", dest, bundled)  # link 1's weights, while the line holds link 2
    warmstart.card(again, dest, shipped)
    with pytest.raises(ValueError, match="already holds every continuation"):
        warmstart.card(shipped, dest, again)
    data = json.loads((again / "model.json").read_text())["training_data"]
    assert data["continued_from"]["version"] == base["version"]
    assert [e["run"] for e in data["continuations"]] == [str(first), str(second)]
    missing = tmp_path / "nothing"
    assert warmstart.main(["card", str(missing), "--base", str(bundled), "--dest", str(dest)]) == 2
