"""Which UniRep representation to expose: a small linear probe on DeepSol solubility.

Embeds a balanced random subset of the DeepSol *training* file (never its test file) with unirep1900
(h_avg) and with unirep256's h_avg of each of its four layers (and their concatenation), then scores
5-fold stratified logistic regression (standardised features) for a few C values. Usage:

    PYTHONPATH=service:distill python distill/protembed_distill/tools/unirep_layer_probe.py \
        --tsv /work/shared/data/eval/deepsol/train.tsv --n 400 --max-length 600 --threads 1
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import numpy as np
import torch
from protembed.tokenizer import normalize
from protembed_distill.teachers.registry import load_teacher
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler


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
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    seqs, y = read_subset(args.tsv, args.n, args.max_length, args.seed)
    feats: dict[str, np.ndarray] = {}
    for layer in (1, 2, 3, 4):
        t0 = time.perf_counter()
        feats[f"unirep256_layer{layer}"] = load_teacher("unirep256", layer=layer).embed(seqs).per_protein
        print(f"unirep256 layer {layer}: {time.perf_counter() - t0:.0f}s", flush=True)
    feats["unirep256_concat4"] = np.concatenate([feats[f"unirep256_layer{k}"] for k in (1, 2, 3, 4)], axis=1)
    t0 = time.perf_counter()
    feats["unirep1900"] = load_teacher("unirep1900").embed(seqs).per_protein
    print(f"unirep1900: {time.perf_counter() - t0:.0f}s", flush=True)

    cv = StratifiedKFold(5, shuffle=True, random_state=args.seed)
    results: dict[str, dict[str, float]] = {}
    for name, x in feats.items():
        results[name] = {}
        for c in (0.001, 0.01, 0.1, 1.0):
            model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=3000))
            results[name][f"C={c}"] = round(float(cross_val_score(model, x, y, cv=cv).mean()), 3)
        print(name, results[name], flush=True)
    print(json.dumps({"n": len(seqs), "max_length": args.max_length, "accuracy_5fold": results}, indent=1))


if __name__ == "__main__":
    main()
