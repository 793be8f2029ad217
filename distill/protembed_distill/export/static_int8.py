"""int8 with static activation scales, so a sequence's vectors do not depend on its batch-mates.

ONNX Runtime's dynamic quantization picks one activation scale per MatMul per run, from the whole padded
batch: a sequence embedded alone and beside longer ones got different vectors (up to 0.05 on the bundled
student, against 2e-6 in fp32), and the cache kept whichever came first. Here every weight MatMul gets
a fixed uint8 scale and zero point for its input, calibrated once on held-out sequences run one at a
time (so no padding position reaches the min/max), and int8 weights per output channel. Each such
MatMul becomes QuantizeLinear -> MatMulIntegerToFloat (ONNX Runtime's integer GEMM with a float output,
the op it fuses a QDQ MatMul into at load) with the following bias Add folded in: no runtime min/max
pass and one pass over the output fewer, so as fast as the dynamic file.

Outputs are never quantized (a graph output or a Shape keeps reading the float tensor), and the teacher
heads (Gemm on the pooled vector: one row per sequence, a negligible share of the work) store int8
weights but compute in float, since quantizing their input would also round the pooled output itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from protembed import tokenizer

__all__ = ["ActivationRange", "calibrate", "quantize_static_int8", "weight_matmuls"]


@dataclass(frozen=True)
class ActivationRange:
    low: float
    high: float

    def scale_zero_point(self) -> tuple[float, int]:
        """uint8 affine parameters covering [low, high] and exactly representing 0."""
        low, high = min(self.low, 0.0), max(self.high, 0.0)
        scale = (high - low) / 255.0 if high > low else 1.0
        zero_point = int(np.clip(np.round(-low / scale), 0, 255))
        return scale, zero_point


def weight_matmuls(model: onnx.ModelProto) -> list[int]:
    """Positions of the MatMul nodes whose second input is a 2-D initializer (the trunk's and the
    pooling's projections)."""
    inits = {i.name: i for i in model.graph.initializer}
    return [
        k
        for k, n in enumerate(model.graph.node)
        if n.op_type == "MatMul" and n.input[1] in inits and len(inits[n.input[1]].dims) == 2
    ]


def calibrate(src: Path, sequences: Sequence[str], threads: int = 1) -> dict[str, ActivationRange]:
    """Min and max of every weight MatMul's input over ``sequences``, each run alone (no padding)."""
    import onnxruntime as ort

    if not sequences:
        raise ValueError(f"{src}: static int8 needs calibration sequences, got none")
    model = onnx.load(str(src))
    names = list(dict.fromkeys(model.graph.node[k].input[0] for k in weight_matmuls(model)))
    graph_outputs = {o.name for o in model.graph.output}
    for name in names:
        if name not in graph_outputs:
            model.graph.output.append(helper.make_empty_tensor_value_info(name))
    so = ort.SessionOptions()
    so.intra_op_num_threads = max(1, threads)
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    low = dict.fromkeys(names, np.inf)
    high = dict.fromkeys(names, -np.inf)
    for i, seq in enumerate(sequences):
        enc = tokenizer.batch_encode([seq])
        if enc.input_ids.shape[1] == 0:
            raise ValueError(f"calibration sequence {i} is empty")
        values = sess.run(names, {"input_ids": enc.input_ids, "attention_mask": enc.attention_mask})
        for name, value in zip(names, values, strict=True):
            low[name] = min(low[name], float(value.min()))
            high[name] = max(high[name], float(value.max()))
    return {n: ActivationRange(low[n], high[n]) for n in names}


# Weights of an integer GEMM keep 7 bits ([-63, 63]): on x86 CPUs with AVX2 but no VNNI, ONNX Runtime's
# uint8 x int8 kernel adds pairs of products in int16 with saturation (VPMADDUBSW), and 255 * 127 * 2
# overflows it while 255 * 63 * 2 does not (ONNX Runtime's own advice: quantize with reduce_range there).
# Seen on a 2-core AVX2 EPYC: a small student's int8 cosine to fp32 fell to 0.976 with 8-bit weights
# (0.99+ on VNNI machines; tests/distill/test_variants_batch.py). One bit fewer everywhere, for vectors
# that do not depend on which CPU serves them.
GEMM_WEIGHT_LEVELS = 63
# Heads that compute in float (dequantized weights) keep the full int8 range.
FLOAT_WEIGHT_LEVELS = 127


def _int8_per_channel(w: np.ndarray, axis: int, levels: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 along ``axis`` (the output channels): values in [-levels, levels], scale per
    channel."""
    scale = np.abs(w).max(axis=1 - axis) / float(levels)
    scale[scale == 0] = 1.0
    shaped = scale[None, :] if axis == 1 else scale[:, None]
    q = np.clip(np.round(w / shaped), -levels, levels).astype(np.int8)
    return q, scale.astype(np.float32)


def quantize_static_int8(
    src: Path, dst: Path, calibration: Sequence[str], threads: int = 1
) -> dict[str, ActivationRange]:
    """Write the static int8 graph of the fp32 file ``src`` to ``dst``; returns the calibrated ranges."""
    ranges = calibrate(src, calibration, threads)
    model = onnx.load(str(src))
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    targets = set(weight_matmuls(model))
    graph_outputs = {o.name for o in graph.output}
    new_inits: list[onnx.TensorProto] = []
    replaced: set[str] = set()
    quantized_inputs: dict[str, str] = {}  # float activation -> its QuantizeLinear output
    nodes: list[onnx.NodeProto] = []

    def weight_dq(name: str, axis: int) -> str:
        w = numpy_helper.to_array(inits[name]).astype(np.float32)
        q, scale = _int8_per_channel(w, axis, FLOAT_WEIGHT_LEVELS)
        new_inits.extend(
            [
                numpy_helper.from_array(q, f"{name}_int8"),
                numpy_helper.from_array(scale, f"{name}_scale"),
                numpy_helper.from_array(np.zeros(scale.shape, np.int8), f"{name}_zero_point"),
            ]
        )
        replaced.add(name)
        nodes.append(
            helper.make_node(
                "DequantizeLinear",
                [f"{name}_int8", f"{name}_scale", f"{name}_zero_point"],
                [f"{name}_dequantized"],
                axis=axis,
            )
        )
        return f"{name}_dequantized"

    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in graph.node:
        for name in n.input:
            consumers.setdefault(name, []).append(n)
    folded_adds: set[str] = set()  # outputs of bias Adds folded into the GEMM before them
    for k, n in enumerate(graph.node):
        if n.op_type == "Add" and n.output[0] in folded_adds:
            continue
        if k in targets:
            x = n.input[0]
            if x not in quantized_inputs:
                scale, zero_point = ranges[x].scale_zero_point()
                new_inits.extend(
                    [
                        numpy_helper.from_array(np.array(scale, np.float32), f"{x}_scale"),
                        numpy_helper.from_array(np.array(zero_point, np.uint8), f"{x}_zero_point"),
                    ]
                )
                nodes.append(
                    helper.make_node(
                        "QuantizeLinear", [x, f"{x}_scale", f"{x}_zero_point"], [f"{x}_quantized"]
                    )
                )
                quantized_inputs[x] = f"{x}_quantized"
            w = n.input[1]
            w_float = numpy_helper.to_array(inits[w]).astype(np.float32)
            w_int8, w_scale = _int8_per_channel(w_float, axis=1, levels=GEMM_WEIGHT_LEVELS)
            new_inits.extend(
                [
                    numpy_helper.from_array(w_int8, f"{w}_int8"),
                    numpy_helper.from_array(w_scale, f"{w}_scale"),
                    numpy_helper.from_array(np.zeros(w_scale.shape, np.int8), f"{w}_zero_point"),
                ]
            )
            replaced.add(w)
            # The bias Add that follows goes into the GEMM's epilogue: one pass over the output fewer,
            # which is what keeps this file as fast as the dynamic one.
            out, bias = n.output[0], []
            after = consumers.get(out, [])
            if len(after) == 1 and after[0].op_type == "Add" and out not in graph_outputs:
                other = [i for i in after[0].input if i != out]
                if len(other) == 1 and other[0] in inits and len(inits[other[0]].dims) == 1:
                    bias, out = other, after[0].output[0]
                    folded_adds.add(out)
            nodes.append(
                helper.make_node(
                    "MatMulIntegerToFloat",
                    [
                        quantized_inputs[x],
                        f"{w}_int8",
                        f"{x}_scale",
                        f"{w}_scale",
                        f"{x}_zero_point",
                        f"{w}_zero_point",
                        *bias,
                    ],
                    [out],
                    domain="com.microsoft",
                    name=n.name,
                )
            )
        elif n.op_type == "Gemm" and len(n.input) > 1 and n.input[1] in inits:
            attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
            w = weight_dq(n.input[1], axis=0 if attrs.get("transB", 0) else 1)
            gemm = onnx.NodeProto()
            gemm.CopyFrom(n)
            gemm.input[1] = w
            nodes.append(gemm)
        else:
            nodes.append(n)
    del graph.node[:]
    graph.node.extend(nodes)
    still_used = {i for node in nodes for i in node.input}
    keep = [i for i in graph.initializer if i.name not in replaced or i.name in still_used]
    del graph.initializer[:]
    graph.initializer.extend(keep + new_inits)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    onnx.checker.check_model(model)
    dst.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(dst))
    return ranges
