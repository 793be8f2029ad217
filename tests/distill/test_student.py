from __future__ import annotations

import pytest
import torch

from protembed.tokenizer import batch_encode
from protembed_distill.config import StudentConfig
from protembed_distill.student.model import Student, masked_mean
from protembed_distill.train.losses import Standardizer

torch.set_num_threads(1)


@pytest.fixture(
    params=[("sinusoidal", 0), ("learned", 0), ("sinusoidal", 48)], ids=["sinusoidal", "learned", "pool48"]
)
def model(request: pytest.FixtureRequest) -> Student:
    torch.manual_seed(0)
    positions, pool_dim = request.param
    cfg = StudentConfig(
        layers=2,
        d_model=32,
        heads=4,
        ffn=64,
        dropout=0.0,
        max_length=64,
        positions=positions,
        pool_dim=pool_dim,
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
    e = model.cfg.pool_dim or 32
    assert model.embedding_dim == e
    assert out["student"].shape == (2, e)
    assert out["teacher_a"].shape == (2, 7) and out["teacher_b"].shape == (2, 3)
    assert out["residue_states"].shape == (2, 9, 32)  # residue states keep d_model whatever pool_dim
    assert all(head.in_features == e for head in model.heads.values())
    assert model.parameter_count() == sum(p.numel() for p in model.parameters())


def test_pool_dim_pools_a_gelu_projection_of_the_residue_states() -> None:
    torch.manual_seed(0)
    base = dict(layers=1, d_model=16, heads=2, ffn=32, dropout=0.0, max_length=64)
    plain = Student(StudentConfig(**base), {"a": 5}).eval()
    wide = Student(StudentConfig(**base, pool_dim=40), {"a": 5}, {"a": 4}).eval()
    assert plain.embedding_dim == 16 and plain.pool_proj is None
    assert wide.embedding_dim == 40
    # same encoder; extra: the projection, wider teacher heads, and the residue head
    extra = 16 * 40 + 40 + (40 - 16) * 5 + (16 * 4 + 4)
    assert wide.parameter_count(include_residue_heads=True) - plain.parameter_count() == extra
    assert wide.residue_heads["a"].in_features == 16  # residue heads read d_model residue states
    enc = batch_encode(["MKTAYIAKQRQISF", "GSHM"])
    ids, mask = torch.from_numpy(enc.input_ids), torch.from_numpy(enc.attention_mask)
    with torch.no_grad():
        out = wide(ids, mask)
        states = wide.encode(ids, mask)
        proj = wide.pool_proj
        assert proj is not None
        expect = masked_mean(torch.nn.functional.gelu(proj[0](states)), mask)
    torch.testing.assert_close(out["residue_states"], states)
    torch.testing.assert_close(out["student"], expect)
    torch.testing.assert_close(out["teacher_a"], wide.heads["a"](expect))
