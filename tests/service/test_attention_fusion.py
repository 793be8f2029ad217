"""The load-time attention rewrite (protembed.attention_fusion): the bundled files' attention blocks become
ONNX Attention nodes with the same vectors, graphs it cannot vouch for are left alone, and the model layer
falls back to the graph as exported when ONNX Runtime refuses the rewrite."""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper

from protembed import runtime, tokenizer
from protembed.attention_fusion import ATTENTION_OPSET, fuse_attention
from protembed.runtime import OnnxModel, SessionOptions

BUNDLED = Path(__file__).resolve().parents[2] / "models" / "protembed-student-v1"
# Mixed lengths so most rows carry padding that the mask must hide; one past a SIMD width or two.
SEQUENCES = ["MKTAYIAKQRQISFVKSHFSRQ", "MSDNEVLQ" * 30, "MK", "ACDEFGHIKLMNPQRSTVWYX" * 7]


def _outputs(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    batch = tokenizer.batch_encode(SEQUENCES)
    values = sess.run(None, {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask})
    keep = batch.attention_mask.astype(bool)
    return {
        o.name: (v[keep] if v.ndim == 3 else v)  # per-residue outputs: real positions only
        for o, v in zip(sess.get_outputs(), values, strict=True)
    }


@pytest.mark.parametrize("variant", ["model.onnx", "model.int8.onnx"])
def test_the_bundled_attention_fuses_into_one_node_per_layer_with_the_same_vectors(variant: str) -> None:
    exported = onnx.load(str(BUNDLED / variant))
    fused = onnx.ModelProto()
    fused.CopyFrom(exported)
    layers = json.loads((BUNDLED / "model.json").read_text())["architecture"]["layers"]
    assert fuse_attention(fused) == layers
    ops = Counter(n.op_type for n in fused.graph.node)
    assert ops["Attention"] == layers and ops["Softmax"] == 0
    assert ops["Expand"] == 1, "one square mask serves every layer"
    assert {o.domain: o.version for o in fused.opset_import}[""] == ATTENTION_OPSET
    onnx.checker.check_model(fused)
    before, after = _outputs(exported), _outputs(fused)
    assert before.keys() == after.keys()
    for name, value in before.items():
        np.testing.assert_allclose(after[name], value, rtol=0, atol=1e-5, err_msg=name)


def test_a_wrong_scale_would_show() -> None:
    """The comparison above can fail: the fused node's own scale attribute reaches the vectors."""
    fused = onnx.load(str(BUNDLED / "model.onnx"))
    exported = onnx.ModelProto()
    exported.CopyFrom(fused)
    fuse_attention(fused)
    for node in fused.graph.node:
        if node.op_type == "Attention":
            next(a for a in node.attribute if a.name == "scale").f *= 0.5
    assert np.abs(_outputs(fused)["student"] - _outputs(exported)["student"]).max() > 1e-3


def test_a_graph_with_an_operator_opset_23_might_reread_is_left_alone() -> None:
    model = onnx.load(str(BUNDLED / "model.onnx"))
    # Split changed at opset 18 (num_outputs): raising the opset import could change its meaning.
    model.graph.node.append(helper.make_node("Split", ["student"], ["s0", "s1"], axis=1))
    before = model.SerializeToString()
    assert fuse_attention(model) == 0
    assert model.SerializeToString() == before


def test_a_softmax_read_elsewhere_is_not_fused() -> None:
    """Removing a Softmax whose probabilities another node reads would lose that node's input."""
    model = onnx.load(str(BUNDLED / "model.onnx"))
    softmaxes = [n for n in model.graph.node if n.op_type == "Softmax"]
    model.graph.node.append(helper.make_node("Identity", [softmaxes[0].output[0]], ["probabilities"]))
    model.graph.output.append(onnx.ValueInfoProto(name="probabilities"))
    assert fuse_attention(model) == len(softmaxes) - 1


def test_the_model_layer_serves_the_fused_graph_on_the_cpu_and_the_same_vectors() -> None:
    opts = SessionOptions(intra_op_threads=1, inter_op_threads=1)
    fused = OnnxModel.open(BUNDLED, "int8", opts)
    exported = OnnxModel.open(BUNDLED, "int8", SessionOptions(intra_op_threads=1, fuse_attention=False))
    layers = json.loads((BUNDLED / "model.json").read_text())["architecture"]["layers"]
    assert fused.fused_attention == layers and exported.fused_attention == 0
    for outputs in (["student"], ["student", "residue_states"]):  # the per-protein cut, then the whole graph
        a, b = fused.embed(SEQUENCES, outputs), exported.embed(SEQUENCES, outputs)
        for name in outputs:
            for x, y in zip(a[name], b[name], strict=True):
                np.testing.assert_allclose(x, y, rtol=0, atol=1e-5)


def test_an_onnxruntime_that_refuses_the_fused_graph_gets_the_graph_as_exported(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """ONNX Runtime before 1.23 has no opset-23 Attention: the model still loads, unfused, and says so."""

    def refused(graph: str | bytes) -> tuple[bytes, int]:
        model = onnx.load(graph) if isinstance(graph, str) else onnx.load_from_string(graph)
        model.graph.node.append(helper.make_node("NoSuchOp", ["student"], ["x"], domain="protembed.test"))
        model.opset_import.append(helper.make_opsetid("protembed.test", 1))
        return model.SerializeToString(), 4

    monkeypatch.setattr(runtime, "fused_copy", refused)
    with caplog.at_level(logging.WARNING, logger="protembed.runtime"):
        model = OnnxModel.open(BUNDLED, "int8", SessionOptions(intra_op_threads=1))
    assert model.fused_attention == 0
    assert any("attention not fused" in r.getMessage() for r in caplog.records)
    assert model.embed(SEQUENCES[:1], ["student"])["student"][0].shape == (768,)


def _block_graph(bias_shape: list[int | str]) -> onnx.ModelProto:
    """One hand-written attention block over 4-D q, k, v inputs, with a padding bias of the given shape."""
    t = onnx.TensorProto.FLOAT
    qkv = ["b", 2, "n", 8]
    nodes = [
        helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]),
        helper.make_node("MatMul", ["q", "kt"], ["s"]),
        helper.make_node("Mul", ["s", "scale"], ["ss"]),
        helper.make_node("Add", ["ss", "bias"], ["sb"]),
        helper.make_node("Softmax", ["sb"], ["p"], axis=-1),
        helper.make_node("MatMul", ["p", "v"], ["out"]),
    ]
    graph = helper.make_graph(
        nodes,
        "block",
        [helper.make_tensor_value_info(n, t, qkv) for n in "qkv"]
        + [helper.make_tensor_value_info("bias", t, bias_shape)],
        [helper.make_tensor_value_info("out", t, qkv)],
        [helper.make_tensor("scale", t, [], [8**-0.5])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_a_bias_that_is_not_4d_is_not_fused_and_a_4d_one_gives_the_same_output() -> None:
    """The square mask is broadcast from a [batch, 1, 1, length] bias; another rank is left alone."""
    assert fuse_attention(_block_graph(["n"])) == 0
    exported = _block_graph(["b", 1, 1, "n"])
    fused = onnx.ModelProto()
    fused.CopyFrom(exported)
    assert fuse_attention(fused) == 1
    rng = np.random.default_rng(0)
    feeds = {n: rng.standard_normal((3, 2, 5, 8), dtype=np.float32) for n in "qkv"}
    feeds["bias"] = np.zeros((3, 1, 1, 5), np.float32)
    feeds["bias"][0, ..., 3:] = -1e4  # the first row's last two keys are padding
    outs = [
        ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
        for m in (exported, fused)
    ]
    np.testing.assert_allclose(outs[1], outs[0], rtol=0, atol=1e-6)
