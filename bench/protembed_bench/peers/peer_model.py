"""The student as a peer server's user would wrap it: ONNX Runtime and numpy only, no protembed import.

Every peer wrapper imports this module from its own virtualenv (protembed is not installed there), so
the peers differ only in their serving framework. A batch is padded to its longest member, as a
framework's dynamic batcher hands it over; that padding is what the comparison is about, so each batch's
real and padded token counts are appended to the file named by ``PROTEMBED_PEER_STATS`` when set.
The harness also uses :class:`PeerModel` on one sequence at a time as the reference for every answer.
"""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

STATS_ENV = "PROTEMBED_PEER_STATS"


class PeerModel:
    """One ONNX Runtime session on a protembed model folder's file of ``variant``; default output only."""

    def __init__(self, folder: str | Path, variant: str, threads: int) -> None:
        import onnxruntime as ort

        folder = Path(folder)
        card = json.loads((folder / "model.json").read_text())
        files = {f["variant"]: f["file"] for f in card["files"]}
        if variant not in files:
            raise ValueError(f"{folder}: no {variant!r} file in model.json (has {sorted(files)})")
        contract = card["input"]
        self.max_length = int(contract["max_length"])
        self.pad_id = int(contract["pad_id"])
        self.input_names = list(contract["onnx_inputs"])  # input_ids, attention_mask
        self.output = next(o["onnx_output"] for o in card["outputs"] if o["name"] == card["default_output"])
        self.lut = np.full(256, int(contract["unknown_id"]), dtype=np.int64)
        for token_id, token in enumerate(contract["tokens"]):
            if len(token) == 1:
                self.lut[ord(token)] = token_id
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # As protembed runs it: the graph cut to the per-protein output, without the per-residue head
        # (ONNX Runtime runs every node whatever a call fetches; a wrapper that ran the whole graph would
        # pay for an output it throws away).
        import onnx
        from onnx.utils import Extractor

        graph = onnx.load(str(folder / files[variant]))
        pruned = Extractor(graph).extract_model([i.name for i in graph.graph.input], [self.output])
        self.session = ort.InferenceSession(
            pruned.SerializeToString(), options, providers=["CPUExecutionProvider"]
        )
        stats = os.environ.get(STATS_ENV)
        self._stats = open(stats, "a", buffering=1) if stats else None  # noqa: SIM115 (lives with the model)

    def encode(self, sequences: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """``input_ids`` and ``attention_mask`` [batch, longest], int64, padded to the longest member."""
        cleaned = [s.strip().upper()[: self.max_length] for s in sequences]
        width = max(len(s) for s in cleaned)
        ids = np.full((len(cleaned), width), self.pad_id, dtype=np.int64)
        for row, seq in enumerate(cleaned):
            ids[row, : len(seq)] = self.lut[np.frombuffer(seq.encode("ascii"), dtype=np.uint8)]
        mask = (ids != self.pad_id).astype(np.int64)
        return ids, mask

    def embed(self, sequences: Sequence[str]) -> np.ndarray:
        """[batch, dim] float32 vectors of the model's default (per-protein) output."""
        ids, mask = self.encode(sequences)
        t0 = time.perf_counter()
        (out,) = self.session.run([self.output], dict(zip(self.input_names, (ids, mask), strict=True)))
        if self._stats is not None:
            self._stats.write(f"{len(ids)} {int(mask.sum())} {ids.size} {time.perf_counter() - t0:.6f}\n")
        return np.asarray(out, dtype=np.float32)


def to_b64(vector: np.ndarray) -> str:
    """A vector on the wire: base64 of little-endian float32, as protembed's ``encoding=base64``."""
    return base64.b64encode(np.ascontiguousarray(vector, dtype="<f4").tobytes()).decode("ascii")


def from_b64(text: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype="<f4")


def model_from_env() -> PeerModel:
    """The model named by the harness's environment (every wrapper starts it the same way)."""
    return PeerModel(
        os.environ["PROTEMBED_PEER_MODEL"],
        os.environ.get("PROTEMBED_PEER_VARIANT", "fp32"),
        int(os.environ.get("PROTEMBED_PEER_THREADS", "2")),
    )


def setting(name: str) -> Any:
    """One batching setting of the harness's choice (``PROTEMBED_PEER_<NAME>``, a JSON value)."""
    return json.loads(os.environ[f"PROTEMBED_PEER_{name.upper()}"])
