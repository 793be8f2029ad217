"""A student's weights read back out of its exported model folder (``models/<id>/``).

Training checkpoints stay on the machine that trained (a GPU box that is handed back), but the model
folder is committed, so it is the one copy of the weights a later run can always reach: ``optim.init_from``
accepts a model folder as well as a checkpoint, and training continues from the shipped model.

``torch.onnx.export`` keeps parameter names for most initializers (``model.<parameter>``, the export
wrapper's attribute being ``model``) but folds the weight of every Linear applied to [batch, length, d]
activations into an anonymous, transposed ``MatMul`` initializer. Each such MatMul feeds an ``Add``
with the Linear's named bias, which names the weight back (in the int8 file through the Cast and Mul
that dequantize the product; there the heads' weights keep their names, with ``_quantized``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from protembed.artifact import read_model_card

PREFIX = "model."  # the export wrapper's attribute holding the Student
ARCHITECTURE_KEYS = ("layers", "d_model", "heads", "ffn", "positions", "pool_dim")
# onnxruntime's quantize_dynamic naming, and the static int8 file's (export/static_int8.py)
_QUANT_SUFFIXES = ("_quantized", "_int8", "_scale", "_zero_point")


def onnx_state_dict(onnx_path: Path) -> dict[str, torch.Tensor]:
    """Every Student parameter in an exported graph, named and shaped as in ``state_dict()``.

    Reads the fp32 file, the fp16 file (weights widen exactly) and the int8 files, static or dynamic
    (weights dequantized: (q - zero_point) x scale, close to but not equal to fp32's; enough to start
    from).
    """
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(onnx_path)).graph
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def bias_after(node: Any) -> str:
        """The named bias added to ``node``'s output, through the Cast/Mul that int8 graphs put between."""
        frontier = [node]
        for _ in range(4):
            nxt = [c for n in frontier for c in consumers.get(n.output[0], [])]
            for c in nxt:
                named = [i for i in c.input if i.startswith(PREFIX) and i.endswith(".bias")]
                if c.op_type == "Add" and len(named) == 1:
                    return named[0]
            frontier = [c for c in nxt if c.op_type in ("Cast", "Mul")]
        raise ValueError(
            f"{onnx_path}: {node.op_type} {node.name or node.output[0]} is not followed by a named bias; "
            "not a graph exported by protembed export"
        )

    state = {
        name[len(PREFIX) :]: arr
        for name, arr in inits.items()
        if name.startswith(PREFIX) and not name.endswith(_QUANT_SUFFIXES)
    }
    for node in graph.node:
        if node.op_type == "MatMul" and node.input[1] in inits and not node.input[1].startswith(PREFIX):
            weight = inits[node.input[1]]  # [in, out]: the Linear's weight, transposed
        elif node.op_type == "MatMulInteger" and node.input[1].endswith("_quantized"):
            base = node.input[1][: -len("_quantized")]
            q = inits[node.input[1]].astype(np.float32)
            weight = (q - inits[base + "_zero_point"].astype(np.float32)) * inits[base + "_scale"]
            if base.startswith(PREFIX):  # a head's named weight (a Gemm before quantization)
                state[base[len(PREFIX) :]] = weight.T
                continue
        elif node.op_type == "MatMulIntegerToFloat" and node.input[1].endswith("_int8"):
            # static int8: per-column scale and zero point; the bias may be folded in as input 6
            q = inits[node.input[1]].astype(np.float32)
            weight = (q - inits[node.input[5]].astype(np.float32)) * inits[node.input[3]]
            folded = node.input[6] if len(node.input) > 6 and node.input[6].startswith(PREFIX) else None
            bias = folded or bias_after(node)
            state[bias[len(PREFIX) : -len(".bias")] + ".weight"] = weight.T
            continue
        elif (
            node.op_type == "DequantizeLinear"
            and node.input[0].endswith("_int8")
            and node.input[0][: -len("_int8")].startswith(PREFIX)
        ):
            # a head's named weight, stored int8 per output channel (``axis``), dequantized in the graph
            base = node.input[0][: -len("_int8")]
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
            q = inits[node.input[0]].astype(np.float32)
            shape = [1, 1]
            shape[axis] = -1
            has_zero_point = len(node.input) > 2 and node.input[2]
            zero_point = inits[node.input[2]].astype(np.float32).reshape(shape) if has_zero_point else 0.0
            state[base[len(PREFIX) :]] = (q - zero_point) * inits[node.input[1]].reshape(shape)
            continue
        else:
            continue
        state[bias_after(node)[len(PREFIX) : -len(".bias")] + ".weight"] = weight.T
    for name, arr in state.items():
        if arr.dtype not in (np.float32, np.float16):
            raise ValueError(f"{onnx_path}: {name} is {arr.dtype}, not a float weight")
    # copies (initializers are read-only); fp16 weights widen exactly
    return {name: torch.tensor(arr, dtype=torch.float32) for name, arr in state.items()}


def without_residue_head(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` less the per-residue head's weights (``residue_adapter.*``): for a student built without
    one, e.g. a trunk continuation (the head is trained after the trunk, on the trunk it sits on, so it
    does not carry over) or a study of the per-protein outputs."""
    return {k: v for k, v in state.items() if not k.startswith("residue_adapter.")}


def load_model_folder_weights(
    model: torch.nn.Module, folder: Path, student: dict[str, Any], teacher_dims: dict[str, int]
) -> None:
    """Load ``folder``'s weights into ``model``; errors say what differs from this run's student.

    ``student`` is the run's [student] table; the per-residue training heads are not exported, so they
    keep their initialisation.
    """
    card = read_model_card(folder)
    arch = card.architecture
    differs = [
        f"{key} {arch.get(key)!r} (this run: {student.get(key)!r})"
        for key in ARCHITECTURE_KEYS
        if key in student and arch.get(key) != student.get(key)
    ]
    if differs:
        raise ValueError(f"{folder} holds a different student: {', '.join(differs)}")
    # fp32 when it is there; else the fp16 or int8 file (a half or a third of the bytes) where only it
    # was copied, e.g. to a GPU box whose upload is size-limited.
    listed = [card.file(v) for v in ("fp32", "fp16", "int8")]
    files = [f for f in listed if f is not None and (folder / f.file).is_file()]
    if not files:
        raise ValueError(f"{folder}: none of the fp32, fp16 and int8 files that model.json lists is there")
    state = onnx_state_dict(folder / files[0].file)
    if getattr(model, "residue_adapter", None) is None:
        state = without_residue_head(state)
    heads = {
        k.split(".")[1]: int(v.shape[0])
        for k, v in state.items()
        if k.startswith("heads.") and k.endswith(".weight")
    }
    if heads != teacher_dims:
        raise ValueError(f"{folder} has teacher heads {heads}, this run needs {teacher_dims}")
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("residue_heads.")]
    if missing or unexpected:
        raise ValueError(
            f"{folder}: weights do not fit this student (missing {missing}, unexpected {unexpected})"
        )
