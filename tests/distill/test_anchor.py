"""The [anchor] term: a continuation keeps its pooled vector near a frozen earlier student's."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from distill_fakes import prepared_run

from protembed_distill.config import ConfigError
from protembed_distill.tools.continuation_curve import curve_table
from protembed_distill.train.anchor import anchor_file, pooled_vectors, residue_drift
from protembed_distill.train.batches import collate, make_batches
from protembed_distill.train.checkpoint import load_checkpoint, student_from_checkpoint
from protembed_distill.train.trainer import train


def _cos_to(ckpt: Path, anchor_vectors: torch.Tensor, items: list) -> float:
    """Raw cosine of a checkpoint's pooled vectors to the anchor's, per protein, averaged."""
    model = student_from_checkpoint(load_checkpoint(ckpt))
    mine = pooled_vectors(model, items, 600, torch.device("cpu"))
    return float(torch.nn.functional.cosine_similarity(mine, anchor_vectors, dim=-1).mean())


def _continuations(tmp_path: Path) -> tuple[Any, Path, Callable[..., tuple[Any, Any]]]:
    """A short run on 40 sequences (the start), and a function that continues it fast (a high learning
    rate, so the teachers move it) under ``[anchor]`` settings, anchored to the start."""
    base, ds = prepared_run(tmp_path, n=40, optim={"epochs": 2, "lr": 5e-3})
    start = train(base, ds, echo=False).best_checkpoint

    def continuation(name: str, **anchor: float) -> tuple[Any, Any]:
        cfg = base.model_copy(
            update={
                "run": base.run.model_copy(update={"dir": tmp_path / name}),
                "optim": base.optim.model_copy(update={"init_from": start, "lr": 3e-2, "epochs": 3}),
                "anchor": base.anchor.model_copy(update={"model": start, **anchor}),
            }
        )
        return cfg, train(cfg, ds, echo=False)

    return ds, start, continuation


def _curve(cfg: Any, ds: Any) -> list[str]:
    """The continuation's curve table (tools/continuation_curve.py), with its step-0 validation."""
    step0 = cfg.optim.model_copy(update={"lr": 1e-12, "max_steps": 1, "warmup_steps": 0})
    train(cfg.model_copy(update={"optim": step0}), ds, run_dir=cfg.run.dir / "step0", echo=False)
    (cfg.run.dir / "data_stats.json").write_text(json.dumps(ds.stats))
    return curve_table(cfg.run.dir).splitlines()


def test_anchor_holds_the_pooled_vector_that_the_teachers_alone_move(tmp_path: Path) -> None:
    ds, start, continuation = _continuations(tmp_path)
    free_cfg, free = continuation("free", weight=0.0)
    assert not anchor_file(free_cfg, ds).exists()  # weight 0: the anchor is off, nothing computed
    held_cfg, held = continuation("held", weight=5.0)
    kept = torch.load(anchor_file(held_cfg, ds), weights_only=True)
    # The kept vectors are the start's own, in the items' order.
    assert _cos_to(start, kept["val"], ds.val) == pytest.approx(1.0, abs=1e-5)
    free_cos, held_cos = (_cos_to(r.last_checkpoint, kept["val"], ds.val) for r in (free, held))
    assert free_cos < 0.95, "the free continuation should have moved the pooled vector"
    assert held_cos > free_cos + 0.02, (free_cos, held_cos)
    # Logged: the held-out anchor cosine per epoch, and the term's parts per step.
    assert held.val["val_anchor_cosine"] == pytest.approx(held_cos, abs=1e-4)
    assert "val_anchor_cosine_std" in held.val and "val_anchor_loss" in held.val
    assert "val_anchor_cosine" not in free.val
    steps = [json.loads(x) for x in (held_cfg.run.dir / "train.jsonl").read_text().splitlines()]
    assert all("anchor.cos" in r for r in steps if r["kind"] == "step")
    # The continuation's curve (tools/continuation_curve.py) shows the distance to the anchor: 1 at step 0.
    table = _curve(held_cfg, ds)
    assert table[0].endswith("| cos anchor | std cos anchor |") and table[2].endswith("| 1.0000 | 1.0000 |")
    assert table[-1].endswith(
        f"| {held.val['val_anchor_cosine']:.4f} | {held.val['val_anchor_cosine_std']:.4f} |"
    )
    # val_loss stays the teachers' alone (weights 1 and 0.5), comparable with runs without an anchor.
    assert held.val["val_loss"] == pytest.approx(
        sum(
            v * w for v, w in zip(held.val["val_loss_by_teacher"].values(), (1 / 1.5, 0.5 / 1.5), strict=True)
        ),
        rel=1e-5,
    )


@torch.no_grad()
def _drift(ckpt: Path, start: Path, items: list) -> float:
    """Share of the start's held-out residue-state variance that a checkpoint's trunk has moved."""
    mine, theirs = (student_from_checkpoint(load_checkpoint(c)).eval() for c in (ckpt, start))
    sums = torch.zeros(2)
    for batch in make_batches([len(i.sequence) for i in items], 600, 0, 0):
        ids, mask = collate(items, batch, torch.device("cpu"))
        a, b = (m(ids, mask)["trunk_states"] for m in (mine, theirs))
        sums += torch.stack(residue_drift(a, b, mask))
    return float(sums[0] / sums[1])


def test_the_residue_term_holds_the_trunk_states_that_the_pooled_anchor_lets_move(tmp_path: Path) -> None:
    ds, start, continuation = _continuations(tmp_path)
    _, pooled_only = continuation("pooled", weight=1.0)
    cfg, both = continuation("both", weight=1.0, residue_weight=20.0)
    loose, held = (_drift(r.last_checkpoint, start, ds.val) for r in (pooled_only, both))
    assert loose > 0.05, "the pooled anchor alone should have let the residue states move"
    assert held < loose / 3, (loose, held)
    # Logged: the held-out term per epoch (what _drift measures), its value per step, and the curve.
    assert both.val["val_anchor_residue_loss"] == pytest.approx(held, rel=1e-3)
    assert "val_anchor_residue_loss" not in pooled_only.val
    steps = [json.loads(x) for x in (cfg.run.dir / "train.jsonl").read_text().splitlines()]
    assert all("anchor.residue" in r for r in steps if r["kind"] == "step")
    table = _curve(cfg, ds)
    assert table[0].endswith("| residue drift |") and table[2].endswith("| 0.0000 |")
    assert table[-1].endswith(f"| {both.val['val_anchor_residue_loss']:.4f} |")
    # val_loss stays the teachers' alone, so the two runs' curves compare.
    assert both.val["val_loss"] == pytest.approx(
        sum(
            v * w for v, w in zip(both.val["val_loss_by_teacher"].values(), (1 / 1.5, 0.5 / 1.5), strict=True)
        ),
        rel=1e-5,
    )


def test_anchor_vectors_are_kept_and_recomputed_for_other_weights(tmp_path: Path) -> None:
    base, ds = prepared_run(tmp_path, n=24, optim={"epochs": 1})
    first = train(base, ds, echo=False)
    # another run: a higher learning rate, so other weights
    rerun = {
        "run": base.run.model_copy(update={"dir": tmp_path / "o"}),
        "optim": base.optim.model_copy(update={"lr": 1e-2}),
    }
    other = train(base.model_copy(update=rerun), ds, echo=False)

    def anchored(model: Path, epochs: int, run: str = "a") -> Path:
        cfg = base.model_copy(
            update={
                "run": base.run.model_copy(update={"dir": tmp_path / run}),
                "optim": base.optim.model_copy(update={"epochs": epochs}),
                "anchor": base.anchor.model_copy(update={"model": model, "weight": 1.0}),
            }
        )
        train(cfg, ds, echo=False)
        return anchor_file(cfg, ds)

    kept = anchored(first.last_checkpoint, 1)
    stamp = kept.stat().st_mtime_ns
    # resumed, or another run (a step-0 validation) of the same anchor and sequences: read, not computed
    assert anchored(first.last_checkpoint, 2) == kept and anchored(first.last_checkpoint, 1, "b") == kept
    assert kept.stat().st_mtime_ns == stamp
    # Other anchor weights: their own vectors (a stale file would anchor the run to the wrong model).
    again = anchored(other.last_checkpoint, 1, "c")
    assert again != kept
    assert not torch.equal(
        torch.load(again, weights_only=True)["val"], torch.load(kept, weights_only=True)["val"]
    )


def test_anchor_settings_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"anchor: anchor.weight > 0 needs anchor.model"):
        prepared_run(tmp_path / "a", n=20, anchor={"weight": 1.0})
    with pytest.raises(ConfigError, match=r"anchor: anchor.residue_weight > 0 needs anchor.model"):
        prepared_run(tmp_path / "c", n=20, anchor={"residue_weight": 1.0})
    cfg, ds = prepared_run(tmp_path / "b", n=20, anchor={"weight": 1.0, "model": str(tmp_path / "no.pt")})
    with pytest.raises(ValueError, match=r"anchor\.model: .*no\.pt is neither a checkpoint"):
        train(cfg, ds, echo=False)
