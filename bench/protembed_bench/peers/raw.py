"""Raw ONNX Runtime on the benchmark's sequences, in this process, with no server: the ceiling.

Two batch shapes: the batches protembed's own queue forms from the stream at the top concurrency level
(``bench serve``'s replay of ``BatchQueue`` with the server's /info settings), which gives "protembed
vs raw ONNX Runtime on the same batches", and the whole stream length-sorted into the server's token
budget, which no online batcher sees. Batches are encoded before timing, as ``bench serve`` does; the
session is a plain :class:`PeerModel` one (the peers' own), not protembed's runtime.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from protembed_bench.peers.peer_model import PeerModel


def prepare(
    model_dir: Path,
    variant: str,
    threads: int,
    sequences: Sequence[str],
    batching: dict[str, Any],
    concurrency: int,
    min_seconds: float,
) -> Callable[[], dict[str, Any]]:
    """Encode both batch shapes once; the returned function times them (mean s per pass over the
    stream, passes repeated until ``min_seconds``)."""
    from protembed.packing import Budget, pack_sorted
    from protembed_bench.serve.replay import queue_kwargs, replay_padding

    model = PeerModel(model_dir, variant, threads)
    residues = sum(len(s) for s in sequences)
    budget = int(batching.get("max_batch_tokens") or 2048)
    cap = int(batching.get("max_batch_size") or 64)
    sorted_batches = [
        [sequences[j] for j in b] for b in pack_sorted([len(s) for s in sequences], Budget(budget, cap))
    ]
    formed: list[list[str]] = []
    # The simulated clock only orders arrivals against batch ends; any plausible rate forms the same
    # kind of batches, and the real rate is measured below.
    replay_padding(
        sequences,
        fifo=False,
        concurrency=concurrency,
        tokens_per_s=20000.0,
        formed=formed,
        **queue_kwargs(batching),
    )
    shapes = {
        "same_batches": [model.encode(b) for b in formed],
        "length_sorted": [model.encode(b) for b in sorted_batches],
    }
    feeds = {k: [dict(zip(model.input_names, enc, strict=True)) for enc in v] for k, v in shapes.items()}
    model.session.run([model.output], feeds["length_sorted"][0])  # warm-up

    def seconds_per_pass(runs: list[dict[str, np.ndarray]]) -> float:
        times: list[float] = []
        while not times or (sum(times) < min_seconds and len(times) < 50):
            t0 = time.perf_counter()
            for feed in runs:
                model.session.run([model.output], feed)
            times.append(time.perf_counter() - t0)
        return sum(times) / len(times)

    def measure() -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, encoded in shapes.items():
            out[f"{name}_residues_per_s"] = residues / seconds_per_pass(feeds[name])
            out[f"{name}_batches"] = len(encoded)
            out[f"{name}_padding"] = 1.0 - residues / sum(ids.size for ids, _ in encoded)
        return out

    return measure
