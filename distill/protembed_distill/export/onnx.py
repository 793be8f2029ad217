"""The student as an ONNX graph: export with dynamic batch and length axes and the contract's output names,
parity against PyTorch on batch shapes unlike the export example's (a graph with baked shapes fails exactly
there), and its outputs and throughput under ONNX Runtime.
"""

from __future__ import annotations

import random
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from protembed import tokenizer
from protembed.packing import Budget, pack_sorted
from protembed.tokenizer import batch_encode
from protembed_distill.student.model import Student

OPSET = 17


class ExportError(RuntimeError):
    """An export that does not meet the contract (parity, size); the message says which check failed."""


def output_names(model: Student) -> list[str]:
    return ["student", *(f"teacher_{n}" for n in model.teacher_names), "residue_states"]


class _OnnxWrapper(torch.nn.Module):
    """Returns a tuple in ``output_names`` order (ONNX export needs positional outputs); with
    ``float_outputs`` every output is cast to float32 (the fp16 variant's contract)."""

    def __init__(self, model: Student, float_outputs: bool = False) -> None:
        super().__init__()
        self.model = model
        self.names = output_names(model)
        self.float_outputs = float_outputs

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model(input_ids, attention_mask)
        return tuple(out[n].float() if self.float_outputs else out[n] for n in self.names)


def export_onnx(model: Student, path: Path, float_outputs: bool = False) -> list[str]:
    """Export ONNX with dynamic batch/length; returns the output names."""
    model = model.eval()
    wrapper = _OnnxWrapper(model, float_outputs).eval()
    # An example unlike typical use (batch 2, length 9) so a shape baked in by mistake shows up in parity.
    enc = batch_encode(["MKTAYIAKQ", "MKV"])
    example = (torch.from_numpy(enc.input_ids), torch.from_numpy(enc.attention_mask))
    names = wrapper.names
    dyn: dict[str, dict[int, str]] = {
        "input_ids": {0: "batch", 1: "length"},
        "attention_mask": {0: "batch", 1: "length"},
    }
    for n in names:
        dyn[n] = {0: "batch", 1: "length"} if n == "residue_states" else {0: "batch"}
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(
            wrapper,
            example,
            str(path),
            input_names=["input_ids", "attention_mask"],
            output_names=names,
            dynamic_axes=dyn,
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
    return names


def _session(path: Path, threads: int = 1) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = max(1, threads)
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def onnx_outputs(
    path: Path, seqs: Sequence[str], threads: int = 1, batch_tokens: int = 8192
) -> dict[str, Any]:
    """Per-protein outputs [N, dim] in input order, plus residue_states as a list of [len, d]."""
    sess = _session(path, threads)
    names = [o.name for o in sess.get_outputs()]
    rows: dict[str, list[Any]] = {n: [None] * len(seqs) for n in names}
    for batch in pack_sorted([len(s) for s in seqs], Budget(batch_tokens)):
        enc = batch_encode([seqs[i] for i in batch])
        outs = sess.run(None, {"input_ids": enc.input_ids, "attention_mask": enc.attention_mask})
        for n, arr in zip(names, outs, strict=True):
            for r, i in enumerate(batch):
                rows[n][i] = arr[r, : len(seqs[i])] if n == "residue_states" else arr[r]
    return {n: (v if n == "residue_states" else np.stack(v)) for n, v in rows.items()}


def parity_batches(seed: int = 0) -> list[list[str]]:
    """Random sequences in batches of mixed shapes, none equal to the export example's [2, 9]."""
    rng = random.Random(seed)
    aa = tokenizer.STANDARD_RESIDUES + "X"
    shapes = [[1], [3, 57, 200], [5, 5, 5, 5, 5], [130, 17, 64, 1, 90, 33, 250]]
    return [["".join(rng.choice(aa) for _ in range(n)) for n in lens] for lens in shapes]


def parity(model: Student, path: Path, batches: Sequence[Sequence[str]] | None = None) -> float:
    """Max abs diff between PyTorch and the ONNX graph over all outputs (real residues only)."""
    model = model.eval()
    sess = _session(path)
    names = [o.name for o in sess.get_outputs()]
    worst = 0.0
    limit = model.cfg.max_length  # positions beyond the table do not exist; the server enforces it
    for seqs in batches or parity_batches():
        enc = batch_encode([s[:limit] for s in seqs])
        with torch.no_grad():
            ref = model(torch.from_numpy(enc.input_ids), torch.from_numpy(enc.attention_mask))
        got = dict(
            zip(
                names,
                sess.run(None, {"input_ids": enc.input_ids, "attention_mask": enc.attention_mask}),
                strict=True,
            )
        )
        m = enc.attention_mask.astype(bool)
        for n in names:
            r, g = ref[n].numpy(), got[n]
            if r.shape != g.shape:
                raise ExportError(f"{path.name}: output {n} has shape {g.shape}, PyTorch {r.shape}")
            diff = np.abs(r - g)[m] if n == "residue_states" else np.abs(r - g)
            worst = max(worst, float(diff.max()))
    return worst


def onnx_throughput(
    path: Path, seqs: Sequence[str], threads: int, batch_tokens: int = 8192, min_seconds: float = 3.0
) -> float:
    """Residues/s of an ONNX model on ``seqs`` with length-sorted token-budget batches (after warm-up)."""
    sess = _session(path, threads)
    feeds = []
    for batch in pack_sorted([len(s) for s in seqs], Budget(batch_tokens)):
        enc = batch_encode([seqs[i] for i in batch])
        feeds.append({"input_ids": enc.input_ids, "attention_mask": enc.attention_mask})
    sess.run(None, feeds[0])
    residues = sum(len(s) for s in seqs)
    done, t0 = 0, time.perf_counter()
    while True:
        for f in feeds:
            sess.run(None, f)
        done += residues
        if time.perf_counter() - t0 >= min_seconds:
            return done / (time.perf_counter() - t0)


def export_temp_fp32(model: Student) -> tuple[tempfile.TemporaryDirectory[str], Path]:
    """An fp32 ONNX file of ``model`` in a temporary folder (for sweeps); caller keeps the dir alive."""
    tmp = tempfile.TemporaryDirectory(prefix="protembed-onnx-")
    path = Path(tmp.name) / "model.onnx"
    export_onnx(model, path)
    return tmp, path
