"""Checkpoint -> ``models/<id>/``: model.onnx (+ int8, fp16 variants) and model.json.

The graph gets dynamic batch and length axes and the contract's output names. Parity is measured
against PyTorch on batches whose shapes differ from the export example (a graph with baked shapes
fails exactly there). The int8 (dynamic quantization of MatMul weights) and fp16 (float32 I/O, float16
inside) variants are each measured against the fp32 graph: max abs diff and the cosine of their
outputs to fp32's on held-out sequences, which is what a user of the vectors cares about.
"""

from __future__ import annotations

import copy
import logging
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
from protembed.tokenizer import batch_encode
from protembed_distill.student import Student
from protembed_distill.train import load_checkpoint, student_from_checkpoint

__all__ = [
    "ExportError",
    "export_checkpoint",
    "export_onnx",
    "onnx_outputs",
    "onnx_throughput",
    "parity",
]

OPSET = 17
MAX_BYTES = 30 * 1024 * 1024
_ORDER = ("student",)  # then teacher_<name>..., then residue_states


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
    from protembed_distill.teacher_cache import token_batches

    sess = _session(path, threads)
    names = [o.name for o in sess.get_outputs()]
    rows: dict[str, list[Any]] = {n: [None] * len(seqs) for n in names}
    for batch in token_batches([len(s) for s in seqs], batch_tokens):
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


def _variant_quality(ref: dict[str, Any], got: dict[str, Any]) -> dict[str, Any]:
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


def onnx_throughput(
    path: Path, seqs: Sequence[str], threads: int, batch_tokens: int = 8192, min_seconds: float = 3.0
) -> float:
    """Residues/s of an ONNX model on ``seqs`` with length-sorted token-budget batches (after warm-up)."""
    from protembed_distill.teacher_cache import token_batches

    sess = _session(path, threads)
    feeds = []
    for batch in token_batches([len(s) for s in seqs], batch_tokens):
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


def _licence_summary(meta: dict[str, dict[str, Any]]) -> dict[str, Any]:
    lic = {n: str(m.get("licence", "unknown")) for n, m in meta.items()}
    noncommercial = [
        n
        for n, text in lic.items()
        if any(k in text.upper() for k in ("BY-NC", "NONCOMMERCIAL", "NON-COMMERCIAL"))
    ]
    if noncommercial:
        weights = (
            f"non-commercial use only: distilled from {', '.join(noncommercial)} whose weights are "
            f"{'; '.join(lic[n] for n in noncommercial)}"
        )
        others = [f"{n}: {lic[n]}" for n in lic if n not in noncommercial]
        if others:
            weights += "; the other teachers' terms also apply (" + "; ".join(others) + ")"
    else:
        weights = "inherits the teachers' licences: " + "; ".join(f"{n}: {t}" for n, t in lic.items())
    return {
        "weights": weights,
        "teachers": lic,
        "notes": "The student reproduces the teachers' embedding spaces, so it is treated as a derivative of "
        "every teacher's weights; the most restrictive teacher licence governs its use.",
    }


def _teacher_source(name: str) -> str:
    """The registry's one-line description (weights and version) for a teacher, without loading it."""
    try:
        from protembed_distill.teachers.registry import describe_teachers
    except ImportError:
        return ""
    return describe_teachers().get(name, "")


def export_checkpoint(
    checkpoint: str | Path,
    out_dir: str | Path,
    *,
    model_id: str | None = None,
    version: str | None = None,
    int8: bool = True,
    fp16: bool = True,
    threads: int = 1,
    quality_sequences: int = 256,
    extra_metrics: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write the artifact folder and return the card dict as written."""
    from protembed.artifact import write_model_card

    ckpt = load_checkpoint(checkpoint)
    cfg = ckpt["config"]
    model = student_from_checkpoint(ckpt).eval()
    model.fold_standardization({n: (m, s) for n, (m, s) in ckpt["standardizers"].items()})
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fp32 = out / "model.onnx"
    export_onnx(model, fp32)
    diff = parity(model, fp32)
    if diff > 1e-4:
        raise ExportError(f"{fp32}: ONNX vs PyTorch max abs diff {diff:.2e} exceeds 1e-4")

    val_seqs: list[str] = list(ckpt.get("val_sequences", []))[:quality_sequences] or [
        s for b in parity_batches(1) for s in b
    ]
    ref = onnx_outputs(fp32, val_seqs, threads)
    files: list[dict[str, Any]] = [
        {
            "variant": "fp32",
            "file": fp32.name,
            "parity_max_abs_diff": diff,
            "metrics": {"parity_vs": "pytorch", "quality_sequences": len(val_seqs)},
        }
    ]
    variants: list[tuple[str, Path]] = []
    if int8:
        quantize_int8(fp32, out / "model.int8.onnx")
        variants.append(("int8", out / "model.int8.onnx"))
    if fp16:
        convert_fp16(model, out / "model.fp16.onnx")
        variants.append(("fp16", out / "model.fp16.onnx"))
    for variant, path in variants:
        pdiff = parity(model, path)
        q = _variant_quality(ref, onnx_outputs(path, val_seqs, threads))
        files.append(
            {
                "variant": variant,
                "file": path.name,
                "parity_max_abs_diff": pdiff,
                "metrics": {
                    "parity_vs": "pytorch fp32",
                    "max_abs_diff_vs_fp32_onnx": q["max_abs_diff"],
                    "cosine_to_fp32": q["cosine_to_fp32"],
                    "quality_sequences": len(val_seqs),
                },
            }
        )
    size = sum((out / f["file"]).stat().st_size for f in files)
    if size > MAX_BYTES:
        raise ExportError(
            f"{out}: artifact is {size / 2**20:.1f} MiB, over the 30 MiB limit; "
            "drop a variant (--no-int8/--no-fp16) or train a smaller student"
        )

    scfg = ckpt["student_config"]
    meta: dict[str, dict[str, Any]] = ckpt["teacher_meta"]
    d = int(scfg["d_model"])
    outputs = [
        {
            "name": "student",
            "onnx_output": "student",
            "dim": model.embedding_dim,
            "level": "per_protein",
            "space": "student",
        }
    ]
    outputs += [
        {
            "name": n,
            "onnx_output": f"teacher_{n}",
            "dim": int(dim),
            "level": "per_protein",
            "space": f"teacher:{n}",
        }
        for n, dim in ckpt["teacher_dims"].items()
    ]
    outputs.append(
        {
            "name": "residues",
            "onnx_output": "residue_states",
            "dim": d,
            "level": "per_residue",
            "space": "student",
        }
    )
    history = ckpt["state"].get("history", [])
    best = min(history, key=lambda r: r["val_loss"]) if history else {}
    metrics: dict[str, Any] = {
        "val_cosine": best.get("val_cosine", {}),
        "val_cosine_standardized": best.get("val_cosine_std", {}),
        "val_loss": best.get("val_loss"),
        "epoch": best.get("epoch"),
        "steps": ckpt["state"].get("step"),
        **(extra_metrics or {}),
    }
    run_cfg = cfg.get("output", {})
    card: dict[str, Any] = {
        "id": model_id or run_cfg.get("model_id", "protembed-student"),
        "version": version or run_cfg.get("version", "0.0.0"),
        "files": files,
        "input": {
            **{k: v for k, v in tokenizer.describe().items() if k != "normalization"},
            # The longest input the student was trained on: the server chunks longer sequences
            # into windows of this size rather than feed positions the model never saw.
            "max_length": min(int(scfg["max_length"]), int(cfg.get("data", {}).get("max_length", 10**9))),
            "onnx_inputs": ["input_ids", "attention_mask"],
            "normalization": tokenizer.describe()["normalization"],
        },
        "outputs": outputs,
        "default_output": "student",
        "architecture": {
            "kind": "transformer-encoder",
            "layers": scfg["layers"],
            "d_model": d,
            "heads": scfg["heads"],
            "ffn": scfg["ffn"],
            "positions": scfg["positions"],
            "norm": "pre-LN, final LayerNorm",
            "pool_dim": int(scfg.get("pool_dim", 0)),
            "pooling": "masked mean over real residues"
            + (f" of a {scfg['pool_dim']}-wide GELU projection" if scfg.get("pool_dim") else ""),
            "parameters": model.parameter_count(),
            "opset": OPSET,
        },
        "teachers": [
            {
                "name": n,
                "dim": int(ckpt["teacher_dims"][n]),
                "source": str(m.get("source") or _teacher_source(n)),
                "licence": str(m.get("licence", "")),
                "representation": str(m.get("representation", "")),
                "weight": ckpt.get("teacher_weights", {}).get(n),
            }
            for n, m in meta.items()
        ],
        "training_data": {k: v for k, v in ckpt["data_stats"].items() if k != "dedupe_cache"},
        "metrics": metrics,
        "licence": _licence_summary(meta),
    }
    write_model_card(out, card)
    return card


def export_temp_fp32(model: Student) -> tuple[tempfile.TemporaryDirectory[str], Path]:
    """An fp32 ONNX file of ``model`` in a temporary folder (for sweeps); caller keeps the dir alive."""
    tmp = tempfile.TemporaryDirectory(prefix="protembed-onnx-")
    path = Path(tmp.name) / "model.onnx"
    export_onnx(model, path)
    return tmp, path
