"""The serving core: the one async API every transport (REST, gRPC, CLI) calls.

``Engine.embed`` validates and normalizes sequences (errors name the item), applies request limits,
resolves the requested output from the model card, answers from the cache where it can, sends the rest
through the batcher to the model, stitches chunked long sequences back together, writes new vectors to
the cache off the response path, and optionally L2-normalizes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from protembed import __version__, tokenizer
from protembed.artifact import ModelCard, OutputSpec, read_model_card
from protembed.batcher import PRIORITIES, Batcher, BatchingConfig
from protembed.cache import Cache, cache_key, decode_array, encode_array, make_cache
from protembed.errors import (
    InvalidRequestError,
    InvalidSequenceError,
    ModelOutputError,
    NotReadyError,
    RequestTooLargeError,
    SequenceTooLongError,
)
from protembed.metrics import Metrics
from protembed.providers import likely_provider
from protembed.reference import SelfCheck, self_check
from protembed.runtime import AUTO_VARIANT, OnnxModel, SessionOptions, variant_for
from protembed.settings import Settings
from protembed.windows import plan_windows, pool_windows

log = logging.getLogger(__name__)

# Batch token budgets when settings.max_batch_tokens is 0. A CPU runs the student fastest in small
# batches (1.45x at 2,048 padded tokens against 8,192 on two Sapphire Rapids cores: the attention
# scores stay in cache); a GPU wants large ones to fill its cores.
CPU_BATCH_TOKENS = 2048
GPU_BATCH_TOKENS = 16384


def batch_tokens_for(provider: str) -> int:
    return CPU_BATCH_TOKENS if provider == "CPUExecutionProvider" else GPU_BATCH_TOKENS


@dataclass(frozen=True)
class EmbedInput:
    sequence: str
    id: str | None = None


LONG_SEQUENCE_MODES = ("chunk", "truncate", "reject")
MAX_ID_LENGTH = 256  # an id is echoed back: a megabyte one would be copied into every answer


@dataclass(frozen=True)
class EmbedOptions:
    output: str | None = None
    per_residue: bool = False
    normalize: bool = False
    long_sequences: str | None = None  # chunk, truncate or reject; None = the server's setting
    priority: str = "interactive"  # or "bulk": runs when no interactive work waits (with aging)


@dataclass(frozen=True)
class EmbeddingResult:
    index: int
    id: str | None
    embedding: np.ndarray  # float32 [dim] or [length, dim]
    cached: bool
    length: int  # residues embedded (after truncation)
    windows: int = 1  # model windows the vector was computed from (more than 1: chunked)
    truncated: bool = False  # only the first max_length residues were embedded


@dataclass(frozen=True)
class EmbedResponse:
    model: str
    model_version: str
    model_variant: str  # which ONNX file computed the vectors (fp32, int8, fp16)
    output: str
    dim: int
    per_residue: bool
    results: list[EmbeddingResult]
    items: int
    residues: int


def l2_normalize(array: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(array, axis=-1, keepdims=True)
    return (array / np.maximum(norm, 1e-12)).astype(np.float32)


def batching_config(settings: Settings) -> BatchingConfig:
    """The batcher's parameters from the settings (a budget of 0 is settled once the provider is known)."""
    return BatchingConfig(
        max_batch_tokens=settings.max_batch_tokens or GPU_BATCH_TOKENS,
        max_batch_size=settings.max_batch_size,
        max_wait_s=settings.max_wait_ms / 1000.0,
        max_queue_tokens=settings.max_queue_tokens,
        max_padding_ratio=settings.max_padding_ratio,
        policy=settings.batching,
        bulk_max_wait_s=settings.bulk_max_wait_s,
        bulk_queue_share=settings.bulk_queue_share,
        bulk_batch_share=settings.bulk_batch_share,
    )


def session_options(settings: Settings) -> SessionOptions:
    return SessionOptions(
        providers=settings.providers,
        intra_op_threads=settings.intra_op_threads,
        inter_op_threads=settings.inter_op_threads,
        spinning=settings.intra_op_spinning,
        fuse_attention=settings.fuse_attention,
    )


class Engine:
    """The request core: validation, cache, dedup, long-sequence windows and errors around the model
    layer (``runtime.OnnxModel``), which the batcher runs; one per process, shared by REST and gRPC."""

    def __init__(
        self,
        settings: Settings,
        *,
        metrics: Metrics | None = None,
        model: OnnxModel | None = None,
        cache: Cache | None = None,
    ) -> None:
        self.settings = settings
        self.model: OnnxModel | None = model
        self.card: ModelCard = model.card if model is not None else read_model_card(settings.model)
        self.metrics = metrics if metrics is not None else Metrics()
        self.cache: Cache | None = cache
        # Windows must advance: an overlap of half the window or more is cut down for this model (a small
        # model's window cannot share the default 128 residues), with a warning rather than a refusal.
        self.chunk_overlap = min(settings.chunk_overlap, (self.card.max_length - 1) // 2)
        if self.chunk_overlap != settings.chunk_overlap:
            log.warning(
                "chunk_overlap=%d is not below half the model's window (%d): using %d",
                settings.chunk_overlap,
                self.card.max_length,
                self.chunk_overlap,
            )
        self.batcher = Batcher(batching_config(settings), metrics=self.metrics)
        self.self_check: SelfCheck | None = None
        self._ready = False

    @classmethod
    def from_settings(cls, settings: Settings, *, metrics: Metrics | None = None) -> Engine:
        """An engine over ``settings.model``; the card is read now, the session is opened by ``start``."""
        return cls(settings, metrics=metrics)

    @property
    def variant(self) -> str:
        """The file being served, or (before start) the one the settings will most likely serve."""
        if self.model is not None:
            return self.model.variant
        if self.settings.model_variant != AUTO_VARIANT:
            return self.settings.model_variant
        return variant_for(self.card, likely_provider(self.settings.providers))

    # --- lifecycle ---------------------------------------------------------------------------------
    async def start(self) -> None:
        """Open the model, check its numbers, warm it up, start the batcher and the cache. A failed
        self-check leaves the engine not ready (``not_ready_reason`` says why), serving nothing."""
        if self._ready:
            return
        s = self.settings
        if self.model is None:
            self.model = await asyncio.to_thread(OnnxModel.open, s.model, s.model_variant, session_options(s))
            self.card = self.model.card
        model = self.model
        if not s.max_batch_tokens:
            self.batcher.set_budget(batch_tokens_for(model.provider))
        if s.warmup:
            await asyncio.to_thread(model.warm_up)
            self.batcher.seed_throughput(await asyncio.to_thread(self._measure_throughput, model))
        self.self_check = await asyncio.to_thread(self_check, model, model.loaded)
        self.metrics.observe_self_check(self.self_check)
        if not self.self_check.ok:
            log.error("not ready: %s", self.self_check.detail)
            return
        log.info("self-check %s: %s", self.self_check.status, self.self_check.detail)
        if self.cache is None:
            self.cache = make_cache(
                s.redis_url,
                max_bytes=s.cache_max_bytes,
                ttl_s=s.cache_ttl_s,
                timeout_s=s.redis_timeout_s,
                metrics=self.metrics,
                encoding=s.cache_encoding,
            )
        await self.batcher.start(model)
        self.metrics.model_info.info(
            {
                "id": self.card.id,
                "version": self.card.version,
                "variant": model.variant,
                "provider": model.provider,
                "server_version": __version__,
            }
        )
        self._ready = True
        self.metrics.ready.set(1)
        log.info(
            "ready: %s %s (%s) on %s, cache %s",
            self.card.id,
            self.card.version,
            model.variant,
            model.provider,
            self.cache.backend,
        )

    def _measure_throughput(self, model: OnnxModel) -> float:
        """Residues per second of one full batch of mid-length sequences (the Retry-After seed)."""
        length = min(256, self.card.max_length)
        config = self.batcher.config
        count = max(1, min(config.max_batch_size, config.max_batch_tokens // length))
        sequences = [("MKTAYIAKQRQISFVKSHFSRQ" * (length // 22 + 1))[i : i + length] for i in range(count)]
        spec = self.card.output(self.card.default_output)
        assert spec is not None  # the card's validator guarantees it
        start = time.perf_counter()
        model.embed(sequences, [spec.onnx_output])
        return count * length / max(time.perf_counter() - start, 1e-6)

    def mark_draining(self) -> None:
        """Stop being ready and refuse new work at once; queued work still runs (see ``drain``)."""
        self._ready = False
        self.metrics.ready.set(0)
        self.batcher.close()

    async def drain(self, timeout_s: float) -> bool:
        """Finish queued work for up to ``timeout_s``; True when nothing was left."""
        self.mark_draining()
        return await self.batcher.drain(timeout_s)

    async def stop(self) -> None:
        self.mark_draining()
        await self.batcher.stop()
        if self.cache is not None:
            await self.cache.close()
            self.cache = None

    @property
    def ready(self) -> bool:
        return self._ready

    @property
    def not_ready_reason(self) -> str:
        if self._ready:
            return ""
        if self.self_check is not None and not self.self_check.ok:
            return self.self_check.detail
        return "model is loading" if self.model is None or not self.batcher.running else "shutting down"

    @property
    def provider(self) -> str:
        return self.model.provider if self.model is not None else "not started"

    # --- the API -----------------------------------------------------------------------------------
    def resolve_output(self, options: EmbedOptions) -> OutputSpec:
        name = options.output or self.card.default_output
        spec = self.card.output(name)
        if spec is None or spec.level != "per_protein":
            choices = [o.name for o in self.card.per_protein_outputs()]
            raise InvalidRequestError(f"unknown output {name!r}; this model offers {choices}")
        if options.per_residue:
            residue = self.card.per_residue_output(spec.space)
            if residue is None:
                with_residues = [
                    o.name
                    for o in self.card.per_protein_outputs()
                    if self.card.per_residue_output(o.space) is not None
                ]
                raise InvalidRequestError(
                    f"output {name!r} has no per-residue form; per_residue works with {with_residues}"
                )
            return residue
        return spec

    def check_response_size(
        self,
        inputs: Sequence[EmbedInput],
        options: EmbedOptions,
        bytes_per_value: float,
        limit: int,
        what: str,
    ) -> int:
        """Refuse, before any work, a request whose answer would be larger than ``limit`` bytes at
        ``bytes_per_value`` (the transport's encoding); returns the estimate. Sequence lengths are taken
        as sent (an upper bound: normalization only removes characters)."""
        if len(inputs) > self.settings.max_items_per_request:  # before anything costs per-item work
            raise RequestTooLargeError(
                f"{len(inputs)} sequences in one request; the limit is {self.settings.max_items_per_request}"
            )
        spec = self.resolve_output(options)
        if options.per_residue:
            cap = self.card.max_length if self.long_sequence_mode(options) == "truncate" else None
            rows = sum(len(i.sequence) if cap is None else min(cap, len(i.sequence)) for i in inputs)
        else:
            rows = len(inputs)
        estimate = int(rows * spec.dim * bytes_per_value) + 64 * len(inputs)
        if estimate > limit:
            raise RequestTooLargeError(
                f"the response would be about {estimate} bytes, more than {what} of {limit} bytes; send "
                + ("fewer residues per request" if options.per_residue else "fewer sequences per request")
                + (", or ask for encoding=base64 (about 4x smaller)" if bytes_per_value > 8 else "")
            )
        return estimate

    def long_sequence_mode(self, options: EmbedOptions) -> str:
        mode = options.long_sequences or self.settings.long_sequences
        if mode not in LONG_SEQUENCE_MODES:
            raise InvalidRequestError(
                f"long_sequences={mode!r} is not one of {list(LONG_SEQUENCE_MODES)}"
            )
        return mode

    def _validate(self, inputs: Sequence[EmbedInput], mode: str) -> tuple[list[str], list[bool]]:
        """Normalized sequences (cut to the model's window with ``truncate``) and which were cut."""
        s = self.settings
        window = self.card.max_length
        if len(inputs) == 0:
            raise InvalidRequestError("no sequences given; send at least one")
        if len(inputs) > s.max_items_per_request:
            raise RequestTooLargeError(
                f"{len(inputs)} sequences in one request; the limit is {s.max_items_per_request}"
            )
        sequences: list[str] = []
        truncated: list[bool] = []
        for i, item in enumerate(inputs):
            if item.id is not None and len(item.id) > MAX_ID_LENGTH:
                raise InvalidRequestError(
                    f"item {i}: id is {len(item.id)} characters; the limit is {MAX_ID_LENGTH}"
                )
            try:
                seq = tokenizer.normalize(item.sequence, i)
            except InvalidSequenceError as exc:
                raise exc.with_item(i, item.id) from None
            if len(seq) > s.max_sequence_length:
                raise SequenceTooLongError(
                    i, len(seq), s.max_sequence_length, item.id, hint="the server's max_sequence_length"
                )
            cut = len(seq) > window and mode == "truncate"
            if len(seq) > window and mode == "reject":
                raise SequenceTooLongError(
                    i,
                    len(seq),
                    window,
                    item.id,
                    hint="the model's window; send long_sequences='chunk' or 'truncate', or split it",
                )
            sequences.append(seq[:window] if cut else seq)
            truncated.append(cut)
        residues = sum(map(len, sequences))
        if residues > s.max_residues_per_request:
            raise RequestTooLargeError(
                f"{residues} residues in one request; the limit is {s.max_residues_per_request}"
            )
        return sequences, truncated

    async def embed(
        self,
        inputs: Sequence[EmbedInput],
        options: EmbedOptions,
        *,
        deadline: float | None = None,
        cancelled: Callable[[], bool] | None = None,
        before_compute: Callable[[], None] | None = None,
    ) -> EmbedResponse:
        """Cached vectors where present, the model for the rest. ``before_compute`` is called once, on
        the event loop, just before model work is queued (never for an answer wholly from the cache)."""
        if not self._ready or self.cache is None:
            raise NotReadyError("model is not loaded yet; retry shortly")
        spec = self.resolve_output(options)
        mode = self.long_sequence_mode(options)
        if options.priority not in PRIORITIES:
            raise InvalidRequestError(f"priority={options.priority!r} is not one of {list(PRIORITIES)}")
        sequences, truncated = self._validate(inputs, mode)
        per_residue = spec.level == "per_residue"

        unique = list(dict.fromkeys(sequences))
        # The variant is part of the key: int8 and fp32 vectors differ slightly, and replicas sharing
        # one Redis may serve different variants (CPU and GPU nodes under ``auto``). A chunked long
        # sequence's vector also depends on how its windows were cut.
        space = f"{spec.name}@{self.variant}"
        window, overlap = self.card.max_length, self.chunk_overlap
        chunked = f"{space}/chunk{overlap}"
        keys = [
            cache_key(self.card.id, self.card.version, chunked if len(seq) > window else space, seq)
            for seq in unique
        ]
        found: dict[str, np.ndarray] = {}
        for seq, raw in zip(unique, await self.cache.get_many(keys), strict=True):
            arr = decode_array(raw) if raw is not None else None
            expected = (len(seq), spec.dim) if per_residue else (spec.dim,)
            if arr is not None and arr.shape == expected:
                found[seq] = arr
        missing = [seq for seq in unique if seq not in found]
        if missing and before_compute is not None:
            before_compute()
        computed = {}
        if missing:
            computed = await self._compute(missing, spec, options.priority, deadline, cancelled)
        if computed:
            # Each computed vector checked once; the first item that asked for a bad one is named.
            bad = next((seq for seq, vec in computed.items() if not np.isfinite(vec).all()), None)
            if bad is not None:
                i = sequences.index(bad)
                raise ModelOutputError(i, inputs[i].id)
            self.cache.put_many(
                [
                    (key, encode_array(computed[seq]))
                    for seq, key in zip(unique, keys, strict=True)
                    if seq in computed
                ]
            )

        results = []
        for i, (item, seq) in enumerate(zip(inputs, sequences, strict=True)):
            hit = seq in found
            vec = found[seq] if hit else computed[seq]
            if options.normalize:
                vec = l2_normalize(vec)
            windows = len(plan_windows(len(seq), window, overlap))
            results.append(
                EmbeddingResult(
                    index=i,
                    id=item.id,
                    embedding=vec,
                    cached=hit,
                    length=len(seq),
                    windows=windows,
                    truncated=truncated[i],
                )
            )
        hits = sum(r.cached for r in results)
        m = self.metrics
        if hits:
            m.child(m.embedded_items, spec.name, "cache").inc(hits)
        if hits < len(results):
            m.child(m.embedded_items, spec.name, "model").inc(len(results) - hits)
        residues = sum(map(len, sequences))
        self.metrics.embedded_residues.inc(residues)
        name = options.output or self.card.default_output
        return EmbedResponse(
            model=self.card.id,
            model_version=self.card.version,
            model_variant=self.variant,
            output=name,
            dim=spec.dim,
            per_residue=per_residue,
            results=results,
            items=len(results),
            residues=residues,
        )

    async def _compute(
        self,
        sequences: list[str],
        spec: OutputSpec,
        priority: str,
        deadline: float | None,
        cancelled: Callable[[], bool] | None,
    ) -> dict[str, np.ndarray]:
        """Model output for each distinct sequence; long ones (chunk mode) go in as windows."""
        max_len = self.card.max_length
        plans = {seq: plan_windows(len(seq), max_len, self.chunk_overlap) for seq in sequences}
        pieces = [seq[w.start : w.end] for seq in sequences for w in plans[seq]]
        outputs = await self.batcher.submit(
            pieces,
            spec.onnx_output,
            deadline=deadline,
            cancelled=cancelled,
            priority="bulk" if priority == "bulk" else "interactive",
        )
        out: dict[str, np.ndarray] = {}
        pos = 0
        for seq in sequences:
            n = len(plans[seq])
            chunk = outputs[pos : pos + n]
            pos += n
            out[seq] = chunk[0] if n == 1 else pool_windows(plans[seq], chunk, spec.level == "per_residue")
        return out

    def info(self) -> dict[str, object]:
        s = self.settings
        model = self.model
        config, stats = self.batcher.config, self.batcher.stats()
        variant = self.variant
        entry = self.card.file(variant)
        return {
            "server_version": __version__,
            "ready": self._ready,
            "model": {
                "id": self.card.id,
                "version": self.card.version,
                "variant": variant,
                "file": entry.file if entry is not None else None,
                "max_length": self.card.max_length,
            },
            "provider": self.provider,
            "provider_reason": model.provider_reason if model is not None else "not started",
            # how many attention blocks run as one ONNX Attention node (0: the graph as exported)
            "attention_fused": model.fused_attention if model is not None else 0,
            "providers": list(model.active_providers) if model is not None else [],
            "requested_providers": list(s.providers),
            "self_check": self.self_check.as_dict() if self.self_check is not None else None,
            "outputs": [o.model_dump(mode="json") for o in self.card.outputs],
            "default_output": self.card.default_output,
            "limits": {
                "max_items_per_request": s.max_items_per_request,
                "max_residues_per_request": s.max_residues_per_request,
                "max_body_bytes": s.max_body_bytes,
                "grpc_max_message_bytes": s.grpc_max_message_bytes,
                "max_length": self.card.max_length,
                "long_sequences": s.long_sequences,
                "chunk_overlap": self.chunk_overlap,
            },
            "batching": {
                "max_batch_tokens": config.max_batch_tokens,
                "max_batch_size": config.max_batch_size,
                "max_wait_ms": config.max_wait_s * 1000.0,
                "max_queue_tokens": config.max_queue_tokens,
                "policy": config.policy,
                "max_padding_ratio": config.max_padding_ratio,
                "queued_items": stats.queued_items,
                "queued_tokens": stats.queued_tokens,
            },
            "cache": self.cache.describe() if self.cache is not None else {"backend": "not started"},
            "card": self.card.model_dump(mode="json"),
        }
