"""Replay of batch formation: the core's own ``BatchQueue`` on a request stream with a simulated clock,
with length bucketing or in arrival order (FIFO)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import fields
from typing import Any

from protembed.batcher import BatchingConfig, BatchQueue, Waiter


def queue_kwargs(batching: dict[str, Any]) -> dict[str, Any]:
    """:class:`BatchingConfig` fields from the server's ``/info`` batching settings (ms -> s); what is not
    a field is left out, so a batching option the core adds later is replayed too. The queue bound is
    left out as well: the replay lifts it (nothing is refused)."""
    accepted = {f.name for f in fields(BatchingConfig)} - {"max_queue_tokens"}
    out: dict[str, Any] = {}
    for key, value in batching.items():
        if key.endswith("_ms") and key[:-3] + "_s" in accepted:
            out[key[:-3] + "_s"] = float(value) / 1000.0
        elif key in accepted:
            out[key] = value
    return out


def replay_padding(
    sequences: Sequence[str],
    *,
    fifo: bool,
    concurrency: int,
    tokens_per_s: float,
    formed: list[list[str]] | None = None,
    **queue_settings: Any,
) -> dict[str, float]:
    """Closed-loop replay: ``concurrency`` clients, one model worker taking padded_tokens / rate seconds.

    The queue object (built with the server's own settings, :func:`queue_kwargs`) decides every batch
    exactly as in the server; only time is simulated. The queue bound is lifted: nothing is refused.
    Each batch's sequences are appended to ``formed`` when given.
    """
    now = [0.0]
    settings = {**queue_settings, "policy": "fifo" if fifo else "bucketed", "max_queue_tokens": 2**62}
    queue = BatchQueue(BatchingConfig(**settings), clock=lambda: now[0])
    loop = asyncio.new_event_loop()
    try:
        pending = iter(sequences)

        def send_next() -> None:
            seq = next(pending, None)
            if seq is not None:
                queue.add(seq, Waiter("student", loop.create_future()))

        for _ in range(concurrency):
            send_next()
        padded = real = batches = 0
        while True:
            batch = queue.next_batch(now[0])
            if batch is None:
                due = queue.due_in(now[0])
                if due is None:
                    break
                now[0] += due
                continue
            width = max(e.tokens for e in batch) * len(batch)
            if formed is not None:
                formed.append([e.sequence for e in batch])
            padded += width
            real += sum(e.tokens for e in batch)
            batches += 1
            now[0] += width / tokens_per_s
            queue.finish(batch, width / tokens_per_s)
            for _ in batch:
                send_next()
    finally:
        loop.close()
    return {
        "batches": batches,
        "mean_batch_size": len(sequences) / batches if batches else 0.0,
        "padding_ratio": 1.0 - real / padded if padded else 0.0,
    }
