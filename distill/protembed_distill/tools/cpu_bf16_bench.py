"""What bfloat16 on a CPU's matrix units buys distillation: teacher targets and student steps.

Two measurements, each float32 against bfloat16 in the same process, so they read as ratios:

1. Teacher targets, UniRep-1900 and NEAR (``precision="bfloat16"`` against the original models' float32
   arithmetic) on a seeded sample of corpus sequences cropped as distillation crops them: residues per
   second, and how close the bfloat16 vectors are to the float32 ones (cosine, and cosine after
   standardising each unit over the sample, the units the distillation loss works in).
2. Training steps of the bundled student's architecture (4x192, pooling projection 768, both teachers'
   heads): forward, loss and backward under ``torch.autocast("cpu", bfloat16)`` (``optim.cpu_amp``)
   against float32, in residues per second.

    PYTHONPATH=service:distill python -m protembed_distill.tools.cpu_bf16_bench \\
        --sequences 1000 --threads 1 --out reports/distill/cpu_bf16.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from protembed_distill.config import StudentConfig
from protembed_distill.data.dataset import read_corpus
from protembed_distill.student.model import Student
from protembed_distill.teachers.registry import load_teacher


def _cosines(ref: np.ndarray, got: np.ndarray) -> dict[str, float]:
    def cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.asarray((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1))

    mu, sd = ref.mean(0), ref.std(0) + 1e-6
    raw, std = cos(ref, got), cos((ref - mu) / sd, (got - mu) / sd)
    return {
        "cosine_mean": float(raw.mean()),
        "cosine_min": float(raw.min()),
        "std_cosine_mean": float(std.mean()),
        "std_cosine_min": float(std.min()),
        "max_abs_diff": float(np.abs(ref - got).max()),
    }


def bench_teacher(name: str, sequences: list[str], batch: int) -> dict[str, Any]:
    """One teacher in float32 and in bfloat16 on the same length-sorted batches of ``batch`` rows."""
    residues = sum(map(len, sequences))
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    out: dict[str, Any] = {"sequences": len(sequences), "residues": residues}
    vectors = {}
    for precision in ("float32", "bfloat16"):
        teacher = load_teacher(name, precision=precision)
        t0 = time.perf_counter()
        parts = [
            teacher.embed([sequences[i] for i in order[k : k + batch]]).per_protein
            for k in range(0, len(order), batch)
        ]
        seconds = time.perf_counter() - t0
        vectors[precision] = np.concatenate(parts)
        out[precision] = {"seconds": seconds, "residues_per_s": residues / seconds}
    out["speedup"] = out["bfloat16"]["residues_per_s"] / out["float32"]["residues_per_s"]
    out["agreement"] = _cosines(vectors["float32"], vectors["bfloat16"])
    return out


def bench_student(batch_rows: int, length: int, steps: int, seed: int) -> dict[str, Any]:
    cfg = StudentConfig(layers=4, d_model=192, heads=4, ffn=768, dropout=0.0, pool_dim=768)
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, 20, (batch_rows, length), generator=gen)  # amino-acid tokens only
    mask = torch.ones(batch_rows, length, dtype=torch.bool)
    out: dict[str, Any] = {"batch": [batch_rows, length], "steps": steps}
    for amp in (False, True):
        torch.manual_seed(seed)
        model = Student(cfg, {"unirep1900": 1900, "near": 256})
        opt = torch.optim.AdamW(model.parameters(), 1e-4)

        def step(model: Student = model, opt: torch.optim.Optimizer = opt, amp: bool = amp) -> None:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
                pred = model(ids, mask)
            loss = sum(v.float().pow(2).mean() for k, v in pred.items() if k.startswith("teacher_"))
            opt.zero_grad()
            loss.backward()
            opt.step()

        step()  # warm-up: oneDNN picks and caches its kernels on the first call
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        seconds = time.perf_counter() - t0
        out["bfloat16" if amp else "float32"] = {"residues_per_s": batch_rows * length * steps / seconds}
    out["speedup"] = out["bfloat16"]["residues_per_s"] / out["float32"]["residues_per_s"]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m protembed_distill.tools.cpu_bf16_bench")
    p.add_argument("--corpus", type=Path, default=Path("../shared/data/corpus/corpus.fasta"))
    p.add_argument("--sequences", type=int, default=1000)
    p.add_argument("--crop", type=int, default=512, help="distillation's data.max_length")
    p.add_argument("--batch", type=int, default=256, help="teacher rows per batch (length-sorted)")
    p.add_argument("--student-steps", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    records = read_corpus(args.corpus)
    rng = np.random.default_rng(args.seed)
    picked = rng.choice(len(records), size=min(args.sequences, len(records)), replace=False)
    sequences = [records[i].sequence[: args.crop] for i in picked]
    report = {
        "cpu": platform.processor() or platform.machine(),
        "bf16_matrix_units": {
            "amx": torch.cpu._is_amx_tile_supported(),
            "avx512_bf16": torch.cpu._is_avx512_bf16_supported(),
        },
        "torch": torch.__version__,
        "threads": args.threads,
        "unirep1900": bench_teacher("unirep1900", sequences, args.batch),
        "near": bench_teacher("near", sequences, args.batch),
        "student": bench_student(8, args.crop, args.student_steps, args.seed),
    }
    text = json.dumps(report, indent=1)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
