"""The bundled model's weights read back out of its ONNX graph into a PyTorch student: same outputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from protembed.artifact import read_model_card
from protembed.settings import default_model_dir
from protembed.tokenizer import batch_encode
from protembed_distill.config import StudentConfig
from protembed_distill.student.model import Student
from protembed_distill.student.onnx_weights import (
    ARCHITECTURE_KEYS,
    load_model_folder_weights,
    onnx_state_dict,
    without_residue_head,
)

torch.set_num_threads(1)


def _bundled() -> tuple[Path, StudentConfig, dict[str, int]]:
    """The bundled model folder, its student's config (from the card) and its teacher heads."""
    folder = default_model_dir()
    card = read_model_card(folder)
    arch = {k: card.architecture[k] for k in ARCHITECTURE_KEYS}
    cfg = StudentConfig(**arch, max_length=card.input.max_length, dropout=0.0)
    state = onnx_state_dict(folder / "model.onnx")
    dims = {
        k.split(".")[1]: int(v.shape[0])
        for k, v in state.items()
        if k.startswith("heads.") and k.endswith(".bias")
    }
    return folder, cfg, dims


def test_the_bundled_model_round_trips_into_pytorch() -> None:
    folder, cfg, dims = _bundled()
    model = Student(cfg, dims).eval()
    load_model_folder_weights(model, folder, cfg.model_dump(mode="json"), dims)

    seqs = ["MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQ", "MSDNE", "ACDEFGHIKLMNPQRSTVWY" * 12]
    enc = batch_encode(seqs)
    sess = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    ref = dict(
        zip(
            names,
            sess.run(None, {"input_ids": enc.input_ids, "attention_mask": enc.attention_mask}),
            strict=True,
        )
    )
    with torch.no_grad():
        out = model(torch.from_numpy(enc.input_ids), torch.from_numpy(enc.attention_mask))
    # A student built from the run's config has no per-residue head (it is trained after the trunk, on
    # the trunk it sits on, so a continuation does not carry it): its residue output is the trunk's states.
    head = "residue_adapter" in read_model_card(folder).architecture
    for name in names:
        if name in out and not (head and name == "residue_states"):
            assert np.abs(out[name].numpy() - ref[name]).max() <= 1e-4, name

    with pytest.raises(ValueError, match=r"different student: layers"):
        load_model_folder_weights(model, folder, {**cfg.model_dump(mode="json"), "layers": 2}, dims)
    with pytest.raises(ValueError, match=r"teacher heads .* this run needs"):
        load_model_folder_weights(model, folder, cfg.model_dump(mode="json"), {"unirep1900": 1900})


@pytest.mark.parametrize(("variant", "rel_tol"), [("fp16", 1e-3), ("int8", 1e-2)])
def test_the_smaller_files_alone_seed_nearly_the_same_weights(
    tmp_path: Path, variant: str, rel_tol: float
) -> None:
    # Where only model.json and the fp16 or int8 file were copied (a size-limited upload to a GPU box)
    import shutil

    folder, cfg, dims = _bundled()
    card = read_model_card(folder)
    entry = card.file(variant)
    assert entry is not None
    alone = tmp_path / "m"
    alone.mkdir()
    for name in ("model.json", entry.file):
        shutil.copy(folder / name, alone / name)
    fp32 = onnx_state_dict(folder / "model.onnx")
    model = Student(cfg, dims)
    load_model_folder_weights(model, alone, cfg.model_dump(mode="json"), dims)
    got = model.state_dict()
    for name, want in without_residue_head(fp32).items():  # fp16 rounding, or 8-bit quantization
        assert (got[name] - want).abs().max() <= rel_tol * want.abs().max() + 1e-6, name


def test_the_continuation_upload_seeds_the_same_trunk_in_a_third_of_the_bytes(tmp_path: Path) -> None:
    """FROM_MODEL's upload folder (the int8 file cut to the per-protein graph, tools/continuation_upload)
    seeds exactly the weights the whole int8 file does, and fits what the device call leaves (~6.5 MB)."""
    import shutil

    from protembed_distill.tools.continuation_upload import continuation_folder

    folder, cfg, dims = _bundled()
    entry = read_model_card(folder).file("int8")
    assert entry is not None
    whole = tmp_path / "whole"
    whole.mkdir()
    for name in ("model.json", entry.file):
        shutil.copy(folder / name, whole / name)
    (tmp_path / "cut").mkdir()
    (tmp_path / "cut" / "stale.onnx").write_bytes(b"an older model's file")
    cut = continuation_folder(folder, tmp_path / "cut")
    assert sorted(p.name for p in cut.parent.iterdir()) == sorted(["model.json", entry.file])
    assert cut.stat().st_size < 6_000_000 and cut.stat().st_size < (whole / entry.file).stat().st_size
    seeded = []
    for source in (whole, cut.parent):
        model = Student(cfg, dims)
        load_model_folder_weights(model, source, cfg.model_dump(mode="json"), dims)
        seeded.append(model.state_dict())
    for name, value in seeded[0].items():
        if not name.startswith("residue_heads."):  # training-only heads keep their random initialisation
            torch.testing.assert_close(seeded[1][name], value, rtol=0, atol=0, msg=name)


def test_a_foreign_graph_is_refused(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((4, 3), np.float32), "W")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
        [w],
    )
    path = tmp_path / "foreign.onnx"
    onnx.save(helper.make_model(graph), str(path))
    with pytest.raises(ValueError, match="not a graph exported by protembed export"):
        onnx_state_dict(path)
