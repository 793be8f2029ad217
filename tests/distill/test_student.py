from __future__ import annotations

import pytest
import torch

from protembed.tokenizer import batch_encode
from protembed_distill.config import StudentConfig
from protembed_distill.losses import Standardizer
from protembed_distill.student import Student, masked_mean

torch.set_num_threads(1)


@pytest.fixture(params=["sinusoidal", "learned"])
def model(request: pytest.FixtureRequest) -> Student:
    torch.manual_seed(0)
    cfg = StudentConfig(
        layers=2, d_model=32, heads=4, ffn=64, dropout=0.0, max_length=64, positions=request.param
    )
    return Student(cfg, {"a": 7, "b": 3}).eval()


def test_padding_never_changes_pooled_vectors(model: Student) -> None:
    seqs = ["MKTAYIAKQRQISFVKSHFSRQ", "ACDE", "WWWWYYYYKKKK"]
    alone = [
        model(*map(torch.from_numpy, (e.input_ids, e.attention_mask)))
        for e in map(lambda s: batch_encode([s]), seqs)
    ]
    enc = batch_encode(seqs, pad_to=40)
    ids = torch.from_numpy(enc.input_ids)
    mask = torch.from_numpy(enc.attention_mask)
    ids[mask == 0] = 5  # garbage ids under the pad positions must not matter either
    batched = model(ids, mask)
    for i, single in enumerate(alone):
        for key in ("student", "teacher_a", "teacher_b"):
            torch.testing.assert_close(batched[key][i], single[key][0], atol=2e-5, rtol=1e-5)
        n = len(seqs[i])
        torch.testing.assert_close(
            batched["residue_states"][i, :n], single["residue_states"][0], atol=2e-5, rtol=1e-5
        )


def test_masked_mean_ignores_pads() -> None:
    states = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    mask = torch.tensor([[1, 1, 0]])
    torch.testing.assert_close(masked_mean(states, mask), torch.tensor([[2.0, 3.0]]))


def test_fold_standardization_gives_original_units(model: Student) -> None:
    enc = batch_encode(["MKTAYIAKQ", "GGGSSA"])
    x = (torch.from_numpy(enc.input_ids), torch.from_numpy(enc.attention_mask))
    std_out = model(*x)
    stats = {
        "a": Standardizer(torch.randn(7), torch.rand(7) + 0.5),
        "b": Standardizer(torch.randn(3), torch.rand(3) + 0.5),
    }
    model.fold_standardization({n: (s.mean, s.std) for n, s in stats.items()})
    folded = model(*x)
    for n, s in stats.items():
        torch.testing.assert_close(
            folded[f"teacher_{n}"], s.invert(std_out[f"teacher_{n}"]), atol=1e-5, rtol=1e-5
        )
    torch.testing.assert_close(folded["student"], std_out["student"])


def test_output_shapes_and_parameter_count(model: Student) -> None:
    enc = batch_encode(["MKTAYIAKQ", "GG"])
    out = model(torch.from_numpy(enc.input_ids), torch.from_numpy(enc.attention_mask))
    assert out["student"].shape == (2, 32)
    assert out["teacher_a"].shape == (2, 7) and out["teacher_b"].shape == (2, 3)
    assert out["residue_states"].shape == (2, 9, 32)
    assert model.parameter_count() == sum(p.numel() for p in model.parameters())
