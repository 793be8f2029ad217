"""AntiBERTy teacher: loads the wheel's BERT folder when fetched (skipped otherwise), dims, tokenization,
masking and cropping."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from teacher_checks import assert_padding_never_changes_a_result

from protembed_distill.teachers import antiberty
from protembed_distill.teachers.base import TeacherUnavailableError
from protembed_distill.teachers.hf import HFEncoderTeacher

# A human heavy-chain and a kappa light-chain variable domain (trastuzumab), and a short fragment with X.
HEAVY = "EVQLVESGGGLVQPGGSLRLSCAASGFNIKDTYIHWVRQAPGKGLEWVARIYPTNGYTRYADSVKGRFTISADTSKNTAYLQMNSLRAEDTAVYYCSR"
LIGHT = "DIQMTQSPSSLSASVGDRVTITCRASQDVNTAVAWYQQKPGKAPKLLIYSASFLYSGVPSRFSGSRSGTDFTLTISSLQPEDFATYYCQQHYTTPPT"
SEQS = [HEAVY, LIGHT, "CARXYW"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def teacher() -> HFEncoderTeacher:
    folder = antiberty.models_dir()
    if not (folder / "AntiBERTy_md_smooth" / "pytorch_model.bin").is_file():
        pytest.skip(f"AntiBERTy weights not under {folder}; run `protembed teachers fetch antiberty`")
    return antiberty.load()


def test_loads_with_right_dims(teacher: HFEncoderTeacher) -> None:
    assert (teacher.name, teacher.dim, teacher.per_residue_dim, teacher.max_length) == (
        "antiberty",
        512,
        512,
        510,
    )
    assert "antibod" in teacher.representation
    out = teacher.embed(SEQS, per_residue=True)
    assert out.per_protein.shape == (3, 512) and out.per_protein.dtype == np.float32
    assert out.per_residue is not None
    assert [r.shape for r in out.per_residue] == [(len(s), 512) for s in SEQS]
    assert np.isfinite(out.per_protein).all()


def test_every_encoder_weight_comes_from_the_checkpoint(teacher: HFEncoderTeacher) -> None:
    checkpoint = torch.load(
        antiberty.models_dir() / "AntiBERTy_md_smooth" / "pytorch_model.bin",
        map_location="cpu",
        weights_only=True,
    )
    ours = teacher.model.state_dict()
    expected = {k.removeprefix("bert."): v for k, v in checkpoint.items() if k.startswith("bert.")}
    expected = {k: v for k, v in expected.items() if not k.startswith("pooler.")}
    assert set(ours) - {"embeddings.position_ids", "embeddings.token_type_ids"} <= set(expected)
    for key, value in ours.items():
        if key in expected:
            assert torch.equal(value, expected[key].float()), key


def test_tokens_follow_antiberty_runner(teacher: HFEncoderTeacher) -> None:
    from transformers import BertTokenizer

    tokenizer = BertTokenizer.from_pretrained(antiberty.models_dir(), do_lower_case=False)
    ids, mask = teacher.tokens.encode(SEQS)
    ref = tokenizer([" ".join(s) for s in SEQS], return_tensors="pt", padding=True)
    assert torch.equal(ids, ref["input_ids"]) and torch.equal(mask, ref["attention_mask"])
    assert teacher.tokens.prefix == (tokenizer.cls_token_id,)
    assert teacher.tokens.suffix == (tokenizer.sep_token_id,)
    assert int(ids[2, 1 + 3]) == tokenizer.unk_token_id  # X is not in AntiBERTy's vocabulary


def test_padding_never_changes_a_result(teacher: HFEncoderTeacher) -> None:
    batched = assert_padding_never_changes_a_result(teacher, SEQS, atol=1e-4)
    np.testing.assert_allclose(batched.per_protein[1], batched.per_residue[1].mean(axis=0), atol=1e-5)


def test_longer_than_510_is_cropped_with_a_warning(teacher: HFEncoderTeacher) -> None:
    long = (HEAVY * 6)[:600]
    with pytest.warns(UserWarning, match=r"cropped to their first 510"):
        out = teacher.embed([long], per_residue=True)
    assert out.per_residue is not None and out.per_residue[0].shape == (510, 512)


def test_missing_weights_say_how_to_fetch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROTEMBED_TEACHER_DIR", str(tmp_path))
    with pytest.raises(TeacherUnavailableError, match="protembed teachers fetch antiberty"):
        antiberty.load()
