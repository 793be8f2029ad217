"""Rebuild a model folder's int8 and fp16 files from its own fp32 file, for a folder whose checkpoint is
gone (the bundled model), and rewrite the card's file entries, version and reference vectors::

    python -m protembed_distill.export.rebuild_variants models/protembed-student-v1 --version 1.2.0

The PyTorch student is rebuilt from the fp32 ONNX weights (``student_from_folder``), so fp16 comes from
the same export path as a fresh export and parity is measured against PyTorch as there. Calibration and
quality sequences are a seeded sample of the training corpus without an MMseqs2 hit in the evaluation
sets (the training data's own rule: identity and coverage from the card), the two sets disjoint.
The version must change with the vectors: it is part of the cache key.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from protembed.artifact import CARD_FILE, read_model_card, write_model_card
from protembed_distill.config import EvalSetConfig
from protembed_distill.data.dataset import find_eval_overlap, read_corpus, read_eval_sequences
from protembed_distill.export.model_folder import check_model_files
from protembed_distill.export.onnx import onnx_outputs, parity
from protembed_distill.export.reference_vectors import attach_pytorch_reference, student_from_folder
from protembed_distill.export.variants import batch_dependence, convert_fp16, quantize_int8, variant_quality


def eval_dir_sequences(eval_dirs: Sequence[Path]) -> list[str]:
    """Every sequence of every evaluation TSV in ``eval_dirs``."""
    return [s for _, s in read_eval_sequences([EvalSetConfig(path=d) for d in eval_dirs])]


def held_out_sequences(
    corpus: Path,
    evals: Sequence[str],
    n: int,
    crop: int,
    identity: float,
    coverage: float,
    seed: int,
    threads: int = 2,
) -> list[str]:
    """``n`` distinct corpus sequences (seeded order, cropped) with no hit in ``evals`` at ``identity``."""
    records = read_corpus(corpus)
    order = np.random.default_rng(seed).permutation(len(records))
    picked: list[str] = []
    for start in range(0, len(order), 2 * n):  # twice what is needed: some have hits
        chunk = list(dict.fromkeys(records[i].sequence[:crop] for i in order[start : start + 2 * n]))
        hits = find_eval_overlap(chunk, evals, identity=identity, coverage=coverage, threads=threads)
        picked += [s for i, s in enumerate(chunk) if i not in hits and s not in picked]
        if len(picked) >= n:
            return picked[:n]
    raise ValueError(f"{corpus}: only {len(picked)} sequences without an evaluation hit; {n} needed")


def rebuild(
    folder: Path,
    corpus: Path,
    eval_dirs: Sequence[Path],
    version: str,
    *,
    quality_sequences: int = 256,
    calibration_sequences: int = 256,
    seed: int = 0,
    threads: int = 1,
) -> dict[str, Any]:
    card = json.loads((folder / CARD_FILE).read_text(encoding="utf-8"))
    parsed = read_model_card(folder)
    if version == parsed.version:
        raise ValueError(f"{folder}: version {version} is the card's already; the vectors change, so must it")
    data = card.get("training_data", {})
    pool = held_out_sequences(
        corpus,
        eval_dir_sequences(eval_dirs),
        quality_sequences + calibration_sequences,
        parsed.max_length,
        float(data.get("identity_threshold", 0.5)),
        float(data.get("coverage", 0.5)),
        seed,
    )
    quality, calibration = pool[:quality_sequences], pool[quality_sequences:]
    model = student_from_folder(folder)
    fp32 = folder / "model.onnx"
    ref = onnx_outputs(fp32, quality, threads)
    entries = {e["variant"]: e for e in card["files"]}
    fp32_dependence = batch_dependence(fp32, quality, threads=threads)
    entries["fp32"]["metrics"]["batch_dependence_max_abs_diff"] = fp32_dependence
    source = (
        f"{corpus.name}: seeded sample (seed {seed}) without an MMseqs2 hit in the evaluation sets "
        f"(identity {data.get('identity_threshold', 0.5)}, coverage {data.get('coverage', 0.5)}), "
        "run one at a time; disjoint from the quality sequences"
    )
    for variant, path in (("int8", folder / "model.int8.onnx"), ("fp16", folder / "model.fp16.onnx")):
        if variant == "int8":
            quantize_int8(fp32, path, calibration, threads)
        else:
            convert_fp16(model, path)
        q = variant_quality(ref, onnx_outputs(path, quality, threads))
        metrics: dict[str, Any] = {
            "parity_vs": "pytorch fp32",
            "max_abs_diff_vs_fp32_onnx": q["max_abs_diff"],
            "cosine_to_fp32": q["cosine_to_fp32"],
            "quality_sequences": len(quality),
            "batch_dependence_max_abs_diff": batch_dependence(path, quality, threads=threads),
        }
        if variant == "int8":
            metrics |= {"calibration_sequences": len(calibration), "calibration": source}
        entries[variant] = {
            "variant": variant,
            "file": path.name,
            "parity_max_abs_diff": parity(model, path),
            "metrics": metrics,
        }
    card["files"] = [entries[v] for v in ("fp32", "int8", "fp16") if v in entries]
    check_model_files(folder, card["files"])
    card["version"] = version
    write_model_card(folder, card)
    attach_pytorch_reference(folder, model)
    return json.loads((folder / CARD_FILE).read_text(encoding="utf-8"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--version", required=True, help="the card's new version (part of the cache key)")
    parser.add_argument("--corpus", type=Path, default=Path("../shared/data/corpus/corpus.fasta"))
    parser.add_argument("--eval-dir", type=Path, default=Path("../shared/data/eval"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    eval_dirs = sorted(p for p in args.eval_dir.iterdir() if p.is_dir())
    card = rebuild(args.folder, args.corpus, eval_dirs, args.version, seed=args.seed, threads=args.threads)
    for entry in card["files"]:
        m = entry["metrics"]
        print(
            f"{entry['file']}: batch dependence {m['batch_dependence_max_abs_diff']:.2e}, "
            f"parity {entry['parity_max_abs_diff']:.3g}, sha256 {entry['sha256'][:12]}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
