"""The exported student run in this process (no server) through the service's own model layer,
:class:`protembed.runtime.OnnxModel`: what evaluation, the model benchmark and the raw ONNX Runtime
baseline of the server benchmark measure, so they run exactly what the server runs.

What this adds to the model layer is the offline caller's side: a token budget per batch over a whole
list, and per-protein outputs stacked into one matrix.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from protembed.packing import Budget, pack_sorted
from protembed.runtime import OnnxModel, SessionOptions


class OnnxStudent:
    """One variant of a model folder on the CPU with ``threads`` intra-op threads."""

    def __init__(self, folder: Path, variant: str = "fp32", threads: int = 1) -> None:
        options = SessionOptions(intra_op_threads=threads, inter_op_threads=1)
        self.model = OnnxModel.open(folder, variant, options)
        self.card = self.model.card
        self.variant = self.model.variant

    def per_protein_outputs(self) -> dict[str, str]:
        """Card output name -> ONNX output name, per-protein outputs only."""
        return {o.name: o.onnx_output for o in self.card.per_protein_outputs()}

    def embed(
        self, sequences: Sequence[str], outputs: Sequence[str], batch_tokens: int
    ) -> dict[str, np.ndarray | list[np.ndarray]]:
        """ONNX outputs for normalized sequences no longer than the card's max length.

        Per-protein outputs come back stacked [N, dim]; ``residue_states`` as one [len_i, dim] array per
        sequence (pad positions sliced off).
        """
        limit = self.card.max_length
        for i, s in enumerate(sequences):
            if len(s) > limit:
                raise ValueError(
                    f"sequence {i} has {len(s)} residues; the model takes at most {limit} (crop first)"
                )
        per_item: dict[str, list[np.ndarray]] = {o: [np.empty(0)] * len(sequences) for o in outputs}
        for batch in pack_sorted([len(s) for s in sequences], Budget(batch_tokens)):
            values = self.model.embed([sequences[i] for i in batch], outputs)
            for name, rows in values.items():
                for row, i in zip(rows, batch, strict=True):
                    per_item[name][i] = row
        return {
            name: (rows if name == "residue_states" else np.stack(rows).astype(np.float32))
            for name, rows in per_item.items()
        }
