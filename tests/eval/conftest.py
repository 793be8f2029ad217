"""Fixtures of the evaluation/benchmark tests: a small synthetic copy of the shared data layout (so the
tests do not depend on ../shared/data) and the tiny teachers on the import path, for in-process runs
and for the benchmark's worker subprocesses alike."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

AMINO = "ACDEFGHIKLMNPQRSTVWY"
TINY_TEACHERS = ["alpha=eval_tiny_teachers:alpha", "beta=eval_tiny_teachers:beta"]


@pytest.fixture(autouse=True)
def _teachers_importable(monkeypatch: pytest.MonkeyPatch) -> None:
    """Worker subprocesses inherit PYTHONPATH; put this folder (tiny teachers) and the packages on it."""
    repo = HERE.parents[1]
    parts = [str(HERE), str(repo / "service"), str(repo / "distill")]
    old = os.environ.get("PYTHONPATH")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(parts + ([old] if old else [])))


def _sequence(rng: np.random.Generator, enriched: str, length: int) -> str:
    """Random residues with extra weight on ``enriched``: a label a linear probe on composition can read."""
    weights = np.ones(len(AMINO))
    for aa in enriched:
        weights[AMINO.index(aa)] += 3.0
    idx = rng.choice(len(AMINO), size=length, p=weights / weights.sum())
    return "".join(AMINO[i] for i in idx)


def _write_tsv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join("\t".join(r) for r in [header, *rows]) + "\n")


def make_data_dir(root: Path, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    length = lambda: int(rng.integers(20, 150))  # noqa: E731 - crops at the tiny model's 64 happen too
    locations = {"Nucleus": "KR", "Cytoplasm": "DE", "Extracellular": "CW", "Mitochondrion": "RL"}
    membrane = {"M": "LIVF", "S": "DEQ", "U": ""}
    for split, n in (("train", 80), ("test", 50)):
        rows = []
        for i in range(n):
            loc = list(locations)[i % len(locations)]
            mem = list(membrane)[i % 3]
            rows.append([f"P{split}{i}", _sequence(rng, locations[loc] + membrane[mem], length()), loc, mem])
        _write_tsv(
            root / "eval" / "deeploc" / f"{split}.tsv", ["id", "sequence", "location", "membrane"], rows
        )
        for folder, col, enriched in (
            ("deepsol", "soluble", ("KE", "LF")),
            ("capsid", "capsid", ("GS", "WY")),
        ):
            rows = [
                [f"{folder}_{split}_{i}", _sequence(rng, enriched[i % 2], length()), str(i % 2)]
                for i in range(n)
            ]
            _write_tsv(root / "eval" / folder / f"{split}.tsv", ["id", "sequence", col], rows)
    rows = []
    for i in range(40):
        seq = _sequence(rng, "", length())
        dssp = "".join("H" if c in "ALEMQK" else "E" if c in "VIYFWT" else "C" for c in seq)
        rows.append([f"chain{i}", seq, dssp, "test" if i % 4 == 0 else "train", "False"])
    _write_tsv(
        root / "eval" / "secondary_structure" / "sampled.tsv",
        ["id", "sequence", "dssp3", "set", "validation"],
        rows,
    )
    corpus = root / "corpus" / "corpus.fasta"
    corpus.parent.mkdir(parents=True, exist_ok=True)
    corpus.write_text(
        "".join(f">src|seq{i}\n{_sequence(rng, '', int(rng.integers(20, 300)))}\n" for i in range(400))
    )
    return root


@pytest.fixture(scope="session")
def eval_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_data_dir(tmp_path_factory.mktemp("shared-data"))
