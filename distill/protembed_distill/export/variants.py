"""The smaller variants of an exported student: int8 (dynamic quantization of MatMul weights) and fp16
(float32 I/O, float16 inside), and how far each strays from fp32 on held-out sequences (max abs diff, and
the cosine of its outputs to fp32's, which is what a user of the vectors cares about).
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import numpy as np

from protembed_distill.export.onnx import export_onnx
from protembed_distill.student.model import Student


def variant_quality(ref: dict[str, Any], got: dict[str, Any]) -> dict[str, Any]:
    """Max abs diff and mean/min cosine of a variant's per-protein outputs to fp32's."""
    out: dict[str, Any] = {"max_abs_diff": 0.0, "cosine_to_fp32": {}}
    for n, r in ref.items():
        g = got[n]
        if n == "residue_states":
            r, g = np.concatenate(r), np.concatenate(g)
        out["max_abs_diff"] = max(out["max_abs_diff"], float(np.abs(r - g).max()))
        cos = (r * g).sum(-1) / (np.linalg.norm(r, axis=-1) * np.linalg.norm(g, axis=-1) + 1e-12)
        out["cosine_to_fp32"][n] = {"mean": float(cos.mean()), "min": float(cos.min())}
    return out


def quantize_int8(src: Path, dst: Path) -> None:
    # onnxruntime.quantization logs every tensor at INFO on the root logger; keep the CLI readable.
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.WARNING))
    try:
        _quantize(src, dst)
    finally:
        root.setLevel(level)


def _quantize(src: Path, dst: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # MatMul only: Gather (the embedding) and LayerNorm stay fp32, where int8 would cost accuracy
    # for no speed.
    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"])


def convert_fp16(model: Student, dst: Path) -> None:
    """float16 weights and activations, float32 inputs/outputs, exported from a half copy of the model.

    Exporting from PyTorch in half precision gives a graph that is float16 by construction; converting
    the fp32 graph after the fact (onnxconverter-common) left Cast/Identity nodes with mismatched types
    that ONNX Runtime refuses. Pooling still sums in float32 (see ``masked_mean``).
    """
    export_onnx(copy.deepcopy(model).half(), dst, float_outputs=True)
