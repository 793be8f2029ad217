"""The anchor's targets: a frozen earlier student's pooled vectors of the training and validation
sequences ([anchor] in the config), for a self-distillation term beside the teachers'.

Why a term and not only a blend of weights: continuations on the teachers' targets raise the held-out
cosine to the teachers but move directions of the embedding that downstream probes use and the
teacher-space cosine barely weighs (capsid and deepsol lost ~2%: reports/distill/cpu_mix.md,
cpu_line.md); a blend halfway back keeps half of each. The term lets the teachers move what they ask for.

The vectors are computed once, in float32 (the model is frozen and the sequences are fixed crops), and
kept beside the teacher cache under a name that hashes the anchor's weights and the sequences, so every
epoch, a resumed run and the continuation's step-0 validation read them instead of running the anchor.
Like the teachers' targets they are standardized by their training-split statistics, so that the term
weighs the protein-specific part of the vector rather than its shared mean.

The per-residue term (``anchor.residue_weight``) cannot be kept that way: the trunk's states of every
training residue are GBs. The frozen model runs beside the student on each batch instead (same crops,
no gradient): one more forward pass per batch, without the backward pass that makes up most of a step.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from protembed_distill.config import DistillConfig
from protembed_distill.data.dataset import Dataset, Item
from protembed_distill.student.model import Student
from protembed_distill.train.batches import collate, make_batches
from protembed_distill.train.checkpoint import atomic_save, load_weights
from protembed_distill.train.losses import Standardizer

__all__ = ["AnchorTargets", "anchor_file", "load_anchor", "pooled_vectors", "residue_drift"]


@dataclass
class AnchorTargets:
    """The anchor's pooled vectors, standardized by the training split's statistics."""

    train: Tensor  # [N_train, dim]
    val: Tensor  # [N_val, dim]
    standardizer: Standardizer
    model: Student | None = None  # frozen, for the per-residue term (anchor.residue_weight > 0)

    @torch.no_grad()
    def trunk_states(self, ids: Tensor, mask: Tensor) -> Tensor:
        """The frozen model's final residue states of a batch, float32 [B, L, d]."""
        assert self.model is not None, "anchor.residue_weight is 0: no frozen model kept"
        return self.model(ids, mask)["trunk_states"].float()


def residue_drift(states: Tensor, anchor: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """The per-residue term's numerator and denominator over a batch's real residues: the squared
    distance of ``states`` to the anchor's, and the anchor's squared spread about its own mean state.
    Their ratio is the share of the anchor's residue-state variance lost (0 = the same states, 1 = no
    better than the mean state); the mean is taken out because the final LayerNorm's shared offset is
    not what the head reads residue by residue. Ratios of sums, so a validation set adds them up."""
    m = mask.to(torch.float32).unsqueeze(-1)
    n = m.sum().clamp(min=1.0)
    mean = (anchor * m).sum(dim=(0, 1)) / n
    sse = (((states.float() - anchor) ** 2) * m).sum()
    spread = (((anchor - mean) ** 2) * m).sum()
    return sse, spread


@torch.no_grad()
def pooled_vectors(model: Student, items: Sequence[Item], batch_tokens: int, device: torch.device) -> Tensor:
    """``model``'s pooled vector of every item, in the items' order, float32 on the CPU."""
    model.eval()
    rows: list[Tensor] = []
    order: list[int] = []
    for batch in make_batches([len(i.sequence) for i in items], batch_tokens, 0, 0):
        ids, mask = collate(items, batch, device)
        rows.append(model(ids, mask)["student"].float().cpu())
        order.extend(batch)
    if not rows:
        return torch.empty(0, 0)
    out = torch.empty(len(items), rows[0].shape[1])
    out[torch.tensor(order)] = torch.cat(rows)
    return out


def _fingerprint(cfg: DistillConfig, ds: Dataset) -> str:
    """What the kept vectors depend on: the anchor's weights and the sequences, in order."""
    h = hashlib.sha256()
    path = Path(cfg.anchor.model or "")
    # a missing path hashes to nothing here, and load_weights then says what is wrong with it
    files = [path] if path.is_file() else []
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        h.update(f.name.encode() + f.read_bytes())
    for split in (ds.train, ds.val):
        h.update(b"|split|")
        for item in split:
            h.update(item.sequence.encode() + b"\n")
    return h.hexdigest()


def anchor_file(cfg: DistillConfig, ds: Dataset) -> Path:
    """Where this anchor's vectors of these sequences are kept (a sibling of the teacher cache)."""
    return cfg.teacher_cache_dir().parent / "anchor" / f"{_fingerprint(cfg, ds)[:24]}.pt"


def load_anchor(
    cfg: DistillConfig,
    ds: Dataset,
    teacher_dims: dict[str, int],
    residue_dims: dict[str, int],
    standardizers: dict[str, Standardizer],
    device: torch.device,
) -> AnchorTargets | None:
    """The anchor's targets for this run (None when both of its weights are 0): the pooled vectors read
    from :func:`anchor_file` when kept, else computed and kept there; and the frozen model itself when
    ``anchor.residue_weight`` is on."""
    if not cfg.anchor.on or cfg.anchor.model is None:
        return None
    path = anchor_file(cfg, ds)
    kept = torch.load(path, map_location="cpu", weights_only=True) if path.is_file() else None
    model: Student | None = None
    if kept is None or cfg.anchor.residue_weight > 0:
        model = Student(cfg.student, teacher_dims, residue_dims).to(device)
        load_weights(model, Path(cfg.anchor.model), cfg, teacher_dims, standardizers, "anchor.model")
        model.eval().requires_grad_(False)
    if kept is None:
        assert model is not None
        kept = {
            "train": pooled_vectors(model, ds.train, cfg.optim.batch_tokens, device),
            "val": pooled_vectors(model, ds.val, cfg.optim.batch_tokens, device),
        }
        atomic_save(kept, path)
    std = Standardizer.fit(kept["train"])
    frozen = model if cfg.anchor.residue_weight > 0 else None
    return AnchorTargets(std.apply(kept["train"]), std.apply(kept["val"]), std, frozen)
