"""The baseline: raw ONNX Runtime on the benchmark's own sequences in this process, in three batch shapes."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any

from protembed.packing import Budget, pack_sorted
from protembed_bench.serve.config import ServeBenchConfig
from protembed_bench.serve.replay import queue_kwargs, replay_padding


def prepare_raw_ort(
    cfg: ServeBenchConfig, sequences: Sequence[str], batching: dict[str, Any]
) -> Callable[..., dict[str, Any]]:
    """Load the model and encode the stream once; the returned function measures (called several times
    over a run, see :func:`run_serve_bench`).

    Three batch shapes are timed: the stream length-sorted into the server's token budget (the best
    batches any batcher could form from the whole stream at once), one sequence per run, and the batches
    the server's own queue forms from this stream at the top concurrency level (:func:`replay_padding`
    with the server's settings; its simulated clock runs at the sorted rate first measured)."""
    from protembed import tokenizer
    from protembed_bench.onnx_student import OnnxStudent

    student = OnnxStudent(cfg.model_dir, cfg.variant, cfg.threads)
    default = student.card.output(student.card.default_output)
    assert default is not None
    # the server's token budget and size cap, from its /info batching settings, cut as its queue cuts
    budget = Budget(int(batching.get("max_batch_tokens", 16384)), int(batching.get("max_batch_size", 64)))
    batches = [[sequences[j] for j in b] for b in pack_sorted([len(s) for s in sequences], budget)]
    encoded = [tokenizer.batch_encode(b) for b in batches]
    student.model.run(encoded[0], [default.onnx_output])  # warm-up

    def best_pass(runs: list[Any]) -> tuple[float, int, float]:
        """(fastest pass in s, passes, mean s per pass) over the whole stream."""
        times: list[float] = []
        while len(times) < cfg.raw_min_passes or (sum(times) < cfg.raw_min_seconds and len(times) < 50):
            t0 = time.perf_counter()
            for enc in runs:
                student.model.run(enc, [default.onnx_output])
            times.append(time.perf_counter() - t0)
        return min(times), len(times), sum(times) / len(times)

    singles = [tokenizer.batch_encode([s]) for s in sequences]
    residues = sum(len(s) for s in sequences)
    padded = sum(e.padded_tokens for e in encoded)
    formed: list[Any] = []  # the server queue's batches, encoded; built at the first measurement

    def measure(with_singles: bool = True) -> dict[str, Any]:
        # The fastest pass is the limit: on a shared machine the slow passes measure the neighbours, and
        # the server's side of the ratio is its best level too, so both sides are "best seen in this run".
        # One sequence per run is measured too: on a CPU a big padded batch is not always faster per
        # residue (activations outgrow the caches), and the limit is whichever way the hardware is faster.
        # A paired round needs only the server queue's batches (with_singles=False saves that pass).
        seconds, passes, mean_seconds = best_pass(encoded)
        single_seconds = best_pass(singles)[0] if with_singles else math.inf
        if not formed:
            batches_formed: list[list[str]] = []
            replay_padding(
                sequences,
                fifo=False,
                concurrency=max(cfg.levels),
                tokens_per_s=padded / seconds,
                formed=batches_formed,
                **queue_kwargs(batching),
            )
            formed.extend(tokenizer.batch_encode(b) for b in batches_formed)
        formed_seconds, _, formed_mean = best_pass(formed)
        out = {
            "server_batches_residues_per_s": residues / formed_seconds,
            "server_batches_mean_residues_per_s": residues / formed_mean,
            "server_batches": len(formed),
            "server_batches_padding_ratio": 1.0 - residues / sum(e.padded_tokens for e in formed),
            "limit_residues_per_s": residues / min(seconds, single_seconds, formed_seconds),
            "mean_residues_per_s": residues / mean_seconds,
            "sequences": len(sequences),
            "residues": residues,
            "batches": len(batches),
            "padding_ratio": 1.0 - residues / padded,
            "passes": passes,
            "seconds_per_pass": seconds,
            "residues_per_s": residues / seconds,
            "padded_tokens_per_s": padded / seconds,
            "sequences_per_s": len(sequences) / seconds,
        }
        if with_singles:
            out["single_residues_per_s"] = residues / single_seconds
        return out

    return measure
