"""ESM-2 and ProtT5 loaders on tiny randomly initialised checkpoints written with save_pretrained.

The real checkpoints are far too big for CI; these folders have the same layout (config.json, weights,
tokenizer files), so the same loading, tokenization and pooling code runs. The ESM-2 folder is saved
from ``EsmForMaskedLM`` like Meta's checkpoints, so loading the ``EsmModel`` out of it is exercised. The
ProtT5 tokenizer is a tokenizers-backed ``T5Tokenizer`` with a residue vocabulary defined here (the real
one is read from ``spiece.model``, which needs the sentencepiece package); it follows ProtT5's scheme:
one "▁X"-style piece per residue, ``</s>`` appended.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from teacher_checks import assert_padding_never_changes_a_result
from transformers import EsmConfig, EsmForMaskedLM, EsmTokenizer, T5Config, T5EncoderModel, T5Tokenizer

from protembed_distill.teachers import hf
from protembed_distill.teachers.base import TeacherUnavailableError

# ESM-2's alphabet in its own order (esm.data.Alphabet for ESM-1b/2).
ESM_TOKENS = [
    "<cls>", "<pad>", "<eos>", "<unk>", "L", "A", "G", "V", "S", "E", "R", "T", "I", "D", "P", "K", "Q", "N",
    "F", "Y", "M", "H", "W", "C", "X", "B", "U", "Z", "O", ".", "-", "<null_1>", "<mask>",
]  # fmt: skip
PROTT5_RESIDUES = "ALGVSREDTIPKFQNYMHWCXBZUO"
SEQS = ["MKTAYIAKQR", "GSX", "ACDEFGHIKLMNPQRSTVWYACDEFGHIKL", "W"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def esm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tiny_esm2")
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(ESM_TOKENS) + "\n")
    config = EsmConfig(
        vocab_size=len(ESM_TOKENS), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=1026, position_embedding_type="rotary",
        pad_token_id=1, mask_token_id=32, token_dropout=True, emb_layer_norm_before=False,
    )  # fmt: skip
    torch.manual_seed(0)
    EsmForMaskedLM(config).save_pretrained(folder)
    EsmTokenizer(vocab_file=str(vocab)).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def t5_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tiny_prott5")
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [(f"▁{c}", -1.0) for c in PROTT5_RESIDUES]
    tokenizer = T5Tokenizer(vocab=pieces, extra_ids=100)
    config = T5Config(
        vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, feed_forward_proj="gated-gelu", pad_token_id=0, eos_token_id=1,
    )  # fmt: skip
    torch.manual_seed(0)
    T5EncoderModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def esm2(esm_dir: Path) -> hf.HFEncoderTeacher:
    return hf.load_esm2(model=esm_dir)


@pytest.fixture(scope="module")
def prott5(t5_dir: Path) -> hf.HFEncoderTeacher:
    return hf.load_prott5(model=t5_dir)


@pytest.fixture(params=["esm2", "prott5"])
def teacher(request: pytest.FixtureRequest) -> hf.HFEncoderTeacher:
    teacher: hf.HFEncoderTeacher = request.getfixturevalue(request.param)
    return teacher


def test_loads_with_right_dims(teacher: hf.HFEncoderTeacher) -> None:
    assert teacher.dim == teacher.per_residue_dim == 32
    out = teacher.embed(SEQS, per_residue=True)
    assert out.per_protein.shape == (len(SEQS), 32) and out.per_protein.dtype == np.float32
    assert out.per_residue is not None
    assert [r.shape for r in out.per_residue] == [(len(s), 32) for s in SEQS]
    assert all(r.dtype == np.float32 for r in out.per_residue)
    assert not teacher.model.training


def test_padding_never_changes_a_result(teacher: hf.HFEncoderTeacher) -> None:
    assert_padding_never_changes_a_result(teacher, SEQS, atol=1e-5)


def test_per_protein_is_the_mean_over_residues_only(teacher: hf.HFEncoderTeacher) -> None:
    seq = SEQS[0]
    ids, mask = teacher.tokens.encode([seq])
    with torch.inference_mode():
        states = teacher.model(input_ids=ids, attention_mask=mask).last_hidden_state[0].numpy()
    start = len(teacher.tokens.prefix)
    out = teacher.embed([seq])
    np.testing.assert_allclose(out.per_protein[0], states[start : start + len(seq)].mean(axis=0), atol=1e-6)
    # and it differs from a mean that includes the special tokens, so the test can tell them apart
    assert np.abs(out.per_protein[0] - states.mean(axis=0)).max() > 1e-4


def test_esm2_ids_match_its_tokenizer(esm2: hf.HFEncoderTeacher, esm_dir: Path) -> None:
    tokenizer = EsmTokenizer.from_pretrained(esm_dir)
    ids, mask = esm2.tokens.encode(SEQS)
    ref = tokenizer(SEQS, padding=True, return_tensors="pt")
    assert torch.equal(ids, ref["input_ids"]) and torch.equal(mask, ref["attention_mask"])
    assert esm2.tokens.prefix == (tokenizer.cls_token_id,) and esm2.tokens.suffix == (tokenizer.eos_token_id,)


def test_prott5_ids_match_its_tokenizer(prott5: hf.HFEncoderTeacher, t5_dir: Path) -> None:
    tokenizer = T5Tokenizer.from_pretrained(t5_dir)
    ids, mask = prott5.tokens.encode(SEQS)
    ref = tokenizer([" ".join(s) for s in SEQS], padding=True, return_tensors="pt")
    assert torch.equal(ids, ref["input_ids"]) and torch.equal(mask, ref["attention_mask"])
    assert prott5.tokens.prefix == () and prott5.tokens.suffix == (tokenizer.eos_token_id,)


def test_prott5_reads_rare_residues_as_x(prott5: hf.HFEncoderTeacher) -> None:
    out = prott5.embed(["MKUZOB", "MKXXXX"])
    np.testing.assert_allclose(out.per_protein[0], out.per_protein[1], atol=1e-6)


def test_longer_than_max_length_is_cropped_with_a_warning(esm_dir: Path) -> None:
    teacher = hf.load_esm2(model=esm_dir, max_length=8)
    with pytest.warns(UserWarning, match=r"cropped to their first 8.*#1 \(12\)"):
        out = teacher.embed(["MKT", "MKTAYIAKQRQI"], per_residue=True)
    assert out.per_residue is not None and out.per_residue[1].shape == (8, 32)
    np.testing.assert_allclose(out.per_protein[1], teacher.embed(["MKTAYIAK"]).per_protein[0], atol=1e-5)


def test_bad_sequence_is_named(esm2: hf.HFEncoderTeacher) -> None:
    with pytest.raises(ValueError, match="sequence 1 has invalid character 'J' at position 2"):
        esm2.embed(["MK", "MJK"])


def test_missing_folder_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(TeacherUnavailableError, match="not a model folder"):
        hf.load_esm2(model=tmp_path / "nope")


def test_uncached_hub_name_never_downloads(tmp_path: Path) -> None:
    # An empty cache and no download=True: must fail fast with instructions, not reach the network.
    with pytest.raises(TeacherUnavailableError, match="hf download facebook/esm2_t33_650M_UR50D"):
        hf.load_esm2(model="facebook/esm2_t6_8M_UR50D", cache_dir=tmp_path)
    with pytest.raises(TeacherUnavailableError, match="sentencepiece"):
        hf.load_prott5(cache_dir=tmp_path)


def test_wrong_kind_of_checkpoint_is_refused(t5_dir: Path) -> None:
    with pytest.raises(TeacherUnavailableError):
        hf.load_esm2(model=t5_dir)


def test_load_by_name(esm_dir: Path) -> None:
    assert hf.load("esm2", model=esm_dir).name == "esm2"
    with pytest.raises(ValueError, match="not 'esm3'"):
        hf.load("esm3")


def test_a_tokenizer_without_its_vocabulary_is_refused() -> None:
    # e.g. transformers 5's BertTokenizer(vocab_file=...) silently drops the file: every residue -> [UNK]
    from transformers import BertTokenizer

    empty = BertTokenizer(vocab={"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3}, do_lower_case=False)
    with pytest.raises(ValueError, match="distinct known ids"):
        hf.ResidueTokens.from_tokenizer(empty)
