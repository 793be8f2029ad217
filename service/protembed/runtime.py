"""Model backends behind one narrow interface: "run this token batch, give me these outputs".

Callers (the engine's batch function) never branch on which backend it is; the ONNX Runtime session is
the production one, tests may pass any object with the same shape.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from protembed.artifact import LoadedModel, check_graph_io
from protembed.errors import ModelArtifactError
from protembed.tokenizer import EncodedBatch, batch_encode

log = logging.getLogger(__name__)


class Backend(Protocol):
    @property
    def provider(self) -> str: ...

    def run(self, batch: EncodedBatch, outputs: Sequence[str]) -> dict[str, np.ndarray]:
        """The named ONNX outputs for one padded batch (float32, batch first)."""
        ...


def resolve_providers(requested: Sequence[str], available: Sequence[str]) -> list[str]:
    """Requested providers that this onnxruntime build has, in order; CPU is always the last resort."""
    chosen = [p for p in requested if p in available]
    skipped = [p for p in requested if p not in available]
    if skipped:
        log.info("execution providers not in this onnxruntime build, skipped: %s", skipped)
    if "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")
    return chosen


def likely_provider(requested: Sequence[str]) -> str:
    """The provider a session will ask for first, before one exists (it may still fall back)."""
    import onnxruntime as ort

    return resolve_providers(requested, ort.get_available_providers())[0]


class OrtBackend:
    """An ONNX Runtime InferenceSession over one artifact variant."""

    def __init__(
        self,
        model: LoadedModel,
        providers: Sequence[str],
        intra_op_threads: int = 0,
        inter_op_threads: int = 0,
        spinning: bool = True,
    ) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = intra_op_threads
        opts.inter_op_num_threads = inter_op_threads
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        chosen = resolve_providers(providers, ort.get_available_providers())
        try:
            self.session = ort.InferenceSession(str(model.onnx_path), opts, providers=chosen)
        except Exception as exc:  # ORT's exceptions are untyped (onnxruntime.capi...Fail etc.)
            raise ModelArtifactError(f"{model.onnx_path}: ONNX Runtime cannot load it: {exc}") from exc
        self.path: Path = model.onnx_path
        check_graph_io(
            model.card,
            model.onnx_path,
            [i.name for i in self.session.get_inputs()],
            [o.name for o in self.session.get_outputs()],
        )
        # ORT silently falls back (e.g. CUDA listed but no device): report what the session really uses.
        self.active_providers: list[str] = list(self.session.get_providers())
        self.requested_providers = list(providers)
        if self.active_providers[0] != chosen[0]:
            log.warning("requested %s but ONNX Runtime is using %s", chosen[0], self.active_providers[0])
        log.info("model %s on %s", model.onnx_path, self.active_providers)

    @property
    def provider(self) -> str:
        return self.active_providers[0]

    def run(self, batch: EncodedBatch, outputs: Sequence[str]) -> dict[str, np.ndarray]:
        values = self.session.run(
            list(outputs), {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
        )
        return {name: np.asarray(v, dtype=np.float32) for name, v in zip(outputs, values, strict=True)}

    def warm_up(self, outputs: Sequence[str], max_length: int) -> None:
        """Run a couple of shapes once so the first real request pays no lazy initialisation."""
        for length in sorted({min(8, max_length), min(64, max_length)}):
            batch = batch_encode(["M" + "A" * (length - 1), "MK"])
            self.run(batch, outputs)
