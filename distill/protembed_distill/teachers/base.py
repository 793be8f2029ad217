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
    # Padded residues per ``embed`` call at which this teacher runs fastest where it was loaded: the
    # default of every caller that fills a cache (``teacher_cache.embed_into``), so that each teacher's
    # batching rule has one home, beside the model it is measured on.
    call_tokens: int = 8192

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


def exact_float32(device: object) -> None:
    """Turn TF32 off for matrix products and cuDNN convolutions when a teacher runs on CUDA.

    TF32 keeps 10 mantissa bits, so a float32 teacher on an Ampere/Hopper GPU would otherwise differ
    from the same teacher on a CPU by ~1e-3 relative: a cache filled on a GPU box must hold the
    teacher's float32 outputs, since CPU machines read it as theirs. The cost is small next to the
    student's training, and these flags are process-wide, so the student's own bf16 autocast is
    unaffected."""
    import torch

    if torch.device(str(device)).type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
