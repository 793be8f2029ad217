"""The distillation loss terms, on vectors whose answer is known."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from protembed_distill.config import LossConfig
from protembed_distill.train.losses import Standardizer, embedding_loss


def test_raw_cosine_is_measured_in_the_teachers_units() -> None:
    torch.manual_seed(0)
    # A teacher whose vectors share a large common part, as UniRep's do: raw cosines are high even for
    # a poor prediction, standardized ones are not.
    std = Standardizer(mean=torch.full((16,), 5.0), std=torch.full((16,), 0.5))
    target = torch.randn(8, 16)
    pred = torch.randn(8, 16, requires_grad=True)
    loss, parts = embedding_loss(pred, target, LossConfig(cosine=0, mse=0, raw_cosine=1.0), std)
    with torch.no_grad():
        expected = float(1 - F.cosine_similarity(std.invert(pred), std.invert(target), dim=-1).mean())
        standardized = float(1 - F.cosine_similarity(pred, target, dim=-1).mean())
    assert float(loss.detach()) == pytest.approx(expected) and parts["raw_cos"] == pytest.approx(expected)
    assert expected < 0.1 < standardized
    loss.backward()
    assert pred.grad is not None and float(pred.grad.abs().sum()) > 0

    both, parts = embedding_loss(pred, target, LossConfig(raw_cosine=0.5), std)
    assert set(parts) == {"raw_cos", "cos", "mse"}
    terms = 0.5 * parts["raw_cos"] + parts["cos"] + parts["mse"]
    assert float(both.detach()) == pytest.approx(terms, rel=1e-5)


def test_raw_cosine_needs_the_statistics_and_counts_as_a_term() -> None:
    with pytest.raises(ValueError, match="standardizer"):
        embedding_loss(torch.ones(2, 3), torch.ones(2, 3), LossConfig(raw_cosine=1.0))
    LossConfig(cosine=0, mse=0, raw_cosine=1.0)  # a loss of that term alone is a loss
    with pytest.raises(ValueError, match="raw_cosine"):
        LossConfig(cosine=0, mse=0)
