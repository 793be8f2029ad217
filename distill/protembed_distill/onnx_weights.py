"""A student's weights read back out of its exported model folder (``models/<id>/``).

Training checkpoints stay on the machine that trained (a GPU box that is handed back), but the model
folder is committed, so it is the one copy of the weights a later run can always reach: ``optim.init_from``
accepts a model folder as well as a checkpoint, and training continues from the shipped model.

``torch.onnx.export`` keeps parameter names for most initializers (``model.<parameter>``, the export
wrapper's attribute being ``model``) but folds the weight of every Linear applied to [batch, length, d]
activations into an anonymous, transposed ``MatMul`` initializer. Each such MatMul feeds an ``Add``
with the Linear's named bias, which names the weight back.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from protembed.artifact import read_model_card

PREFIX = "model."  # the export wrapper's attribute holding the Student
ARCHITECTURE_KEYS = ("layers", "d_model", "heads", "ffn", "positions", "pool_dim")


def onnx_state_dict(onnx_path: Path) -> dict[str, torch.Tensor]:
    """Every Student parameter in an exported fp32 graph, named and shaped as in ``state_dict()``."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(onnx_path)).graph
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    state = {name[len(PREFIX) :]: arr for name, arr in inits.items() if name.startswith(PREFIX)}
    for node in graph.node:
        weight = node.input[1] if node.op_type == "MatMul" and len(node.input) > 1 else ""
        if weight not in inits or weight.startswith(PREFIX):
            continue
        biases = [
            i
            for add in consumers.get(node.output[0], [])
            if add.op_type == "Add"
            for i in add.input
            if i.startswith(PREFIX) and i.endswith(".bias")
        ]
        if len(biases) != 1:
            raise ValueError(
                f"{onnx_path}: MatMul {node.name or node.output[0]} is not followed by one named bias; "
                "not a graph exported by protembed export"
            )
        state[biases[0][len(PREFIX) : -len(".bias")] + ".weight"] = inits[weight].T
    for name, arr in state.items():
        if arr.dtype not in (np.float32, np.float16):
            raise ValueError(f"{onnx_path}: {name} is {arr.dtype}; read the fp32 or fp16 file")
    # copies (initializers are read-only); fp16 weights widen exactly
    return {name: torch.tensor(arr, dtype=torch.float32) for name, arr in state.items()}


def load_model_folder_weights(
    model: torch.nn.Module, folder: Path, student: dict[str, Any], teacher_dims: dict[str, int]
) -> None:
    """Load ``folder``'s fp32 weights into ``model``; errors say what differs from this run's student.

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
    # fp32 when it is there; the fp16 file (half the bytes) where only it was copied, e.g. to a GPU box
    # whose upload is size-limited.
    files = [
        f for f in (card.file("fp32"), card.file("fp16")) if f is not None and (folder / f.file).is_file()
    ]
    if not files:
        raise ValueError(f"{folder}: neither the fp32 nor the fp16 file that model.json lists is there")
    state = onnx_state_dict(folder / files[0].file)
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
