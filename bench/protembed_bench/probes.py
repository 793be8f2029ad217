"""Linear probes: how much of a labelled property a frozen embedding exposes to a linear model.

The recipe is the standard one for protein-embedding benchmarks (TAPE, PEER, the light-attention
paper's "linear" rows): standardise the features, fit logistic regression (classification) or ridge
(regression), pick the regularisation strength by K-fold cross-validation on the TRAIN split only, refit
on the whole train split, and score the held-out test split once. Uncertainty comes from a bootstrap
over test items; every model is scored on the *same* resampled index sets, so differences and ratios
between models (retention) get paired intervals rather than two independent ones.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.model_selection import GridSearchCV, KFold, StratifiedKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from protembed.tokenizer import STANDARD_RESIDUES

TaskKind = Literal["classification", "regression"]

CLASSIFICATION_METRICS = ("accuracy", "mcc")
REGRESSION_METRICS = ("spearman", "r2")
# Inverse regularisation strengths for logistic regression on standardised features. High-dimensional
# embeddings (hundreds to thousands of features, hundreds of examples) want strong regularisation, the
# 21 composition features want little, so the grid spans both ends.
DEFAULT_C_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)
DEFAULT_ALPHA_GRID = (1e-2, 1e-1, 1.0, 10.0, 100.0, 1e3, 1e4)
# Scorers GridSearchCV uses to pick the strength, per primary metric.
_CV_SCORING = {"accuracy": "accuracy", "mcc": "matthews_corrcoef", "spearman": "r2", "r2": "r2"}


@dataclass(frozen=True)
class Interval:
    """A point estimate and its bootstrap percentile interval."""

    point: float
    low: float
    high: float

    def to_dict(self) -> dict[str, float]:
        return {"point": self.point, "low": self.low, "high": self.high}


@dataclass(frozen=True)
class ProbeResult:
    """Test-split scores of one probe, with what cross-validation chose on the train split."""

    kind: TaskKind
    metrics: dict[str, Interval]
    regularisation: float  # C for logistic regression, alpha for ridge
    regularisation_at_grid_edge: bool  # the chosen value is an end of the grid: widen it if this is common
    cv_score: float
    n_train: int
    n_test: int
    n_features: int
    predictions: np.ndarray = field(repr=False)  # test predictions, kept for paired comparisons

    def to_dict(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "metrics": {k: v.to_dict() for k, v in self.metrics.items()},
            "regularisation": self.regularisation,
            "regularisation_at_grid_edge": self.regularisation_at_grid_edge,
            "cv_score": self.cv_score,
            "n_train": self.n_train,
            "n_test": self.n_test,
            "n_features": self.n_features,
        }


def composition_features(sequences: Sequence[str]) -> np.ndarray:
    """Baseline features: the 20 standard amino-acid frequencies plus log length, float32 [N, 21].

    Unknown residues (X) count towards the length but not towards any frequency.
    """
    lut = np.full(256, len(STANDARD_RESIDUES), dtype=np.int64)
    for i, aa in enumerate(STANDARD_RESIDUES):
        lut[ord(aa)] = i
    out = np.zeros((len(sequences), len(STANDARD_RESIDUES) + 1), dtype=np.float32)
    for row, seq in enumerate(sequences):
        if not seq:
            raise ValueError(f"composition_features: sequence {row} is empty")
        codes = lut[np.frombuffer(seq.encode("ascii"), dtype=np.uint8)]
        counts = np.bincount(codes, minlength=len(STANDARD_RESIDUES) + 1)[: len(STANDARD_RESIDUES)]
        out[row, :-1] = counts / len(seq)
        out[row, -1] = math.log(len(seq))
    return out


def bootstrap_indices(n: int, resamples: int, seed: int) -> np.ndarray:
    """[resamples, n] test-item indices drawn with replacement; a fixed seed makes them reproducible."""
    if n < 1 or resamples < 1:
        raise ValueError(f"bootstrap needs n >= 1 and resamples >= 1 (got n={n}, resamples={resamples})")
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def _confusions(y_true: np.ndarray, y_pred: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Confusion matrices [resamples, K, K] (rows: true class) of each resample, in one bincount."""
    k = int(max(y_true.max(), y_pred.max())) + 1
    codes = y_true.astype(np.int64) * k + y_pred.astype(np.int64)
    flat = codes[idx] + (np.arange(idx.shape[0]) * k * k)[:, None]
    return np.bincount(flat.ravel(), minlength=idx.shape[0] * k * k).reshape(idx.shape[0], k, k)


def classification_scores(conf: np.ndarray, metric: str) -> np.ndarray:
    """Accuracy or (multi-class, Gorodkin) MCC of each confusion matrix, vectorised."""
    conf = conf.astype(np.float64)
    s = conf.sum(axis=(1, 2))
    c = np.trace(conf, axis1=1, axis2=2)
    if metric == "accuracy":
        return c / s
    if metric == "mcc":
        t = conf.sum(axis=2)  # true counts per class
        p = conf.sum(axis=1)  # predicted counts per class
        num = c * s - (t * p).sum(axis=1)
        den = np.sqrt((s**2 - (p * p).sum(axis=1)) * (s**2 - (t * t).sum(axis=1)))
        # A resample with one predicted (or one true) class has an undefined MCC; sklearn reports 0.
        return np.divide(num, den, out=np.zeros_like(num), where=den > 0)
    raise ValueError(f"unknown classification metric {metric!r}; known: {', '.join(CLASSIFICATION_METRICS)}")


def _regression_score(y_true: np.ndarray, y_pred: np.ndarray, metric: str) -> float:
    if metric == "r2":
        ss_res = float(((y_true - y_pred) ** 2).sum())
        ss_tot = float(((y_true - y_true.mean()) ** 2).sum())
        return 1.0 - ss_res / ss_tot if ss_tot > 0 else 0.0
    if metric == "spearman":
        from scipy.stats import spearmanr

        rho = spearmanr(y_true, y_pred).statistic
        return 0.0 if not np.isfinite(rho) else float(rho)
    raise ValueError(f"unknown regression metric {metric!r}; known: {', '.join(REGRESSION_METRICS)}")


def metric_samples(
    y_true: np.ndarray, y_pred: np.ndarray, metric: str, idx: np.ndarray
) -> tuple[float, np.ndarray]:
    """(score on the full test set, score on each bootstrap resample)."""
    full = np.arange(len(y_true))[None, :]
    if metric in CLASSIFICATION_METRICS:
        point = float(classification_scores(_confusions(y_true, y_pred, full), metric)[0])
        return point, classification_scores(_confusions(y_true, y_pred, idx), metric)
    point = _regression_score(y_true, y_pred, metric)
    return point, np.array([_regression_score(y_true[i], y_pred[i], metric) for i in idx])


def percentile_interval(point: float, samples: np.ndarray, confidence: float = 0.95) -> Interval:
    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = np.nanpercentile(samples, [tail, 100.0 - tail])
    return Interval(point, float(low), float(high))


def bootstrap_interval(
    y_true: np.ndarray, y_pred: np.ndarray, metric: str, idx: np.ndarray, confidence: float = 0.95
) -> Interval:
    point, samples = metric_samples(y_true, y_pred, metric, idx)
    return percentile_interval(point, samples, confidence)


def paired_ratio_interval(
    y_true: np.ndarray,
    pred_num: np.ndarray,
    pred_den: np.ndarray,
    metric: str,
    idx: np.ndarray,
    confidence: float = 0.95,
) -> Interval:
    """score(pred_num) / score(pred_den) with a paired bootstrap interval (same resamples for both).

    Used for retention = student score / best teacher score. Resamples where the denominator is not
    positive are dropped from the interval (they have no meaningful ratio).
    """
    num_point, num = metric_samples(y_true, pred_num, metric, idx)
    den_point, den = metric_samples(y_true, pred_den, metric, idx)
    if den_point <= 0:
        raise ValueError(f"ratio undefined: the reference {metric} is {den_point:.4f} (not positive)")
    ratios = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)
    return percentile_interval(num_point / den_point, ratios, confidence)


def _grid_search(
    kind: TaskKind,
    primary: str,
    grid: Sequence[float],
    folds: int,
    seed: int,
    balanced: bool = False,
    jobs: int = 1,
) -> GridSearchCV:
    if kind == "classification":
        estimator = LogisticRegression(max_iter=2000, class_weight="balanced" if balanced else None)
        param = "clf__C"
        splitter: StratifiedKFold | KFold = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    else:
        estimator = Ridge()
        param = "clf__alpha"
        splitter = KFold(n_splits=folds, shuffle=True, random_state=seed)
    # Scaling sits inside the pipeline so each CV fold standardises with its own training part only.
    pipe = Pipeline([("scale", StandardScaler()), ("clf", estimator)])
    # ``jobs`` > 1 fits the grid's folds in worker processes (one BLAS thread each): the same fits, the
    # same choice, on more cores of an otherwise idle machine.
    return GridSearchCV(pipe, {param: list(grid)}, cv=splitter, scoring=_CV_SCORING[primary], n_jobs=jobs)


def run_probe(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    kind: TaskKind,
    *,
    metrics: Sequence[str] | None = None,
    boot_idx: np.ndarray,
    grid: Sequence[float] | None = None,
    folds: int = 5,
    seed: int = 0,
    threads: int = 1,
    balanced: bool = False,
    jobs: int = 1,
) -> ProbeResult:
    """Fit a probe on train (strength by CV on train only), score test with bootstrap intervals.

    ``balanced`` weighs classes inversely to their frequency (a rare class, such as binding residues,
    would otherwise be predicted almost never, whatever the features).

    Classification labels must be integer codes (see :func:`encode_labels`). ``boot_idx`` comes from
    :func:`bootstrap_indices` for this test set and is shared by every model being compared. The first
    entry of ``metrics`` also drives the cross-validated choice of strength.
    """
    metrics = tuple(metrics or (CLASSIFICATION_METRICS if kind == "classification" else REGRESSION_METRICS))
    if x_train.ndim != 2 or x_test.ndim != 2 or x_train.shape[1] != x_test.shape[1]:
        raise ValueError(
            f"features must be 2-D with equal widths (train {x_train.shape}, test {x_test.shape})"
        )
    if len(x_train) != len(y_train) or len(x_test) != len(y_test):
        raise ValueError("features and labels differ in length")
    if boot_idx.ndim != 2 or boot_idx.shape[1] != len(y_test):
        raise ValueError(f"boot_idx shape {boot_idx.shape} does not match {len(y_test)} test items")
    if not np.isfinite(x_train).all() or not np.isfinite(x_test).all():
        raise ValueError("features contain NaN or infinity")
    if kind == "classification" and len(np.unique(y_train)) < 2:
        raise ValueError("the train split has a single class; a classifier cannot be fitted")
    grid = tuple(grid or (DEFAULT_C_GRID if kind == "classification" else DEFAULT_ALPHA_GRID))
    search = _grid_search(kind, metrics[0], grid, folds, seed, balanced, jobs)
    # BLAS threads are capped: on a shared few-core machine, oversubscribed OpenBLAS threads made these
    # small lbfgs fits ~40x slower than one thread each (measured: 81 s vs 2 s for one 10-class probe).
    with warnings.catch_warnings(), threadpool_limits(limits=threads):
        # Small subsets leave rare classes with fewer members than folds (sklearn warns, still splits),
        # and the weakest regularisation may stop at max_iter on separable data; neither changes the
        # selection, which is recorded in the result.
        warnings.simplefilter("ignore", category=ConvergenceWarning)
        warnings.filterwarnings("ignore", message="The least populated class")
        search.fit(x_train.astype(np.float64), y_train)
        pred = search.predict(x_test.astype(np.float64))
    if kind == "regression":
        pred = pred.astype(np.float64)
    scores = {m: bootstrap_interval(y_test, pred, m, boot_idx) for m in metrics}
    chosen = float(next(iter(search.best_params_.values())))
    return ProbeResult(
        kind=kind,
        metrics=scores,
        regularisation=chosen,
        regularisation_at_grid_edge=chosen in (min(grid), max(grid)),
        cv_score=float(search.best_score_),
        n_train=len(y_train),
        n_test=len(y_test),
        n_features=int(x_train.shape[1]),
        predictions=pred,
    )


def encode_labels(train: Sequence[str], test: Sequence[str]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Map string labels to integer codes shared by both splits; returns (train, test, class names)."""
    classes = sorted(set(train) | set(test))
    index = {c: i for i, c in enumerate(classes)}
    return (
        np.array([index[c] for c in train], dtype=np.int64),
        np.array([index[c] for c in test], dtype=np.int64),
        classes,
    )
