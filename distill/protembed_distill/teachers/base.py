"""The one narrow interface every teacher implements: embed a batch of normalized sequences."""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


class TeacherUnavailableError(RuntimeError):
    """A teacher's weights are not on this machine; the message says which command fetches them."""


@dataclass(frozen=True)
class TeacherOutput:
    """Per-protein vectors [batch, dim] (float32) and, when asked for, per-residue arrays [len_i, dim]."""

    per_protein: np.ndarray
    per_residue: list[np.ndarray] | None = None


class Teacher(abc.ABC):
    """A pretrained protein language model used as a distillation target.

    Implementations take already normalized sequences (``protembed.tokenizer.normalize``) and do
    their own model-specific tokenization inside ``embed``. Callers never branch on the kind.
    """

    name: str
    dim: int
    per_residue_dim: int
    max_length: int  # longest sequence the teacher embeds in one piece; longer ones are cropped by callers
    licence: str
    representation: str  # which representation is the per-protein vector, and why, in one line

    @abc.abstractmethod
    def embed(self, sequences: Sequence[str], per_residue: bool = False) -> TeacherOutput:
        """Embed a batch; rows follow the input order."""

    def describe(self) -> dict[str, object]:
        return {
            "name": self.name,
            "dim": self.dim,
            "per_residue_dim": self.per_residue_dim,
            "max_length": self.max_length,
            "licence": self.licence,
            "representation": self.representation,
        }
