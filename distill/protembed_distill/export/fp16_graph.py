"""Make an fp16 graph give a sequence the same vectors alone and in a padded batch.

In float16 a difference of one rounding step is ~5e-4 near 1, so any sum whose order depends on the
padded length shows up in the vectors once it is rounded to half: measured on the bundled student,
4.9e-4 on the pooled vector and 3.9e-3 on residue states between a sequence alone and in a mixed batch.
Two places do such sums:

- Softmax: ONNX Runtime's CPU provider has no float16 Softmax and runs the operator's function body in
  float32, whose ReduceSum over the keys changes order with the padded length. A float32 Softmax between
  two Casts runs the native kernel, whose result for the real keys does not depend on the padding.
- The pooled mean: summed in float32 (``masked_mean``), whose sum order also depends on the padded
  length (~1e-6 in float32), then rounded to half for the output and the teacher heads. Here the pooled
  mean stays float32 for the ``student`` output and the heads compute in float32 on their half weights
  (a per-sequence cost, not per residue).
"""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import TensorProto, helper, shape_inference

__all__ = ["batch_stable_fp16"]


def _float32_softmax(graph: onnx.GraphProto) -> int:
    nodes: list[onnx.NodeProto] = []
    count = 0
    for n in graph.node:
        if n.op_type != "Softmax":
            nodes.append(n)
            continue
        x, y = n.input[0], n.output[0]
        softmax = onnx.NodeProto()
        softmax.CopyFrom(n)
        softmax.input[0], softmax.output[0] = f"{x}_float32", f"{y}_float32"
        nodes += [
            helper.make_node("Cast", [x], [f"{x}_float32"], to=TensorProto.FLOAT),
            softmax,
            helper.make_node("Cast", [f"{y}_float32"], [y], to=TensorProto.FLOAT16),
        ]
        count += 1
    del graph.node[:]
    graph.node.extend(nodes)
    return count


def _float32_pooling(model: onnx.ModelProto) -> int:
    """Skip the half rounding of float32 tensors that only feed outputs (via a float Cast) and Gemm heads."""
    graph = model.graph
    inferred = shape_inference.infer_shapes(model).graph.value_info
    types = {v.name: v.type.tensor_type.elem_type for v in inferred}
    inits = {i.name for i in graph.initializer}
    outputs = {o.name for o in graph.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in graph.node:
        for name in n.input:
            consumers.setdefault(name, []).append(n)
    count = 0
    dropped: list[onnx.NodeProto] = []
    casts: list[onnx.NodeProto] = []
    for n in graph.node:
        to = {a.name: helper.get_attribute_value(a) for a in n.attribute}.get("to")
        if n.op_type != "Cast" or to != TensorProto.FLOAT16 or types.get(n.input[0]) != TensorProto.FLOAT:
            continue
        users = consumers.get(n.output[0], [])
        to_output = [u for u in users if u.op_type == "Cast" and u.output[0] in outputs]
        heads = [u for u in users if u.op_type == "Gemm" and all(i in inits for i in u.input[1:])]
        if not users or len(to_output) + len(heads) != len(users):
            continue
        pooled = n.input[0]
        for u in to_output:
            u.op_type, u.input[0] = "Identity", pooled
            del u.attribute[:]
        for gemm in heads:
            gemm.input[0] = pooled
            for j in range(1, len(gemm.input)):
                half = gemm.input[j]
                gemm.input[j] = f"{half}_float32"
                casts.append(helper.make_node("Cast", [half], [f"{half}_float32"], to=TensorProto.FLOAT))
            for after in consumers.get(gemm.output[0], []):
                if after.op_type == "Cast" and after.output[0] in outputs:
                    after.op_type = "Identity"
                    del after.attribute[:]
        dropped.append(n)
        count += 1
    for n in dropped:
        graph.node.remove(n)
    for c in reversed(casts):  # initializer casts first: they only read initializers
        graph.node.insert(0, c)
    return count


def batch_stable_fp16(path: Path) -> None:
    """Rewrite the fp16 file at ``path`` in place (see the module docstring)."""
    model = onnx.load(str(path))
    if _float32_softmax(model.graph) == 0:
        raise ValueError(f"{path}: no Softmax found; not the student's fp16 graph")
    _float32_pooling(model)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
