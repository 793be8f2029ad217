"""Is a teacher-space head, or the student's trunk, what limits the held-out cosine to a teacher?

The bundled student's UniRep-1900 head reaches a held-out cosine of 0.873 against a 0.90 target. The head
is one linear map from the student's 768-wide embedding, trained jointly with the trunk on standardized
targets, while the target counts cosine in UniRep's own units. If the head were the limit, refitting it
on the trunk's frozen outputs for raw-unit fidelity, or on richer pooled features, would close part of
the gap on a CPU in minutes; if the trunk is the limit, only more training does. This probe answers that:

1. UniRep-1900 vectors for the first ``--train`` training and ``--val`` validation sequences of the
   config's split, in the project's resumable HDF5 teacher cache (progress bar; kill and rerun resumes).
2. The exported fp32 model's outputs for them (ONNX Runtime, CPU).
3. Held-out cosine of: the trained head; ridge maps from the 768-wide embedding refitted in raw units
   (several strengths); ridge corrections on top of the head from the embedding, and from the embedding
   plus max, standard deviation and N- and C-terminal means of the residue states.

    .venv/bin/python distill/protembed_distill/tools/head_refit_probe.py --train 2000 --val 500

Every ridge strength is printed with its held-out cosine, so the best one is chosen with the held-out
set in view: a refit that does not beat the head even so is conclusive.
Results: reports/distill/head_refit.md.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from protembed import tokenizer
from protembed.runtime import OnnxModel

TEACHER = "unirep1900"


def mean_cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(np.sum(a * b, 1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)))


def ridge(x: np.ndarray, y: np.ndarray, lam: float) -> np.ndarray:
    """Least squares with an L2 penalty on every weight but the intercept (x's last column is ones)."""
    penalty = lam * np.eye(x.shape[1])
    penalty[-1, -1] = 0.0
    return np.linalg.solve(x.T @ x + penalty, x.T @ y)


def with_ones(*blocks: np.ndarray) -> np.ndarray:
    return np.hstack([*blocks, np.ones((len(blocks[0]), 1), np.float32)])


def pooled_extras(states: np.ndarray, length: int) -> np.ndarray:
    """Max, standard deviation and the means of the first and last tenth of one sequence's states."""
    x = states[:length]
    q = max(1, length // 10)
    return np.concatenate([x.max(0), x.std(0), x[:q].mean(0), x[-q:].mean(0)])


def student_outputs(backend: OnnxModel, sequences: Sequence[str]) -> dict[str, np.ndarray]:
    """Embedding, UniRep head and pooled residue-state extras per sequence, in input order."""
    names = ["student", f"teacher_{TEACHER}", "residue_states"]
    rows: dict[str, list[np.ndarray | None]] = {n: [None] * len(sequences) for n in [*names[:2], "extras"]}
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    for start in range(0, len(order), 32):
        ids = order[start : start + 32]
        batch = tokenizer.batch_encode([sequences[i] for i in ids])
        out = backend.run(batch, names)
        for k, i in enumerate(ids):
            rows["student"][i] = out["student"][k]
            rows[f"teacher_{TEACHER}"][i] = out[f"teacher_{TEACHER}"][k]
            rows["extras"][i] = pooled_extras(out["residue_states"][k], int(batch.lengths[k]))
    return {n: np.stack([r for r in v if r is not None]) for n, v in rows.items()}


def main(argv: Sequence[str] | None = None) -> int:
    from protembed_bench.onnx_student import OnnxStudent
    from protembed_distill.config import load_config
    from protembed_distill.data.dataset import prepare_dataset
    from protembed_distill.teacher_cache import EmbeddingStore, embed_into
    from protembed_distill.teachers.registry import load_teacher

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", type=Path, default=Path("distill/configs/gpu.toml"))
    p.add_argument("--model", type=Path, default=Path("models/protembed-student-v1"))
    p.add_argument("--train", type=int, default=2000)
    p.add_argument("--val", type=int, default=500)
    p.add_argument("--threads", type=int, default=2)
    default_cache = Path.home() / ".cache/protembed/head-refit" / f"{TEACHER}.h5"
    p.add_argument("--cache", type=Path, default=default_cache, help="resumable teacher cache (HDF5)")
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    cfg = load_config(args.config)
    ds = prepare_dataset(cfg.data, Path(cfg.run.dir), threads=args.threads, log=False)
    train, val = ds.train[: args.train], ds.val[: args.val]
    with EmbeddingStore(args.cache) as store:
        embed_into(load_teacher(TEACHER), [*val, *train], store, per_residue=False, batch_tokens=8192)
        y_train = store.per_protein([it.key for it in train]).astype(np.float32)
        y_val = store.per_protein([it.key for it in val]).astype(np.float32)

    backend = OnnxStudent(args.model, "fp32", args.threads).model
    tr = student_outputs(backend, [it.sequence for it in train])
    va = student_outputs(backend, [it.sequence for it in val])
    head = f"teacher_{TEACHER}"
    mu, sd = tr["extras"].mean(0), tr["extras"].std(0) + 1e-6
    rich_tr, rich_va = (tr["extras"] - mu) / sd, (va["extras"] - mu) / sd

    results: dict[str, object] = {
        "train": len(train),
        "val": len(val),
        "head": {"val": mean_cosine(va[head], y_val), "train": mean_cosine(tr[head], y_train)},
    }
    x_tr, x_va = with_ones(tr["student"]), with_ones(va["student"])
    xr_tr, xr_va = with_ones(tr["student"], rich_tr), with_ones(va["student"], rich_va)
    lams = [1.0, 10.0, 100.0, 1000.0, 3000.0]
    results["refit"] = {lam: mean_cosine(x_va @ ridge(x_tr, y_train, lam), y_val) for lam in lams}
    residual = y_train - tr[head]
    results["head_plus_residual"] = {
        lam: mean_cosine(va[head] + x_va @ ridge(x_tr, residual, lam), y_val) for lam in lams
    }
    results["head_plus_rich_residual"] = {
        lam: mean_cosine(va[head] + xr_va @ ridge(xr_tr, residual, lam), y_val) for lam in lams
    }
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
