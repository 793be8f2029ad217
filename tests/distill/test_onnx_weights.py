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
from protembed_distill.onnx_weights import load_model_folder_weights, onnx_state_dict
from protembed_distill.student import Student

torch.set_num_threads(1)


def test_the_bundled_model_round_trips_into_pytorch() -> None:
    folder = default_model_dir()
    arch = read_model_card(folder).architecture
    student = {k: arch[k] for k in ("layers", "d_model", "heads", "ffn", "positions", "pool_dim")}
    cfg = StudentConfig(**student, max_length=read_model_card(folder).input.max_length, dropout=0.0)
    dims = {
        k.split(".")[1]: int(v.shape[0])
        for k, v in onnx_state_dict(folder / "model.onnx").items()
        if k.startswith("heads.") and k.endswith(".bias")
    }
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
    for name in names:
        if name in out:
            assert np.abs(out[name].numpy() - ref[name]).max() <= 1e-4, name

    with pytest.raises(ValueError, match=r"different student: layers"):
        load_model_folder_weights(model, folder, {**cfg.model_dump(mode="json"), "layers": 2}, dims)
    with pytest.raises(ValueError, match=r"teacher heads .* this run needs"):
        load_model_folder_weights(model, folder, cfg.model_dump(mode="json"), {"unirep1900": 1900})


def test_the_fp16_file_alone_seeds_the_same_weights(tmp_path: Path) -> None:
    import shutil

    folder = default_model_dir()
    only_fp16 = tmp_path / "m"
    only_fp16.mkdir()
    for name in ("model.json", "model.fp16.onnx"):
        shutil.copy(folder / name, only_fp16 / name)
    fp32 = onnx_state_dict(folder / "model.onnx")
    arch = read_model_card(folder).architecture
    cfg = StudentConfig(
        **{k: arch[k] for k in ("layers", "d_model", "heads", "ffn", "positions", "pool_dim")}
    )
    dims = {
        k.split(".")[1]: int(v.shape[0])
        for k, v in fp32.items()
        if k.startswith("heads.") and k.endswith(".bias")
    }
    model = Student(cfg, dims)
    load_model_folder_weights(model, only_fp16, cfg.model_dump(mode="json"), dims)
    for name, value in model.state_dict().items():
        if name in fp32:  # fp16 rounding of the fp32 weights
            torch.testing.assert_close(value, fp32[name], rtol=1e-3, atol=1e-3, msg=name)


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
