"""Per-protein retention: linear probes (StandardScaler + logistic regression, C by 3-fold CV on train)
on each task, every model scored on the same test rows with one shared bootstrap, so the retention
ratio student / best teacher gets a paired interval.

The teachers' test predictions travel with the result (class codes, in ``predictions``): a teacher's
probe depends only on its own vectors and the labels, so a later run can score a new student against
them, paired on the same rows and resamples, without the hours of CPU the teachers' vectors cost."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from protembed_bench import probes

__all__ = ["TASK_METRICS", "cosine_table", "probe_task"]

# The first metric picks C and the best teacher; capsid also reports MCC (its classes are unbalanced).
TASK_METRICS: dict[str, tuple[str, ...]] = {
    "deeploc": ("accuracy",),
    "deeploc_membrane": ("accuracy",),
    "deepsol": ("accuracy",),
    "capsid": ("accuracy", "mcc"),
}


def probe_task(
    task: str,
    features: Mapping[str, tuple[np.ndarray, np.ndarray]],
    train_y: Sequence[str],
    test_y: Sequence[str],
    *,
    teachers: Sequence[str] = (),
    kept: Mapping[str, Sequence[int]] | None = None,
    reference: str | None = None,
    candidates: Sequence[str] = (),
    folds: int = 3,
    grid: Sequence[float] | None = None,
    resamples: int = 1000,
    seed: int = 0,
    jobs: int = 1,
) -> dict[str, Any]:
    """Scores of every feature set (name -> (train matrix, test matrix)) and, for each non-teacher, its
    retention against the best of ``teachers`` (names in ``features`` or ``kept``) per metric, paired.

    ``kept``: name -> test predictions (class codes of this task's sorted classes) of an earlier run's
    probe, scored here as they are. ``candidates`` are also scored against ``reference`` (a new model
    against the bundled one: the rule "no worse on any set"), paired the same way."""
    metrics = TASK_METRICS[task]
    y_train, y_test, classes = probes.encode_labels(train_y, test_y)
    boot = probes.bootstrap_indices(len(y_test), resamples, seed)
    results: dict[str, Any] = {}
    preds: dict[str, np.ndarray] = {}
    for name, codes in (kept or {}).items():
        pred = np.asarray(codes, dtype=np.int64)
        if pred.shape != y_test.shape or pred.min() < 0 or pred.max() >= len(classes):
            raise ValueError(
                f"{task}: kept predictions of {name!r} do not fit this test set "
                f"({pred.shape[0]} codes for {len(y_test)} rows and {len(classes)} classes)"
            )
        preds[name] = pred
        results[name] = {m: probes.bootstrap_interval(y_test, pred, m, boot).to_dict() for m in metrics}
        results[name]["kept"] = True
    for name, (x_train, x_test) in features.items():
        res = probes.run_probe(
            x_train,
            y_train,
            x_test,
            y_test,
            "classification",
            metrics=metrics,
            boot_idx=boot,
            grid=grid,
            folds=folds,
            seed=seed,
            jobs=jobs,
        )
        preds[name] = res.predictions
        results[name] = {
            **{m: res.metrics[m].to_dict() for m in metrics},
            "C": res.regularisation,
            "C_at_grid_edge": res.regularisation_at_grid_edge,
            "dim": res.n_features,
        }
    for name, pred in preds.items():  # where a model loses or gains: recall of each class
        results[name]["recall_by_class"] = {
            c: float((pred[y_test == k] == k).mean()) for k, c in enumerate(classes) if (y_test == k).any()
        }
    retention: dict[str, Any] = {}
    for m in metrics:
        if not teachers:
            break
        best = max(teachers, key=lambda t: results[t][m]["point"])
        if results[best][m]["point"] <= 0:
            continue  # a ratio to an MCC at or below chance is undefined: no row rather than a crash
        for name in features:
            if name in teachers:
                continue
            r = probes.paired_ratio_interval(y_test, preds[name], preds[best], m, boot)
            retention.setdefault(name, {})[m] = {"vs": best, **r.to_dict()}
    vs_reference = {
        name: {
            m: probes.paired_ratio_interval(y_test, preds[name], preds[reference], m, boot).to_dict()
            for m in metrics
            if results[reference][m]["point"] > 0
        }
        for name in candidates
        if reference is not None
    }
    return {
        "task": task,
        "classes": classes,
        "n_train": len(y_train),
        "n_test": len(y_test),
        "metrics": list(metrics),
        "grid": list(grid) if grid else list(probes.DEFAULT_C_GRID),
        "results": results,
        "retention": retention,
        "predictions": {t: preds[t].tolist() for t in teachers},
        **({"vs_reference": {"reference": reference, "ratios": vs_reference}} if vs_reference else {}),
    }


# Length bins of the cosine table: the student's window is 512; longer sequences are served as
# overlapping windows pooled together, so their agreement is shown apart.
LENGTH_BINS = (256, 512)


def cosine_table(
    pairs: Mapping[str, tuple[np.ndarray, np.ndarray]],
    lengths: Sequence[int],
    *,
    resamples: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """How close a student's teacher heads come to the teachers' own vectors, row by row: name ->
    (predicted [N, D], teacher [N, D]) in the teacher's units, ``lengths`` the rows' residue counts. Per
    name: the mean cosine with a bootstrap interval over rows, the 5th percentile, the share of rows at
    0.90 or more (the issue's bar), and the mean within each length bin."""
    length = np.asarray(lengths)
    edges = [0, *LENGTH_BINS]
    bins = {f"{lo + 1}-{hi}": (length > lo) & (length <= hi) for lo, hi in itertools.pairwise(edges)}
    bins[f">{edges[-1]}"] = length > edges[-1]
    out: dict[str, Any] = {}
    for name, (pred, target) in pairs.items():
        if pred.shape != target.shape or len(length) != len(pred):
            raise ValueError(
                f"{name}: predicted {pred.shape} vs teacher {target.shape}, {len(length)} lengths"
            )
        a = pred.astype(np.float64)
        b = target.astype(np.float64)
        cos = (a * b).sum(axis=1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
        boot = probes.bootstrap_indices(len(cos), resamples, seed)
        mean = probes.percentile_interval(float(cos.mean()), cos[boot].mean(axis=1))
        out[name] = {
            "rows": len(cos),
            "mean": mean.to_dict(),
            "p05": float(np.percentile(cos, 5)),
            "share_at_least_0.90": float((cos >= 0.90).mean()),
            "by_length": {
                label: {"rows": int(m.sum()), "mean": float(cos[m].mean())}
                for label, m in bins.items()
                if m.any()
            },
        }
    return out
