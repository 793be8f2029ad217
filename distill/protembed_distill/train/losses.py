"""Distillation losses on standardized teacher embeddings.

Per teacher: ``cosine * (1 - cos) + mse * MSE (+ kl * T^2 KL(softmax(t/T) || softmax(s/T)))
(+ raw_cosine * (1 - cos in the teacher's original units))``.
Standardizing with training-set mean/std first matters: raw UniRep vectors share a large common
component, so a raw cosine is near 1 for any protein and teaches little; in standardized space the
loss has to get the protein-specific part right. MSE keeps scale (cosine alone is scale-free), and
the KL term is the MTDP option (distribution over embedding dimensions).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn import functional as F

from protembed_distill.config import LossConfig

__all__ = ["Standardizer", "embedding_loss", "residue_loss"]


@dataclass
class Standardizer:
    """Training-set statistics of one teacher space; std floored so constant dims do not blow up."""

    mean: Tensor
    std: Tensor

    @classmethod
    def fit(cls, x: Tensor, eps: float = 1e-3) -> Standardizer:
        x = x.double()
        return cls(x.mean(0).float(), x.std(0, unbiased=False).clamp(min=eps).float())

    def apply(self, x: Tensor) -> Tensor:
        return (x - self.mean.to(x.device)) / self.std.to(x.device)

    def invert(self, z: Tensor) -> Tensor:
        return z * self.std.to(z.device) + self.mean.to(z.device)


def embedding_loss(
    pred: Tensor, target: Tensor, cfg: LossConfig, standardizer: Standardizer | None = None
) -> tuple[Tensor, dict[str, float]]:
    """pred/target [B, dim] in standardized space; returns (loss, parts for logging).

    ``standardizer`` (the teacher's training-set statistics) is needed only for ``cfg.raw_cosine``.
    """
    pred = pred.float()
    parts: dict[str, float] = {}
    loss = pred.new_zeros(())
    if cfg.raw_cosine:
        if standardizer is None:
            raise ValueError("loss.raw_cosine needs the teacher's standardizer")
        raw = 1.0 - F.cosine_similarity(standardizer.invert(pred), standardizer.invert(target), dim=-1).mean()
        loss = loss + cfg.raw_cosine * raw
        parts["raw_cos"] = float(raw.detach())
    if cfg.cosine:
        cos = 1.0 - F.cosine_similarity(pred, target, dim=-1).mean()
        loss = loss + cfg.cosine * cos
        parts["cos"] = float(cos.detach())
    if cfg.mse:
        mse = F.mse_loss(pred, target)
        loss = loss + cfg.mse * mse
        parts["mse"] = float(mse.detach())
    if cfg.kl:
        t = cfg.kl_temperature
        kl = F.kl_div(
            F.log_softmax(pred / t, dim=-1),
            F.log_softmax(target / t, dim=-1),
            log_target=True,
            reduction="batchmean",
        ) * (t * t)
        loss = loss + cfg.kl * kl
        parts["kl"] = float(kl.detach())
    return loss, parts


def residue_loss(pred: Tensor, target: Tensor, mask: Tensor, cfg: LossConfig) -> Tensor:
    """Per-residue cosine + MSE averaged over real residues; pred/target [B, L, dim], mask [B, L]."""
    m = mask.to(torch.float32)
    denom = m.sum().clamp(min=1.0)
    pred = pred.float()
    loss = pred.new_zeros(())
    if cfg.cosine:
        cos = 1.0 - F.cosine_similarity(pred, target, dim=-1)
        loss = loss + cfg.cosine * (cos * m).sum() / denom
    if cfg.mse or not cfg.cosine:
        mse = ((pred - target) ** 2).mean(-1)
        loss = loss + max(cfg.mse, 1.0 if not cfg.cosine else 0.0) * (mse * m).sum() / denom
    return loss
