from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from distill_fakes import FakeTeacher, fake_teachers, loader, random_sequences, tiny_config, write_corpus

from protembed.tokenizer import batch_encode
from protembed_distill.data.dataset import prepare_dataset
from protembed_distill.export.model_folder import export_checkpoint
from protembed_distill.export.onnx import export_onnx, parity
from protembed_distill.student.model import Student
from protembed_distill.teacher_cache import build_caches
from protembed_distill.train.checkpoint import load_checkpoint, student_from_checkpoint
from protembed_distill.train.losses import Standardizer
from protembed_distill.train.trainer import train

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("export")
    corpus = write_corpus(tmp / "c.fasta", random_sequences(30, 10, 90, seed=8))
    teachers = {"fake_nc": FakeTeacher("fake_nc", 12, 1), "fake_b": fake_teachers()["fake_b"]}
    cfg = tiny_config(
        tmp,
        corpus,
        optim={"epochs": 1},
        teachers=[{"name": "fake_nc"}, {"name": "fake_b", "per_residue": True}],
    )
    ds = prepare_dataset(cfg.data, cfg.run.dir, log=False)
    build_caches(cfg, ds.train + ds.val, loader=loader(**teachers), progress=False)
    return train(cfg, ds, echo=False).best_checkpoint


def _run(path: Path, seqs: list[str]) -> dict[str, np.ndarray]:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    enc = batch_encode(seqs)
    names = [o.name for o in sess.get_outputs()]
    return dict(
        zip(
            names,
            sess.run(None, {"input_ids": enc.input_ids, "attention_mask": enc.attention_mask}),
            strict=True,
        )
    )


def test_graph_runs_on_shapes_unlike_the_export_example(tmp_path: Path) -> None:
    torch.manual_seed(0)
    from protembed_distill.config import StudentConfig

    model = Student(
        StudentConfig(layers=2, d_model=32, heads=4, ffn=64, dropout=0.0, max_length=300), {"t": 5}
    ).eval()
    path = tmp_path / "m.onnx"
    assert export_onnx(model, path) == ["student", "teacher_t", "residue_states"]
    assert parity(model, path) <= 1e-4  # batches of 1, 3, 5, 7 rows and lengths up to 250
    out = _run(path, ["M" * 280, "ACD"])
    assert out["residue_states"].shape == (2, 280, 32) and out["teacher_t"].shape == (2, 5)


def test_export_writes_a_valid_artifact(checkpoint: Path, tmp_path: Path) -> None:
    from protembed.artifact import read_model_card

    out = tmp_path / "models" / "tiny"
    export_checkpoint(checkpoint, out, model_id="tiny-student", version="0.1.0")
    assert {f.name for f in out.iterdir()} == {
        "model.onnx",
        "model.int8.onnx",
        "model.fp16.onnx",
        "model.json",
        "reference.npz",  # the PyTorch student's vectors the server checks itself against at warm-up
    }
    parsed = read_model_card(out)
    assert parsed.id == "tiny-student"
    files = {f.variant: f for f in parsed.files}
    assert files["fp32"].parity_max_abs_diff is not None and files["fp32"].parity_max_abs_diff <= 1e-4
    for v in ("int8", "fp16"):
        cos = files[v].metrics["cosine_to_fp32"]
        assert cos["student"]["mean"] > 0.98, (v, cos)
        assert files[v].parity_max_abs_diff is not None
    assert [o.name for o in parsed.outputs] == ["student", "fake_nc", "fake_b", "residues"]
    assert parsed.licence["weights"].startswith("non-commercial")
    assert parsed.training_data["train_sequences"] > 0
    assert "val_cosine" in parsed.metrics and set(parsed.metrics["val_cosine"]) == {"fake_nc", "fake_b"}
    assert json.loads((out / "model.json").read_text())["files"][0]["sha256"] == files["fp32"].sha256
    assert parsed.reference is not None and set(parsed.reference.tolerance) == {"fp32", "int8", "fp16"}

    # Teacher heads answer in the teacher's original units: un-standardized PyTorch output.
    ckpt = load_checkpoint(checkpoint)
    model = student_from_checkpoint(ckpt).eval()
    seqs = ["MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQ", "GSHM"]
    enc = batch_encode(seqs)
    with torch.no_grad():
        ref = model(torch.from_numpy(enc.input_ids), torch.from_numpy(enc.attention_mask))
    got = _run(out / "model.onnx", seqs)
    for name, (mean, std) in ckpt["standardizers"].items():
        expect = Standardizer(mean, std).invert(ref[f"teacher_{name}"]).numpy()
        np.testing.assert_allclose(got[f"teacher_{name}"], expect, atol=1e-4)
    np.testing.assert_allclose(got["student"], ref["student"].numpy(), atol=1e-4)


def test_card_max_length_is_the_training_crop(checkpoint: Path, tmp_path: Path) -> None:
    from protembed.artifact import read_model_card

    export_checkpoint(checkpoint, tmp_path / "m", int8=False, fp16=False)
    card = read_model_card(tmp_path / "m")
    assert card.input.max_length == load_checkpoint(checkpoint)["config"]["data"]["max_length"] == 80
    assert [f.variant for f in card.files] == ["fp32"]


def test_pool_dim_student_exports_with_parity(tmp_path: Path) -> None:
    from protembed_distill.config import StudentConfig

    torch.manual_seed(0)
    model = Student(
        StudentConfig(layers=1, d_model=16, heads=2, ffn=32, dropout=0.0, max_length=300, pool_dim=40),
        {"t": 5},
    ).eval()
    path = tmp_path / "m.onnx"
    assert export_onnx(model, path) == ["student", "teacher_t", "residue_states"]
    assert parity(model, path) <= 1e-4
    out = _run(path, ["M" * 120, "ACD", "GSHMKT"])
    assert out["student"].shape == (3, 40) and out["teacher_t"].shape == (3, 5)
    assert out["residue_states"].shape == (3, 120, 16)


def test_pool_dim_checkpoint_exports_its_embedding_width(tmp_path: Path) -> None:
    from protembed.artifact import read_model_card

    corpus = write_corpus(tmp_path / "c.fasta", random_sequences(20, 10, 60, seed=3))
    cfg = tiny_config(
        tmp_path,
        corpus,
        optim={"epochs": 1},
        student={"layers": 1, "d_model": 16, "heads": 2, "ffn": 32, "pool_dim": 24},
    )
    ds = prepare_dataset(cfg.data, cfg.run.dir, log=False)
    build_caches(cfg, ds.train + ds.val, loader=loader(**fake_teachers()), progress=False)
    ckpt = train(cfg, ds, echo=False).best_checkpoint
    out = tmp_path / "model"
    card = export_checkpoint(ckpt, out, int8=False, fp16=True)
    parsed = read_model_card(out)
    dims = {o.name: o.dim for o in parsed.outputs}
    assert dims == {"student": 24, "fake_a": 12, "fake_b": 6, "residues": 16}
    assert card["architecture"]["pool_dim"] == 24 and card["architecture"]["d_model"] == 16
    assert "24-wide GELU projection" in card["architecture"]["pooling"]
    files = {f.variant: f for f in parsed.files}
    assert files["fp32"].parity_max_abs_diff is not None and files["fp32"].parity_max_abs_diff <= 1e-4
    assert files["fp16"].metrics["cosine_to_fp32"]["student"]["mean"] > 0.98
    got = _run(out / "model.onnx", ["MKTAYIAKQRQISFVKSHFSRQ", "GSHM"])
    assert got["student"].shape == (2, 24) and got["residue_states"].shape == (2, 22, 16)
    for spec in parsed.outputs:  # what the server checks at warm-up: the card's dims are the graph's
        assert got[spec.onnx_output].shape[-1] == spec.dim, spec.name
    model = student_from_checkpoint(load_checkpoint(ckpt)).eval()
    enc = batch_encode(["MKTAYIAKQRQISFVKSHFSRQ", "GSHM"])
    with torch.no_grad():
        ref = model(torch.from_numpy(enc.input_ids), torch.from_numpy(enc.attention_mask))
    np.testing.assert_allclose(got["student"], ref["student"].numpy(), atol=1e-4)


def test_export_refuses_a_variant_whose_vectors_depend_on_batch_mates(
    checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The int8 export of before (one activation scale per padded batch) fails the export's check."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from protembed_distill.export import model_folder
    from protembed_distill.export.onnx import ExportError

    def dynamic_int8(src: Path, dst: Path, calibration: list[str], threads: int = 1) -> None:
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"])

    monkeypatch.setattr(model_folder, "quantize_int8", dynamic_int8)
    with pytest.raises(ExportError, match=r"depend on batch-mates .*: model\.int8\.onnx"):
        export_checkpoint(checkpoint, tmp_path / "m", fp16=False)
    card = export_checkpoint(checkpoint, tmp_path / "ok", fp16=False, int8=False)
    assert card["files"][0]["metrics"]["batch_dependence_max_abs_diff"] <= 1e-5


def test_model_files_over_the_size_limit_are_refused_naming_the_folder(
    checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One rule for every path that writes a model folder (a fresh export here; rebuild_variants calls
    the same check): the folder's files must fit MAX_BYTES."""
    from protembed_distill.export import model_folder
    from protembed_distill.export.onnx import ExportError

    card = export_checkpoint(checkpoint, tmp_path / "ok", fp16=False)
    size = sum((tmp_path / "ok" / f["file"]).stat().st_size for f in card["files"])
    model_folder.check_model_files(tmp_path / "ok", card["files"])  # within the real limit
    monkeypatch.setattr(model_folder, "MAX_BYTES", size - 1)
    with pytest.raises(ExportError, match=r"/ok: model files are .* MiB, over the 0 MiB limit"):
        model_folder.check_model_files(tmp_path / "ok", card["files"])
    with pytest.raises(ExportError, match=r"/big: model files are .* over the"):
        export_checkpoint(checkpoint, tmp_path / "big", fp16=False)
