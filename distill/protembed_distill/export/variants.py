"""The smaller variants of an exported student: int8 (static activation scales calibrated on held-out
sequences, int8 weights per channel: :mod:`.static_int8`) and fp16 (float32 I/O, float16 inside, with
the padding-sensitive sums in float32: :mod:`.fp16_graph`), and how far each strays from fp32 on held-out
sequences (max abs diff, and the cosine of its outputs to fp32's, which is what a user of the vectors
cares about). Both give a sequence the same vectors alone and in any padded batch (within 1e-4), as fp32
does: the cache keys a vector by its sequence, not by its batch-mates.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from protembed.tokenizer import batch_encode
from protembed_distill.export.fp16_graph import batch_stable_fp16
from protembed_distill.export.onnx import export_onnx
from protembed_distill.export.static_int8 import quantize_static_int8
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


def quantize_int8(src: Path, dst: Path, calibration: Sequence[str], threads: int = 1) -> None:
    """The int8 file of the fp32 graph ``src``, its activation scales calibrated on ``calibration``
    (held-out sequences, run one at a time). MatMul weights only: Gather (the embedding) and LayerNorm
    stay fp32, where int8 would cost accuracy for no speed."""
    quantize_static_int8(src, dst, calibration, threads)


def convert_fp16(model: Student, dst: Path) -> None:
    """float16 weights and activations, float32 inputs/outputs, exported from a half copy of the model.

    Exporting from PyTorch in half precision gives a graph that is float16 by construction; converting
    the fp32 graph after the fact (onnxconverter-common) left Cast/Identity nodes with mismatched types
    that ONNX Runtime refuses. Pooling still sums in float32 (see ``masked_mean``), and the pooled vector,
    the heads and Softmax stay float32 in the graph (:func:`.fp16_graph.batch_stable_fp16`).
    """
    half = copy.deepcopy(model).half()
    if half.residue_adapter is not None:
        # float32 inside the fp16 file: ONNX Runtime's CPU provider has no float16 Conv, and a float16
        # convolution's sums move by a rounding step (~1e-3) with the padded length, where float32's
        # differences stay ~1e-7. It reads the half trunk states and gives a float output either way.
        half.residue_adapter.float()
    export_onnx(half, dst, float_outputs=True)
    batch_stable_fp16(dst)


def batch_dependence(path: Path, sequences: Sequence[str], group: int = 8, threads: int = 1) -> float:
    """Max abs diff, over every output at real positions, between each sequence embedded alone and
    inside padded batches of ``group`` mixed-length sequences (neighbours in a seeded shuffle)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = max(1, threads)
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])

    def run(seqs: list[str]) -> list[list[np.ndarray]]:
        enc = batch_encode(seqs)
        outs = sess.run(None, {"input_ids": enc.input_ids, "attention_mask": enc.attention_mask})
        return [[o[r, : len(s)] if o.ndim == 3 else o[r] for o in outs] for r, s in enumerate(seqs)]

    order = list(range(len(sequences)))
    random.Random(0).shuffle(order)
    worst = 0.0
    for start in range(0, len(order), group):
        members = [sequences[i] for i in order[start : start + group]]
        for seq, in_batch in zip(members, run(members), strict=True):
            alone = run([seq])[0]
            worst = max(worst, *(float(np.abs(a - b).max()) for a, b in zip(alone, in_batch, strict=True)))
    return worst
