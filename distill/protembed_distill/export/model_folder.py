"""Checkpoint -> ``models/<id>/``: model.onnx (+ int8, fp16 variants), model.json and reference vectors.

The fp32 graph must match PyTorch (:mod:`.onnx`); each variant is measured against it (:mod:`.variants`);
the card records all of it, the teachers' licences and the data, so the folder describes itself.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from protembed import tokenizer
from protembed_distill.export.onnx import (
    OPSET,
    ExportError,
    export_onnx,
    onnx_outputs,
    parity,
    parity_batches,
)
from protembed_distill.export.reference_vectors import attach_pytorch_reference
from protembed_distill.export.variants import (
    batch_dependence,
    convert_fp16,
    quantize_int8,
    variant_quality,
)
from protembed_distill.student.model import Student
from protembed_distill.train.checkpoint import load_checkpoint, student_from_checkpoint

__all__ = ["check_model_files", "export_checkpoint"]

# The model files a folder may hold in all: the bundled folder travels in every git clone and container
# image. 64 MiB since the per-residue head (1.3.0: 38 MiB, 1.4.0: 50 MiB); the head stays float32 in
# the fp16 file because a float16 convolution moved vectors with the padded length.
MAX_BYTES = 64 * 1024 * 1024
# A sequence's vectors alone and in any padded batch: fp32's own spread is ~2e-6; the cache stores one.
BATCH_DEPENDENCE_LIMIT = 1e-4
_ORDER = ("student",)  # then teacher_<name>..., then residue_states


def check_model_files(out: Path, files: list[dict[str, Any]]) -> None:
    """The rules every written model folder meets, whichever path wrote it (a fresh export or a rebuild
    of its variants): no file's vectors move with their batch-mates, and the files fit ``MAX_BYTES``."""
    dependent = [f for f in files if f["metrics"]["batch_dependence_max_abs_diff"] > BATCH_DEPENDENCE_LIMIT]
    if dependent:
        raise ExportError(
            f"{out}: vectors depend on batch-mates (alone vs in a padded mixed-length batch): "
            + ", ".join(f"{f['file']} {f['metrics']['batch_dependence_max_abs_diff']:.2e}" for f in dependent)
            + f" over {BATCH_DEPENDENCE_LIMIT:g}"
        )
    size = sum((out / f["file"]).stat().st_size for f in files)
    if size > MAX_BYTES:
        raise ExportError(
            f"{out}: model files are {size / 2**20:.1f} MiB, over the {MAX_BYTES / 2**20:.0f} MiB limit; "
            "drop a variant (--no-int8/--no-fp16) or train a smaller student"
        )


def residue_adapter_card(model: Student) -> dict[str, Any]:
    """The card's architecture entry for the per-residue head, when the student has one."""
    cfg = model.cfg.residue_adapter
    if cfg is None:
        return {}
    return {
        "residue_adapter": {
            **cfg.model_dump(),
            "kind": f"{1 + len(cfg.residual_dilations)} masked 1-D convolutions (all but the first "
            "residual) over the final states and a residue embedding, then LayerNorm; trained with the "
            "trunk frozen to predict both teachers' residue states",
        }
    }


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
    calibration_sequences: int = 256,
    extra_metrics: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write the artifact folder and return the card dict as written."""
    from protembed.artifact import CARD_FILE, write_model_card

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

    held_out: list[str] = list(ckpt.get("val_sequences", []))
    val_seqs = held_out[:quality_sequences] or [s for b in parity_batches(1) for s in b]
    # int8's activation scales come from held-out sequences the quality figures below do not use, when
    # the validation split has enough of them.
    calibration = held_out[quality_sequences:][:calibration_sequences] or val_seqs
    ref = onnx_outputs(fp32, val_seqs, threads)
    files: list[dict[str, Any]] = [
        {
            "variant": "fp32",
            "file": fp32.name,
            "parity_max_abs_diff": diff,
            "metrics": {
                "parity_vs": "pytorch",
                "quality_sequences": len(val_seqs),
                "batch_dependence_max_abs_diff": batch_dependence(fp32, val_seqs, threads=threads),
            },
        }
    ]
    variants: list[tuple[str, Path]] = []
    if int8:
        quantize_int8(fp32, out / "model.int8.onnx", calibration, threads)
        variants.append(("int8", out / "model.int8.onnx"))
    if fp16:
        convert_fp16(model, out / "model.fp16.onnx")
        variants.append(("fp16", out / "model.fp16.onnx"))
    for variant, path in variants:
        pdiff = parity(model, path)
        q = variant_quality(ref, onnx_outputs(path, val_seqs, threads))
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
                    "batch_dependence_max_abs_diff": batch_dependence(path, val_seqs, threads=threads),
                    **({"calibration_sequences": len(calibration)} if variant == "int8" else {}),
                },
            }
        )
    check_model_files(out, files)

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
            "dim": model.residue_dim,
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
            **residue_adapter_card(model),
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
    # Reference vectors from this PyTorch model (the export's ground truth): the server checks its own
    # provider and variant against them at warm-up. They rewrite the card, so return it as it now is.
    attach_pytorch_reference(out, model)
    return json.loads((out / CARD_FILE).read_text(encoding="utf-8"))
