"""Small deterministic torch teachers and a tiny config for the distillation unit tests.

Fakes only stand in for the real pretrained teachers, which are too slow for unit tests; the code
under test (cache, student, training, export) is the real code.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from protembed.tokenizer import STANDARD_RESIDUES, encode
from protembed_distill.config import DistillConfig, parse_config
from protembed_distill.teachers.base import Teacher, TeacherOutput


class FakeTeacher(Teacher):
    """Residue states = tanh(table[aa] + 0.5 * mean of neighbours); per protein = mean of states."""

    def __init__(self, name: str, dim: int, seed: int, fail_after_batches: int | None = None) -> None:
        self.name = name
        self.dim = dim
        self.per_residue_dim = dim
        self.max_length = 10_000
        self.licence = "CC BY-NC 4.0" if name == "fake_nc" else "MIT"
        self.representation = "mean of residue states"
        g = torch.Generator().manual_seed(seed)
        self.table = torch.randn(32, dim, generator=g)
        self.calls = 0
        self.embedded: list[str] = []
        self.fail_after_batches = fail_after_batches

    def embed(self, sequences: Sequence[str], per_residue: bool = False) -> TeacherOutput:
        if self.fail_after_batches is not None and self.calls >= self.fail_after_batches:
            raise KeyboardInterrupt("simulated kill")
        self.calls += 1
        self.embedded.extend(sequences)
        per_res = []
        for s in sequences:
            x = self.table[torch.from_numpy(encode(s))]
            ctx = torch.nn.functional.avg_pool1d(x.T.unsqueeze(0), 3, 1, 1, count_include_pad=False)[0].T
            per_res.append(torch.tanh(x + 0.5 * ctx))
        pp = torch.stack([r.mean(0) for r in per_res]).numpy().astype(np.float32)
        return TeacherOutput(pp, [r.numpy() for r in per_res] if per_residue else None)


def loader(**teachers: FakeTeacher) -> Any:
    def load(name: str, **_options: Any) -> Teacher:
        return teachers[name]

    return load


def random_sequences(n: int, lo: int, hi: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice(STANDARD_RESIDUES) for _ in range(rng.randint(lo, hi))) for _ in range(n)]


def write_corpus(path: Path, seqs: Sequence[str], source: str = "src") -> Path:
    path.write_text("".join(f">{source}|s{i}\n{s}\n" for i, s in enumerate(seqs)))
    return path


def tiny_config(tmp_path: Path, corpus: Path, **sections: dict[str, Any]) -> DistillConfig:
    raw: dict[str, Any] = {
        "run": {"dir": str(tmp_path / "run"), "seed": 3, "threads": 1, "embed_batch_tokens": 400},
        "teachers": [
            {"name": "fake_a", "weight": 1.0},
            {"name": "fake_b", "weight": 0.5, "per_residue": True},
        ],
        "data": {"corpus": str(corpus), "max_length": 80, "validation_fraction": 0.2, "min_length": 5},
        "student": {"layers": 1, "d_model": 32, "heads": 4, "ffn": 64, "dropout": 0.0, "max_length": 128},
        "optim": {
            "lr": 3e-3,
            "epochs": 3,
            "batch_tokens": 600,
            "warmup_steps": 2,
            "log_every_steps": 1,
            "patience": 0,
        },
        "output": {"teacher_cache_dir": str(tmp_path / "cache"), "model_dir": str(tmp_path / "model")},
    }
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value} if isinstance(raw.get(key), dict) else value
    return parse_config(raw)


def fake_teachers() -> dict[str, FakeTeacher]:
    return {"fake_a": FakeTeacher("fake_a", 12, 1), "fake_b": FakeTeacher("fake_b", 6, 2)}


def prepared_run(tmp_path: Path, n: int = 48, **sections: dict[str, Any]) -> tuple[DistillConfig, Any]:
    """A tiny config over ``n`` random sequences (``sections`` override its tables), its dataset, and
    the fake teachers' caches filled: what ``train`` needs."""
    from protembed_distill.data.dataset import prepare_dataset
    from protembed_distill.teacher_cache import build_caches

    tmp_path.mkdir(parents=True, exist_ok=True)
    corpus = write_corpus(tmp_path / "c.fasta", random_sequences(n, 10, 90, seed=21))
    cfg = tiny_config(tmp_path, corpus, **sections)
    ds = prepare_dataset(cfg.data, cfg.run.dir, log=False)
    build_caches(cfg, ds.train + ds.val, loader=loader(**fake_teachers()), progress=False)
    return cfg, ds
