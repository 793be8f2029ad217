"""Which UniRep representation to expose: a small linear probe on DeepSol solubility.

Embeds a balanced random subset of the DeepSol *training* file (never its test file) with unirep1900
(h_avg) and with unirep256's h_avg of each of its four layers (and their concatenation), then scores
logistic regression by 3x repeated stratified 5-fold CV, on raw and on standardised features, for a
few C values. Features are cached in ``--features`` so the scoring can be re-run cheaply. Usage:

    PYTHONPATH=service:distill python distill/protembed_distill/tools/unirep_layer_probe.py \
        --tsv /work/shared/data/eval/deepsol/train.tsv --n 1000 --max-length 500 --threads 1
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import RepeatedStratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from protembed.tokenizer import normalize
from protembed_distill.teachers.registry import load_teacher


def read_subset(tsv: Path, n: int, max_length: int, seed: int) -> tuple[list[str], np.ndarray]:
    with open(tsv, newline="") as f:
        rows = [r for r in csv.DictReader(f, delimiter="\t") if len(r["sequence"]) <= max_length]
    labels = np.array([int(r["soluble"]) for r in rows])
    rng = np.random.default_rng(seed)
    picked: list[int] = []
    for cls in (0, 1):
        idx = np.flatnonzero(labels == cls)
        picked += list(rng.choice(idx, size=n // 2, replace=False))
    return [normalize(rows[i]["sequence"], i) for i in picked], labels[picked]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tsv", type=Path, required=True)
    parser.add_argument("--n", type=int, default=400)
    parser.add_argument("--max-length", type=int, default=600)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--features", type=Path, default=Path("/tmp/unirep_probe_features.npz"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    seqs, y = read_subset(args.tsv, args.n, args.max_length, args.seed)
    if args.features.is_file():
        with np.load(args.features) as cached:
            if cached["y"].tolist() == y.tolist():
                score({k: cached[k] for k in cached.files if k != "y"}, y, args)
                return
    feats: dict[str, np.ndarray] = {}
    for layer in (1, 2, 3, 4):
        t0 = time.perf_counter()
        feats[f"unirep256_layer{layer}"] = load_teacher("unirep256", layer=layer).embed(seqs).per_protein
        print(f"unirep256 layer {layer}: {time.perf_counter() - t0:.0f}s", flush=True)
    feats["unirep256_concat4"] = np.concatenate([feats[f"unirep256_layer{k}"] for k in (1, 2, 3, 4)], axis=1)
    t0 = time.perf_counter()
    feats["unirep1900"] = load_teacher("unirep1900").embed(seqs).per_protein
    print(f"unirep1900: {time.perf_counter() - t0:.0f}s", flush=True)
    arrays: dict[str, Any] = {"y": y, **feats}  # Any: numpy's savez stub reads **kwds as allow_pickle
    np.savez(args.features, **arrays)
    score(feats, y, args)


def score(feats: dict[str, np.ndarray], y: np.ndarray, args: argparse.Namespace) -> None:
    cv = RepeatedStratifiedKFold(n_splits=5, n_repeats=3, random_state=args.seed)
    results: dict[str, dict[str, float]] = {}
    for name, x in feats.items():
        results[name] = {}
        for scaled in (False, True):
            for c in (0.001, 0.01, 0.1, 1.0, 10.0):
                steps = [StandardScaler()] if scaled else []
                model = make_pipeline(*steps, LogisticRegression(C=c, max_iter=5000))
                key = f"{'std' if scaled else 'raw'} C={c}"
                results[name][key] = round(float(cross_val_score(model, x, y, cv=cv).mean()), 3)
        best = max(results[name], key=lambda k: results[name][k])
        print(f"{name}: best {best} {results[name][best]}", results[name], flush=True)
    print(json.dumps({"n": len(y), "max_length": args.max_length, "accuracy_cv": results}, indent=1))


if __name__ == "__main__":
    main()
