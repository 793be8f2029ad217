"""Checks every teacher must pass, whatever its architecture."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def assert_padding_never_changes_a_result(teacher: Any, seqs: Sequence[str], atol: float) -> Any:
    """Each sequence embedded in one padded batch equals it embedded alone (per protein and per
    residue): padding must be masked out everywhere. Returns the batched result for further checks."""
    batched = teacher.embed(list(seqs), per_residue=True)
    assert batched.per_residue is not None
    for i, seq in enumerate(seqs):
        alone = teacher.embed([seq], per_residue=True)
        assert alone.per_residue is not None
        np.testing.assert_allclose(batched.per_protein[i], alone.per_protein[0], atol=atol, rtol=0)
        np.testing.assert_allclose(batched.per_residue[i], alone.per_residue[0], atol=atol, rtol=0)
    return batched
