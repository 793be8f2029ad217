"""Per-residue retention: a linear probe of secondary structure (Q3) on single residues, fitted on
residues of training chains and scored on every held-out test chain, for the student's per-residue
output as served, each teacher's residue states, both teachers together, and a one-hot window of the
sequence around the residue (the baseline any learned representation should beat).

Intervals come from one bootstrap over test chains shared by every feature set (residues of a chain are
not independent), so the ratios between two feature sets are paired.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from protembed import tokenizer
from protembed_bench import probes

__all__ = ["CLASSES", "q3_table", "window_onehot"]

CLASSES = "CEH"


def window_onehot(seq: str, half: int = 7) -> np.ndarray:
    """One-hot residues in a +-``half`` window around each position: [len, (2*half+1)*VOCAB]."""
    ids = tokenizer.encode(seq)
    padded = np.concatenate([np.zeros(half, np.int64), ids, np.zeros(half, np.int64)])
    out = np.zeros((len(seq), 2 * half + 1, tokenizer.VOCAB_SIZE), dtype=np.float32)
    rows = np.arange(len(seq))
    for off in range(2 * half + 1):
        out[rows, off, padded[rows + off]] = 1.0
    return out.reshape(len(seq), -1)


def _labels(chains: Sequence[str]) -> np.ndarray:
    try:
        return np.array([CLASSES.index(c) for lab in chains for c in lab], dtype=np.int64)
    except ValueError:
        bad = next(c for lab in chains for c in lab if c not in CLASSES)
        raise ValueError(f"secondary-structure label {bad!r} is not one of {CLASSES}") from None


def q3_table(
    features: Mapping[str, tuple[Sequence[np.ndarray], Sequence[np.ndarray]]],
    train_labels: Sequence[str],
    test_labels: Sequence[str],
    *,
    max_train_residues: int = 40_000,
    folds: int = 3,
    grid: Sequence[float] | None = None,
    resamples: int = 1000,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Q3 per feature set (name -> (train chains' [len, dim] arrays, test chains' arrays)).

    Returns the Q3 with its chain-bootstrap interval for each, and every pairwise ratio's paired
    interval (``ratios[a][b]`` = Q3(a) / Q3(b) on the same resampled chains)."""
    y_train, y_test = _labels(train_labels), _labels(test_labels)
    chain = np.concatenate([np.full(len(lab), j) for j, lab in enumerate(test_labels)])
    n_chains = len(test_labels)
    keep = np.sort(np.random.default_rng(seed).permutation(len(y_train))[:max_train_residues])
    dummy = probes.bootstrap_indices(len(y_test), 1, seed)  # intervals come from the chains below
    boot = probes.bootstrap_indices(n_chains, resamples, seed)
    sizes = np.bincount(chain, minlength=n_chains).astype(np.float64)
    results: dict[str, Any] = {}
    samples: dict[str, np.ndarray] = {}
    for name, (train_arrays, test_arrays) in features.items():
        x_train = np.concatenate(train_arrays).astype(np.float32)
        x_test = np.concatenate(test_arrays).astype(np.float32)
        if len(x_train) != len(y_train) or len(x_test) != len(y_test):
            raise ValueError(
                f"{name}: {len(x_train)}/{len(x_test)} residue vectors for "
                f"{len(y_train)}/{len(y_test)} labelled residues"
            )
        res = probes.run_probe(
            x_train[keep],
            y_train[keep],
            x_test,
            y_test,
            "classification",
            metrics=("accuracy",),
            boot_idx=dummy,
            grid=grid,
            folds=folds,
            seed=seed,
        )
        hits = np.bincount(chain, weights=(res.predictions == y_test).astype(np.float64), minlength=n_chains)
        point = float(hits.sum() / sizes.sum())
        samples[name] = hits[boot].sum(axis=1) / sizes[boot].sum(axis=1)
        results[name] = {
            "q3": probes.percentile_interval(point, samples[name]).to_dict(),
            "C": res.regularisation,
            "C_at_grid_edge": res.regularisation_at_grid_edge,
            "dim": int(x_train.shape[1]),
        }
        if log:
            log(f"{name}: Q3 {point:.4f} (C {res.regularisation:g})")
    ratios = {
        a: {
            b: probes.percentile_interval(
                results[a]["q3"]["point"] / results[b]["q3"]["point"], samples[a] / samples[b]
            ).to_dict()
            for b in features
            if b != a
        }
        for a in features
    }
    return {
        "results": results,
        "ratios": ratios,
        "residues": {
            "train_used": len(keep),
            "train_available": len(y_train),
            "test": len(y_test),
        },
        "chains": {"train": len(train_labels), "test": n_chains},
        "resamples": resamples,
        "grid": list(grid) if grid else list(probes.DEFAULT_C_GRID),
    }
