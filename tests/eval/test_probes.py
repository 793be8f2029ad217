"""The probe code on synthetic labelled sets whose answer is known."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, matthews_corrcoef

from protembed_bench import probes


def _separable(n: int, d: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    w = np.random.default_rng(99).normal(size=d)
    x = rng.normal(size=(n, d))
    margin = x @ w
    keep = np.abs(margin) > 0.5  # a clear margin: a linear model must get (almost) everything right
    return x[keep], (margin[keep] > 0).astype(np.int64)


def _probe(xtr, ytr, xte, yte, kind="classification", **kw):  # type: ignore[no-untyped-def]
    idx = probes.bootstrap_indices(len(yte), 500, seed=0)
    return probes.run_probe(xtr, ytr, xte, yte, kind, boot_idx=idx, folds=3, **kw)


def test_linearly_separable_is_learned() -> None:
    xtr, ytr = _separable(300, 8, seed=1)
    xte, yte = _separable(300, 8, seed=2)
    res = _probe(xtr, ytr, xte, yte)
    assert res.metrics["accuracy"].point >= 0.95
    assert res.metrics["mcc"].point >= 0.9
    assert res.n_train == len(ytr) and res.n_test == len(yte) and res.n_features == 8


def test_random_labels_score_at_chance() -> None:
    rng = np.random.default_rng(3)
    xtr, xte = rng.normal(size=(300, 20)), rng.normal(size=(400, 20))
    ytr, yte = rng.integers(0, 2, 300), rng.integers(0, 2, 400)
    res = _probe(xtr, ytr, xte, yte)
    acc = res.metrics["accuracy"]
    assert 0.4 <= acc.point <= 0.6
    assert acc.low <= 0.5 <= acc.high  # chance is inside the interval
    assert abs(res.metrics["mcc"].point) < 0.15


def test_multiclass_composition_signal_beats_chance() -> None:
    """Ten classes, each enriched in one amino acid: the composition baseline must read them."""
    rng = np.random.default_rng(4)
    aas = "ACDEFGHIKLMNPQRSTVWY"

    def make(n: int) -> tuple[list[str], np.ndarray]:
        labels = rng.integers(0, 10, n)
        seqs = []
        for y in labels:
            p = np.ones(20)
            p[y] += 4
            seqs.append(
                "".join(aas[i] for i in rng.choice(20, size=int(rng.integers(50, 200)), p=p / p.sum()))
            )
        return seqs, labels

    str_, ytr = make(300)
    ste, yte = make(200)
    res = _probe(probes.composition_features(str_), ytr, probes.composition_features(ste), yte)
    assert res.metrics["accuracy"].point > 0.8  # chance is 0.1


def test_bootstrap_interval_contains_point_and_matches_sklearn() -> None:
    rng = np.random.default_rng(5)
    y = rng.integers(0, 4, 250)
    pred = np.where(rng.random(250) < 0.6, y, rng.integers(0, 4, 250))
    idx = probes.bootstrap_indices(len(y), 1000, seed=0)
    for metric, reference in (("accuracy", accuracy_score), ("mcc", matthews_corrcoef)):
        iv = probes.bootstrap_interval(y, pred, metric, idx)
        assert iv.low <= iv.point <= iv.high
        assert iv.point == pytest.approx(reference(y, pred), abs=1e-12)
        assert iv.high - iv.low > 0.01  # a real interval, not a degenerate one
    # the vectorised per-resample MCC agrees with sklearn resample by resample
    _, samples = probes.metric_samples(y, pred, "mcc", idx[:20])
    for row, value in zip(idx[:20], samples, strict=True):
        assert value == pytest.approx(matthews_corrcoef(y[row], pred[row]), abs=1e-12)


def test_bootstrap_is_reproducible() -> None:
    assert np.array_equal(probes.bootstrap_indices(50, 10, 7), probes.bootstrap_indices(50, 10, 7))
    assert not np.array_equal(probes.bootstrap_indices(50, 10, 7), probes.bootstrap_indices(50, 10, 8))


def test_regularisation_is_chosen_on_train_only() -> None:
    """Changing the test labels must not change what the probe chose or predicted."""
    rng = np.random.default_rng(6)
    xtr, xte = rng.normal(size=(200, 30)), rng.normal(size=(150, 30))
    ytr = (xtr[:, 0] + 0.8 * rng.normal(size=200) > 0).astype(np.int64)
    yte_a = (xte[:, 0] > 0).astype(np.int64)
    yte_b = 1 - yte_a
    a = _probe(xtr, ytr, xte, yte_a)
    b = _probe(xtr, ytr, xte, yte_b)
    assert a.regularisation == b.regularisation
    assert np.array_equal(a.predictions, b.predictions)
    assert a.metrics["accuracy"].point == pytest.approx(1 - b.metrics["accuracy"].point)


def test_ridge_regression_probe() -> None:
    rng = np.random.default_rng(7)
    w = rng.normal(size=10)
    xtr, xte = rng.normal(size=(300, 10)), rng.normal(size=(200, 10))
    ytr, yte = xtr @ w + 0.1 * rng.normal(size=300), xte @ w + 0.1 * rng.normal(size=200)
    res = _probe(xtr, ytr, xte, yte, kind="regression")
    assert res.metrics["r2"].point > 0.95
    assert res.metrics["spearman"].point > 0.95
    assert res.metrics["r2"].low <= res.metrics["r2"].point <= res.metrics["r2"].high


def test_paired_ratio() -> None:
    rng = np.random.default_rng(8)
    y = rng.integers(0, 2, 200)
    better = np.where(rng.random(200) < 0.9, y, 1 - y)
    worse = np.where(rng.random(200) < 0.7, y, 1 - y)
    idx = probes.bootstrap_indices(200, 500, 0)
    same = probes.paired_ratio_interval(y, better, better, "accuracy", idx)
    assert (same.point, same.low, same.high) == (1.0, 1.0, 1.0)
    ratio = probes.paired_ratio_interval(y, worse, better, "accuracy", idx)
    assert ratio.point == pytest.approx(np.mean(worse == y) / np.mean(better == y))
    assert ratio.low <= ratio.point <= ratio.high < 1.0
    with pytest.raises(ValueError, match="not positive"):
        probes.paired_ratio_interval(y, better, 1 - y, "mcc", idx)  # reference MCC is -1


def test_composition_features() -> None:
    f = probes.composition_features(["AAC", "XXXW"])
    aa = "ACDEFGHIKLMNPQRSTVWY"
    assert f.shape == (2, 21)
    assert f[0, aa.index("A")] == pytest.approx(2 / 3) and f[0, aa.index("C")] == pytest.approx(1 / 3)
    assert f[0, -1] == pytest.approx(math.log(3))
    assert f[1, aa.index("W")] == pytest.approx(1 / 4) and f[1, :20].sum() == pytest.approx(
        1 / 4
    )  # X counts nowhere


def test_bad_input_is_named() -> None:
    idx = probes.bootstrap_indices(5, 10, 0)
    x = np.zeros((5, 3))
    with pytest.raises(ValueError, match="equal widths"):
        probes.run_probe(
            x, np.arange(5) % 2, np.zeros((5, 4)), np.arange(5) % 2, "classification", boot_idx=idx
        )
    with pytest.raises(ValueError, match="single class"):
        probes.run_probe(x, np.zeros(5, int), x, np.arange(5) % 2, "classification", boot_idx=idx)
    with pytest.raises(ValueError, match="NaN"):
        probes.run_probe(
            np.full((5, 3), np.nan), np.arange(5) % 2, x, np.arange(5) % 2, "classification", boot_idx=idx
        )
    with pytest.raises(ValueError, match="boot_idx"):
        probes.run_probe(x, np.arange(5) % 2, x, np.arange(5) % 2, "classification", boot_idx=idx[:, :3])


def test_cross_validation_in_worker_processes_makes_the_same_choice() -> None:
    rng = np.random.default_rng(9)
    xtr, xte = rng.normal(size=(240, 12)), rng.normal(size=(90, 12))
    ytr = (xtr[:, 0] + xtr[:, 1] + rng.normal(size=240) > 0).astype(np.int64)
    yte = (xte[:, 0] + xte[:, 1] > 0).astype(np.int64)
    boot = probes.bootstrap_indices(len(yte), 50, 0)
    one, two = (
        probes.run_probe(xtr, ytr, xte, yte, "classification", boot_idx=boot, folds=3, jobs=j) for j in (1, 2)
    )
    assert one.regularisation == two.regularisation and one.cv_score == pytest.approx(two.cv_score)
    assert np.array_equal(one.predictions, two.predictions)
