"""The model layer: sequences in, per-item arrays out.

``OnnxModel`` owns everything between a list of normalized sequences and one array per sequence per
output: tokenizing, the ONNX Runtime session (provider choice, variant fallback), running it, cutting the
padding off, warming it up and checking its numbers against the card's reference vectors. The batcher
calls :meth:`OnnxModel.embed` directly; the engine above it keeps the request logic (validation, cache,
dedup, errors). Evaluation and benchmarks use this same class, and tests may hand the batcher any object
with the same ``embed`` (the :class:`Model` protocol).
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from protembed import tokenizer
from protembed.artifact import LoadedModel, ModelCard, check_graph_io, load_model, read_model_card
from protembed.errors import ModelArtifactError
from protembed.providers import CPU, ProviderChoice, choose_providers

log = logging.getLogger(__name__)

AUTO_VARIANT = "auto"
# One model output per sequence: [dim] per protein, [length, dim] per residue.
Outputs = dict[str, list[np.ndarray]]


class Model(Protocol):
    """What the batcher needs of a model."""

    @property
    def provider(self) -> str: ...

    def embed(self, sequences: Sequence[str], outputs: Collection[str]) -> Outputs:
        """For each named ONNX output, one float32 array per sequence, in order (no padding)."""
        ...


def variant_for(card: ModelCard, provider: str) -> str:
    """The file ``model_variant=auto`` serves: int8 on the CPU when the card lists one, else fp32.

    ONNX Runtime's int8 kernels are CPU kernels; on a GPU they would bounce between devices, so GPUs
    keep fp32.
    """
    if provider == CPU and card.file("int8") is not None:
        return "int8"
    return "fp32"


@dataclass
class SessionOptions:
    """How to open an ONNX Runtime session (from the settings object; kept separate so evaluation and
    benchmarks can open a model without a server's settings)."""

    providers: Sequence[str] = (CPU,)
    intra_op_threads: int = 0
    inter_op_threads: int = 0
    spinning: bool = True
    # ONNX Runtime's per-node trace (a JSON file per session, named from this prefix); off in serving.
    profile_prefix: str | None = None
    # Run each attention block as one ONNX Attention node on the CPU (protembed.attention_fusion).
    fuse_attention: bool = True


@dataclass
class OnnxModel:
    """One ONNX Runtime session over one variant of a model folder."""

    loaded: LoadedModel
    session: object  # onnxruntime.InferenceSession (untyped package)
    choice: ProviderChoice
    active_providers: list[str] = field(default_factory=list)
    # The same graph without its per-residue outputs, for batches that ask for none (see per_protein_graph)
    per_protein_session: object = None
    # The card's per-residue ONNX outputs: a batch asking for one of them needs the whole graph
    per_residue_outputs: frozenset[str] = frozenset()
    # Attention blocks the sessions run as one Attention node each (0: the graph as exported)
    fused_attention: int = 0

    @classmethod
    def open(
        cls, folder: str | Path, variant: str = AUTO_VARIANT, options: SessionOptions | None = None
    ) -> OnnxModel:
        """Verify the artifact and open a session. With ``variant='auto'`` the file follows the provider
        that really runs (a listed GPU provider that cannot load leaves the CPU, which serves int8)."""
        import onnxruntime as ort

        options = options or SessionOptions()
        choice = choose_providers(options.providers, ort.get_available_providers())
        log.info("execution provider: %s", choice.reason)
        wanted = (
            variant_for(read_model_card(folder), choice.providers[0]) if variant == AUTO_VARIANT else variant
        )
        model = cls._open_session(load_model(folder, wanted, verify_graph=False), choice, options)
        if variant == AUTO_VARIANT and variant_for(model.card, model.provider) != wanted:
            # ONNX Runtime itself fell back (a device vanished between the probe and the session).
            wanted = variant_for(model.card, model.provider)
            log.info("%s runs the model: serving the %s variant", model.provider, wanted)
            model = cls._open_session(load_model(folder, wanted, verify_graph=False), choice, options)
        return model

    @classmethod
    def _open_session(cls, loaded: LoadedModel, choice: ProviderChoice, options: SessionOptions) -> OnnxModel:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = options.intra_op_threads
        opts.inter_op_num_threads = options.inter_op_threads
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if options.spinning else "0")
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if options.profile_prefix:
            opts.enable_profiling = True
            opts.profile_file_prefix = options.profile_prefix
        providers: list[str | tuple[str, dict[str, str]]] = [
            # fp32 means fp32: no TF32 matmuls on Ampere and later (the self-check's tolerance assumes it)
            (p, {"use_tf32": "0"}) if p == "CUDAExecutionProvider" and loaded.variant == "fp32" else p
            for p in choice.providers
        ]
        per_protein = [o.onnx_output for o in loaded.card.per_protein_outputs()]
        per_residue = frozenset(o.onnx_output for o in loaded.card.outputs if o.level == "per_residue")
        graphs: list[str | bytes] = [str(loaded.onnx_path)]
        if per_residue:
            graphs.append(per_protein_graph(loaded.onnx_path, per_protein))
        # Fused on the CPU only: no GPU was at hand to check ONNX Runtime's CUDA Attention kernel. A
        # failure to fuse is never a failure to load.
        sessions: list[Any] = []  # onnxruntime.InferenceSession (untyped package)
        blocks = 0
        if options.fuse_attention and choice.providers[0] == CPU:
            try:
                fused = [fused_copy(g) for g in graphs]
                if all(n for _, n in fused):
                    sessions = [ort.InferenceSession(g, opts, providers=providers) for g, _ in fused]
                    blocks = fused[0][1]
            except Exception as exc:  # e.g. an onnxruntime without opset 23's Attention (before 1.23)
                log.warning("attention not fused (the graph as exported runs): %s", str(exc).splitlines()[0])
        if not sessions:
            try:
                sessions = [ort.InferenceSession(g, opts, providers=providers) for g in graphs]
            except Exception as exc:  # ORT's exceptions are untyped (onnxruntime.capi...Fail etc.)
                raise ModelArtifactError(f"{loaded.onnx_path}: ONNX Runtime cannot load it: {exc}") from exc
        session = sessions[0]
        check_graph_io(
            loaded.card,
            loaded.onnx_path,
            [i.name for i in session.get_inputs()],
            [o.name for o in session.get_outputs()],
        )
        active = list(session.get_providers())
        if active[0] != choice.providers[0]:
            log.warning("requested %s but ONNX Runtime is using %s", choice.providers[0], active[0])
        log.info(
            "model %s (%s) on %s, %s",
            loaded.onnx_path,
            loaded.variant,
            active,
            f"{blocks} attention blocks fused" if blocks else "attention as exported",
        )
        pruned = sessions[1] if len(sessions) > 1 else None
        return cls(loaded, session, choice, active, pruned, per_residue, blocks)

    # --- what the card says ------------------------------------------------------------------------
    @property
    def card(self) -> ModelCard:
        return self.loaded.card

    @property
    def variant(self) -> str:
        return self.loaded.variant

    @property
    def provider(self) -> str:
        return self.active_providers[0]

    @property
    def provider_reason(self) -> str:
        return self.choice.reason

    # --- running -----------------------------------------------------------------------------------
    def run(self, batch: tokenizer.EncodedBatch, outputs: Sequence[str]) -> dict[str, np.ndarray]:
        """The named ONNX outputs for one padded batch (float32, batch first, padding included)."""
        values = self.session_for(outputs).run(  # type: ignore[attr-defined]
            list(outputs), {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
        )
        return {name: np.asarray(v, dtype=np.float32) for name, v in zip(outputs, values, strict=True)}

    def session_for(self, outputs: Collection[str]) -> object:
        """The session that runs ``outputs``: the per-protein cut when none of them is per residue."""
        if self.per_protein_session is not None and self.per_residue_outputs.isdisjoint(outputs):
            return self.per_protein_session
        return self.session

    def embed(self, sequences: Sequence[str], outputs: Collection[str]) -> Outputs:
        return unpad(self.run(tokenizer.batch_encode(list(sequences)), sorted(outputs)), sequences)

    def warm_up(self) -> None:
        """Run a couple of shapes through every output so the first request pays no lazy initialisation,
        and check the graph's output widths against the card."""
        longest = self.card.max_length
        got = self.embed(
            ["M" + "A" * (min(64, longest) - 1), "MK"[: min(2, longest)]],
            [o.onnx_output for o in self.card.outputs],
        )
        for spec in self.card.outputs:
            dim = got[spec.onnx_output][0].shape[-1]
            if dim != spec.dim:
                raise ModelArtifactError(
                    f"{self.loaded.onnx_path}: output {spec.onnx_output} has dim {dim}, "
                    f"model.json says {spec.dim}"
                )


def fused_copy(graph: str | bytes) -> tuple[str | bytes, int]:
    """A graph (a file's path, or serialized) with its attention fused (:mod:`protembed.attention_fusion`),
    serialized, and how many blocks were fused; ``graph`` itself when none was."""
    import onnx

    from protembed.attention_fusion import fuse_attention

    model = onnx.load(graph) if isinstance(graph, str) else onnx.load_from_string(graph)
    blocks = fuse_attention(model)
    return (bytes(model.SerializeToString()) if blocks else graph), blocks


def per_protein_graph(path: Path, outputs: Sequence[str]) -> bytes:
    """The model at ``path`` cut down to the nodes ``outputs`` need (serialized ONNX).

    Why: ONNX Runtime runs every node of a graph whatever outputs a call fetches (measured: the
    ``only_execute_path_to_fetches`` run option changed nothing), so a per-protein request would pay for
    the per-residue head: about 40% more time on the int8 file. The file itself stays the verified one;
    this copy is derived from it in memory at load.
    """
    import onnx
    from onnx.utils import Extractor

    model = onnx.load(str(path))
    inputs = [i.name for i in model.graph.input]
    pruned = Extractor(model).extract_model(inputs, list(outputs))
    return bytes(pruned.SerializeToString())


def unpad(raw: dict[str, np.ndarray], sequences: Sequence[str]) -> Outputs:
    """One array per sequence from padded batch outputs."""
    lengths = [len(s) for s in sequences]
    result: Outputs = {}
    for name, arr in raw.items():
        if arr.ndim == 3:  # per-residue: cut the padding off each row (a copy, so the padded
            # [batch, longest, dim] block is not kept alive by the rows)
            result[name] = [arr[i, :n].copy() for i, n in enumerate(lengths)]
        else:  # per-protein: row views of the small [batch, dim] output, no per-item copy
            result[name] = list(arr)
    return result
