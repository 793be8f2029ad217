"""Load-time rewrite of the student's attention into ONNX's ``Attention`` operator (opset 23).

The export writes each attention block out by hand (``protembed_distill.student.model.SelfAttention``):
``MatMul(q, Transpose(k)) -> Mul(scale) -> Add(padding bias) -> Softmax -> MatMul(., v)``. ONNX Runtime
runs those as five kernels over [batch, heads, length, length] tensors: about 40% of the int8 file's time
on a CPU (``reports/op_profile_int8.json``). Its CPU ``Attention`` kernel does the same arithmetic in one
kernel per block; measured, that costs about what the replaced kernels did, less the padding bias's own
pass over the scores, and the int8 file's per-protein path runs 1.05-1.07x (``reports/attention_fusion.md``).

Like :func:`protembed.runtime.per_protein_graph`, this derives an in-memory copy at load; the model file
stays the verified one. The rewrite is exact in intent (same scale, same additive mask, same softmax), and
the warm-up self-check compares the fused session's vectors with the card's reference vectors like any
other. Where a graph does not match the pattern, or uses an operator whose meaning could differ under
opset 23, it is left as it is: fusing is a speed-up, never a reason to refuse a model.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import onnx
from onnx import helper, numpy_helper, shape_inference

log = logging.getLogger(__name__)

ATTENTION_OPSET = 23
# Opset 23 needs IR version 11 (onnx.helper.VERSION_TABLE).
ATTENTION_IR_VERSION = 11
# The default-domain operators whose behaviour for float/int8 tensors is the same from opset 13-17 to 23
# (later versions only added types, or attributes whose defaults keep the old meaning). Raising a graph's
# opset import re-reads every node under the newer schema, so a graph with any other operator is not
# touched: e.g. Split (18 needs num_outputs) or ReduceMean (18 moved axes to an input) would change.
_SAME_UNDER_23 = frozenset(
    {
        "Add", "Cast", "Clip", "Concat", "Constant", "ConstantOfShape", "Conv", "DequantizeLinear", "Div",
        "Equal", "Erf", "Expand", "Gather", "Gemm", "Identity", "LayerNormalization", "MatMul", "Mul",
        "Not", "QuantizeLinear", "ReduceSum", "Reshape", "Shape", "Slice", "Softmax", "Sqrt", "Squeeze",
        "Sub", "Tanh", "Transpose", "Unsqueeze", "Where",
    }
)  # fmt: skip


@dataclass(frozen=True)
class _Block:
    """One hand-written attention block: what the fused node reads and writes, and what it replaces."""

    q: str
    k: str
    v: str
    bias: str
    scale: float
    output: str
    replaced: tuple[onnx.NodeProto, ...]


def _default_opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _attr(node: onnx.NodeProto, name: str, default: Any) -> Any:
    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def _scalar(
    name: str, producers: dict[str, onnx.NodeProto], inits: dict[str, onnx.TensorProto]
) -> float | None:
    """The value of a one-element constant (initializer or Constant node), else None."""
    if name in inits:
        arr = numpy_helper.to_array(inits[name])
    elif name in producers and producers[name].op_type == "Constant":
        attr = next((a for a in producers[name].attribute if a.name == "value"), None)
        if attr is None:
            return None
        arr = numpy_helper.to_array(attr.t)
    else:
        return None
    return float(arr.reshape(-1)[0]) if arr.size == 1 else None


def _ranks(model: onnx.ModelProto) -> dict[str, int]:
    """Each tensor's rank where ONNX shape inference knows it (not past operators it does not know, such
    as the int8 file's MatMulIntegerToFloat)."""
    inferred = shape_inference.infer_shapes(model)
    values = [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]
    return {v.name: len(v.type.tensor_type.shape.dim) for v in values if v.type.tensor_type.HasField("shape")}


def _find_blocks(model: onnx.ModelProto) -> list[_Block]:
    graph = model.graph
    ranks = _ranks(model)
    producers = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    inits = {t.name: t for t in graph.initializer}
    graph_outputs = {o.name for o in graph.output}

    def only_into(name: str, node: onnx.NodeProto) -> bool:
        """``name`` feeds ``node`` and nothing else (so removing its producer loses nothing)."""
        return name not in graph_outputs and [id(c) for c in consumers.get(name, [])] == [id(node)]

    blocks = []
    for softmax in graph.node:
        if softmax.op_type != "Softmax":
            continue
        axis = _attr(softmax, "axis", -1)
        add = producers.get(softmax.input[0])
        after = consumers.get(softmax.output[0], [])
        if axis not in (-1, 3) or add is None or add.op_type != "Add" or len(after) != 1:
            continue
        context = after[0]
        if context.op_type != "MatMul" or context.input[0] != softmax.output[0]:
            continue
        mul = producers.get(add.input[0])
        bias = add.input[1]
        if mul is None or mul.op_type != "Mul":
            mul, bias = producers.get(add.input[1]), add.input[0]
        if mul is None or mul.op_type != "Mul":
            continue
        scores, scale = mul.input[0], _scalar(mul.input[1], producers, inits)
        if scale is None:
            scores, scale = mul.input[1], _scalar(mul.input[0], producers, inits)
        matmul = producers.get(scores)
        if scale is None or matmul is None or matmul.op_type != "MatMul":
            continue
        k_t = producers.get(matmul.input[1])
        if k_t is None or k_t.op_type != "Transpose" or list(_attr(k_t, "perm", [])) != [0, 1, 3, 2]:
            continue
        chain = [(k_t, matmul), (matmul, mul), (mul, add), (add, softmax), (softmax, context)]
        if not all(only_into(a.output[0], b) for a, b in chain):
            continue
        # Attention reads 4-D [batch, heads, length, head size] inputs, and the mask is broadcast from a
        # known 4-D bias; a rank that shape inference cannot see is taken from the 4-D Transpose of k.
        q, v = matmul.input[0], context.input[1]
        if ranks.get(bias) != 4 or ranks.get(q, 4) != 4 or ranks.get(v, 4) != 4:
            continue
        blocks.append(
            _Block(
                q=q,
                k=k_t.input[0],
                v=v,
                bias=bias,
                scale=scale,
                output=context.output[0],
                replaced=(k_t, matmul, mul, add, softmax, context),
            )
        )
    return blocks


def _square_mask_nodes(bias: str, prefix: str) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto], str]:
    """Nodes that broadcast a [batch, 1, 1, length] bias to [batch, 1, length, length]: ONNX Runtime's
    Attention wants the mask's query axis spelled out, and one copy serves every layer."""
    shape, ones, one = f"{prefix}/bias_shape", f"{prefix}/ones", f"{prefix}/one"
    length, target, out = f"{prefix}/length", f"{prefix}/target", f"{prefix}/square_bias"
    starts, ends = f"{prefix}/three", f"{prefix}/four"
    inits = [
        helper.make_tensor(ones, onnx.TensorProto.INT64, [2], [1, 1]),
        helper.make_tensor(one, onnx.TensorProto.INT64, [1], [1]),
        helper.make_tensor(starts, onnx.TensorProto.INT64, [1], [3]),
        helper.make_tensor(ends, onnx.TensorProto.INT64, [1], [4]),
    ]
    nodes = [
        helper.make_node("Shape", [bias], [shape], name=f"{prefix}/Shape"),
        helper.make_node("Slice", [shape, starts, ends], [length], name=f"{prefix}/Slice"),
        helper.make_node("Concat", [ones, length, one], [target], name=f"{prefix}/Concat", axis=0),
        helper.make_node("Expand", [bias, target], [out], name=f"{prefix}/Expand"),
    ]
    return nodes, inits, out


def fuse_attention(model: onnx.ModelProto) -> int:
    """Rewrite ``model`` in place, each hand-written attention block becoming one ``Attention`` node;
    returns how many were fused (0: the model is unchanged)."""
    if _default_opset(model) > ATTENTION_OPSET:
        return 0
    foreign = {n.op_type for n in model.graph.node if n.domain in ("", "ai.onnx")} - _SAME_UNDER_23
    if foreign:
        log.debug("attention not fused: %s might change meaning under opset 23", sorted(foreign))
        return 0
    blocks = _find_blocks(model)
    if not blocks:
        return 0
    replaced = {id(n) for b in blocks for n in b.replaced}
    kept = [n for n in model.graph.node if id(n) not in replaced]
    squared: dict[str, str] = {}
    added: list[onnx.NodeProto] = []
    for i, block in enumerate(blocks):
        if block.bias not in squared:
            nodes, inits, squared[block.bias] = _square_mask_nodes(
                block.bias, f"/fused_attention/mask{len(squared)}"
            )
            added.extend(nodes)
            model.graph.initializer.extend(inits)
        added.append(
            helper.make_node(
                "Attention",
                [block.q, block.k, block.v, squared[block.bias]],
                [block.output],
                name=f"/fused_attention/{i}",
                scale=block.scale,
            )
        )
    del model.graph.node[:]
    model.graph.node.extend(_topological(kept + added))
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx"):
            opset.version = ATTENTION_OPSET
    model.ir_version = max(model.ir_version, ATTENTION_IR_VERSION)
    return len(blocks)


def _topological(nodes: Iterable[onnx.NodeProto]) -> list[onnx.NodeProto]:
    """``nodes`` in an order where every node follows the producers of its inputs (ONNX requires it)."""
    pending = list(nodes)
    produced_by = {o: n for n in pending for o in n.output}
    done: set[int] = set()
    order: list[onnx.NodeProto] = []

    def visit(node: onnx.NodeProto) -> None:
        stack = [(node, False)]
        while stack:
            n, expanded = stack.pop()
            if id(n) in done:
                continue
            if expanded:
                done.add(id(n))
                order.append(n)
                continue
            stack.append((n, True))
            for name in reversed(n.input):
                p = produced_by.get(name)
                if p is not None and id(p) not in done:
                    stack.append((p, False))

    for n in pending:
        visit(n)
    return order
