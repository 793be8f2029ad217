"""Per-residue retention: linear probes on single residues, fitted on residues of training chains and
scored on every held-out test chain, for the student's per-residue output as served, each teacher's
residue states, both teachers together, and a one-hot window of the sequence around the residue (the
baseline any learned representation should beat).

Two label sets (:data:`TASKS`): secondary structure (3 states, Q3 accuracy) and ligand binding (binding
or not, MCC: about one residue in ten binds, so accuracy would reward predicting "no" everywhere).

Intervals come from one bootstrap over test chains shared by every feature set (residues of a chain are
not independent), so the ratios between two feature sets are paired.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from protembed import tokenizer
from protembed_bench import probes

__all__ = [
    "BINDING",
    "CLASSES",
    "SECONDARY_STRUCTURE",
    "TASKS",
    "ResidueTask",
    "q3_table",
    "residue_table",
    "window_onehot",
]

CLASSES = "CEH"


@dataclass(frozen=True, eq=False)  # identity: the tasks are the module's constants, used as dict keys
class ResidueTask:
    """A per-residue label set: how its label letters map to classes, and the metric it is scored by."""

    name: str
    title: str
    metric: str  # a probes classification metric ("accuracy" or "mcc")
    key: str  # what the score is called in tables (Q3, MCC)
    classes: Mapping[str, int]
    # Weigh classes inversely to their frequency in the probe: binding residues are ~10%, and an
    # unweighted probe predicted "not binding" nearly everywhere (MCC 0.00-0.04 for every feature set,
    # measured), which compares nothing.
    balanced: bool = False

    def encode(self, chains: Sequence[str]) -> np.ndarray:
        try:
            return np.array([self.classes[c] for lab in chains for c in lab], dtype=np.int64)
        except KeyError:
            bad = next(c for lab in chains for c in lab if c not in self.classes)
            known = "".join(self.classes)
            raise ValueError(f"{self.name} label {bad!r} is not one of {known}") from None


SECONDARY_STRUCTURE = ResidueTask(
    "secondary_structure", "secondary structure (Q3)", "accuracy", "Q3", {c: i for i, c in enumerate(CLASSES)}
)
# FLIP bind labels are 3-bit codes (small molecule, nucleic acid, metal): 0 = no ligand, 1-7 = some.
BINDING = ResidueTask(
    "binding",
    "ligand binding (MCC, binding vs not; class-balanced probe)",
    "mcc",
    "MCC",
    {str(i): int(i > 0) for i in range(8)},
    balanced=True,
)
TASKS = {t.name: t for t in (SECONDARY_STRUCTURE, BINDING)}


def window_onehot(seq: str, half: int = 7) -> np.ndarray:
    """One-hot residues in a +-``half`` window around each position: [len, (2*half+1)*VOCAB]."""
    ids = tokenizer.encode(seq)
    padded = np.concatenate([np.zeros(half, np.int64), ids, np.zeros(half, np.int64)])
    out = np.zeros((len(seq), 2 * half + 1, tokenizer.VOCAB_SIZE), dtype=np.float32)
    rows = np.arange(len(seq))
    for off in range(2 * half + 1):
        out[rows, off, padded[rows + off]] = 1.0
    return out.reshape(len(seq), -1)


def residue_table(
    features: Mapping[str, tuple[Sequence[np.ndarray], Sequence[np.ndarray]]],
    train_labels: Sequence[str],
    test_labels: Sequence[str],
    task: ResidueTask = SECONDARY_STRUCTURE,
    *,
    max_train_residues: int = 40_000,
    folds: int = 3,
    grid: Sequence[float] | None = None,
    resamples: int = 1000,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """``task``'s score per feature set (name -> (train chains' [len, dim] arrays, test chains' arrays)).

    Returns the score with its chain-bootstrap interval for each (``results[name]["score"]``), and every
    pairwise ratio's paired interval (``ratios[a][b]`` = score(a) / score(b) on the same resampled
    chains)."""
    y_train, y_test = task.encode(train_labels), task.encode(test_labels)
    n_classes = max(task.classes.values()) + 1
    chain = np.concatenate([np.full(len(lab), j) for j, lab in enumerate(test_labels)])
    n_chains = len(test_labels)
    keep = np.sort(np.random.default_rng(seed).permutation(len(y_train))[:max_train_residues])
    dummy = probes.bootstrap_indices(len(y_test), 1, seed)  # intervals come from the chains below
    boot = probes.bootstrap_indices(n_chains, resamples, seed)
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
            metrics=(task.metric,),
            boot_idx=dummy,
            grid=grid,
            folds=folds,
            seed=seed,
            balanced=task.balanced,
        )
        # One confusion matrix per test chain; a resample of chains sums its chains' matrices, so any
        # metric of a confusion matrix (accuracy, MCC) gets a chain-level interval.
        codes = chain * n_classes * n_classes + y_test * n_classes + res.predictions.astype(np.int64)
        per_chain = np.bincount(codes, minlength=n_chains * n_classes * n_classes).reshape(
            n_chains, n_classes, n_classes
        )
        point = float(probes.classification_scores(per_chain.sum(axis=0)[None], task.metric)[0])
        samples[name] = probes.classification_scores(per_chain[boot].sum(axis=1), task.metric)
        results[name] = {
            "score": probes.percentile_interval(point, samples[name]).to_dict(),
            "C": res.regularisation,
            "C_at_grid_edge": res.regularisation_at_grid_edge,
            "dim": int(x_train.shape[1]),
        }
        if log:
            log(f"{task.name}: {name}: {task.key} {point:.4f} (C {res.regularisation:g})")
    ratios = {
        a: {
            b: probes.percentile_interval(
                results[a]["score"]["point"] / results[b]["score"]["point"],
                np.where(samples[b] > 0, samples[a] / np.where(samples[b] > 0, samples[b], 1.0), np.nan),
            ).to_dict()
            for b in features
            if b != a and results[b]["score"]["point"] > 0
        }
        for a in features
    }
    return {
        "task": task.name,
        "metric": task.key,
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


def q3_table(
    features: Mapping[str, tuple[Sequence[np.ndarray], Sequence[np.ndarray]]],
    train_labels: Sequence[str],
    test_labels: Sequence[str],
    **kwargs: Any,
) -> dict[str, Any]:
    """:func:`residue_table` for secondary structure (Q3)."""
    return residue_table(features, train_labels, test_labels, SECONDARY_STRUCTURE, **kwargs)
