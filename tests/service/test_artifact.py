"""The model artifact contract: card schema, checksums, token table and graph outputs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from protembed import tokenizer
from protembed.artifact import load_model, read_model_card, sha256_file, write_model_card
from protembed.errors import ModelArtifactError
from tiny_model import build_tiny_model


@pytest.fixture
def model_copy(tiny_model_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_model_dir, tmp_path / "m"))


def test_writer_fills_checksums_and_loader_accepts(model_copy: Path) -> None:
    card = json.loads((model_copy / "model.json").read_text())
    entry = card["files"][0]
    assert entry["sha256"] == sha256_file(model_copy / "model.onnx")
    assert entry["bytes"] == (model_copy / "model.onnx").stat().st_size
    assert card["format"] == "protembed-model/1" and card["input"]["tokens"] == list(tokenizer.TOKENS)
    loaded = load_model(model_copy, "int8")
    assert loaded.onnx_path.name == "model.int8.onnx" and loaded.card.default_output == "student"
    assert [o.name for o in loaded.card.per_protein_outputs()] == ["student", "alpha", "beta"]


def test_corrupt_file_is_refused_naming_it(model_copy: Path) -> None:
    path = model_copy / "model.int8.onnx"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # same size, different content
    path.write_bytes(bytes(data))
    with pytest.raises(ModelArtifactError, match=r"model\.int8\.onnx: sha256 .* differs"):
        load_model(model_copy, "fp32")  # every listed file is verified, not only the served one


def test_truncated_and_missing_files_are_named(model_copy: Path) -> None:
    (model_copy / "model.onnx").write_bytes(b"short")
    with pytest.raises(ModelArtifactError, match=r"model\.onnx: size 5 bytes differs"):
        load_model(model_copy)
    (model_copy / "model.onnx").unlink()
    with pytest.raises(ModelArtifactError, match=r"model\.onnx: listed in model.json .* but missing"):
        load_model(model_copy)


def test_token_table_mismatch_is_refused(model_copy: Path) -> None:
    card = json.loads((model_copy / "model.json").read_text())
    card["input"]["tokens"] = list(reversed(card["input"]["tokens"]))
    (model_copy / "model.json").write_text(json.dumps(card))
    with pytest.raises(ModelArtifactError, match=r"do not match protembed\.tokenizer"):
        load_model(model_copy)
    with pytest.raises(ModelArtifactError, match="do not match"):
        write_model_card(model_copy, card)


def test_output_missing_from_graph_is_refused(model_copy: Path) -> None:
    card = json.loads((model_copy / "model.json").read_text())
    card["outputs"].append(
        {
            "name": "gamma",
            "onnx_output": "teacher_gamma",
            "dim": 4,
            "level": "per_protein",
            "space": "teacher:gamma",
        }
    )
    write_model_card(model_copy, card)
    with pytest.raises(ModelArtifactError, match=r"model\.onnx: graph lacks output\(s\) \['teacher_gamma'\]"):
        load_model(model_copy)


def test_unknown_variant_and_bad_card(model_copy: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelArtifactError, match=r"no variant 'fp16'; available: \['fp32', 'int8'\]"):
        load_model(model_copy, "fp16")
    (model_copy / "model.json").write_text("{not json")
    with pytest.raises(ModelArtifactError, match=r"model\.json: not readable JSON"):
        read_model_card(model_copy)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelArtifactError, match="model card not found"):
        load_model(empty)


def test_default_output_must_be_per_protein(tmp_path: Path) -> None:
    folder = build_tiny_model(tmp_path / "x", teachers={})
    card = json.loads((folder / "model.json").read_text())
    card["default_output"] = "residues"
    with pytest.raises(ModelArtifactError, match="default_output 'residues' must name a per_protein output"):
        write_model_card(folder, card)
