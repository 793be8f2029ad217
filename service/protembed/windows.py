"""Long sequences as overlapping windows of the model's maximum length, and the vectors pooled back.

The model sees at most ``max_length`` residues at once; a longer protein is cut into windows that
share ``overlap`` residues, each run like any other sequence (same batcher, same token budget), and the
windows' outputs are combined here: per-residue output stitched to the input's length, per-protein
output pooled.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Window:
    """One chunk of a long sequence: it covers [start, end) and owns [own_start, own_end) of it."""

    start: int
    end: int
    own_start: int
    own_end: int


def plan_windows(length: int, max_length: int, overlap: int) -> list[Window]:
    """Overlapping windows of at most ``max_length`` covering ``length`` residues.

    Neighbouring windows share ``overlap`` residues (the last window is aligned to the end, so it may
    share more); each shared stretch is split at its middle, so every residue is owned by exactly one
    window — the one in which it has the most context on both sides.
    """
    if length <= max_length:
        return [Window(0, length, 0, length)]
    if not 0 <= overlap < max_length:
        raise ValueError(f"chunk_overlap {overlap} must be in [0, max_length={max_length})")
    stride = max_length - overlap
    starts = [*list(range(0, length - max_length, stride)), length - max_length]
    spans = [(s, s + max_length) for s in starts]
    windows = []
    for k, (s, e) in enumerate(spans):
        own_start = 0 if k == 0 else (s + spans[k - 1][1]) // 2
        own_end = length if k == len(spans) - 1 else (spans[k + 1][0] + e) // 2
        windows.append(Window(s, e, own_start, own_end))
    return windows


def pool_windows(windows: Sequence[Window], vectors: Sequence[np.ndarray], per_residue: bool) -> np.ndarray:
    """Per-residue: stitch each window's owned residues. Per-protein: mean weighted by owned residues.

    The per-protein outputs are linear heads on a masked mean of per-residue features, so this is a
    weighted mean of features over (window, residue) pairs; each window's mean includes the residues it
    shares with its neighbours, so shared residues count more than once. Measured against the teachers'
    whole-sequence vectors (reports/long_sequences.md, 240 proteins of 513-3,000 residues), no other
    weighting of window outputs does measurably better (plain mean, window length, least-squares even
    residue weights), and chunking beats running the student whole or truncating at every length bin
    but one. What would do better (~+0.01 standardized cosine) is a model that pools each window over
    its owned residues only while attending to all of it: these same owned-residue weights then give
    every residue exactly one vote.
    """
    if per_residue:
        return np.concatenate(
            [v[w.own_start - w.start : w.own_end - w.start] for w, v in zip(windows, vectors, strict=True)]
        )
    weights = np.array([w.own_end - w.own_start for w in windows], dtype=np.float64)
    stacked = np.stack(vectors).astype(np.float64)
    return (weights[:, None] * stacked).sum(0).astype(np.float32) / np.float32(weights.sum())
