"""Interactive requests ahead of bulk ones: the queue's decisions with a fake clock, then the engine."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import numpy as np
import pytest

from protembed.batcher import BatchingConfig, BatchQueue, Waiter
from protembed.core import EmbedInput, EmbedOptions, Engine
from protembed.errors import InvalidRequestError, OverloadedError
from protembed.settings import Settings


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def make_queue(clock: Clock, **kw: object) -> BatchQueue:
    opts: dict[str, object] = {
        "max_batch_tokens": 40,
        "max_batch_size": 4,
        "max_wait_s": 0.01,
        "max_queue_tokens": 100,
        "bulk_max_wait_s": 1.0,
        "bulk_queue_share": 0.5,
    }
    opts.update(kw)
    return BatchQueue(BatchingConfig(**opts), clock=clock)  # type: ignore[arg-type]


def waiter(priority: str) -> Waiter:
    loop = asyncio.new_event_loop()
    try:
        return Waiter("student", loop.create_future(), priority=priority)  # type: ignore[arg-type]
    finally:
        loop.close()


def test_interactive_items_go_first_and_bulk_fills_idle_time() -> None:
    clock = Clock()
    q = make_queue(clock)
    for i in range(8):
        q.add(f"B{i}" + "A" * 8, waiter("bulk"))  # a bulk backlog, older
    clock.now = 0.1
    q.add("IX" + "A" * 8, waiter("interactive"))
    batch = q.next_batch()
    assert batch is not None and [e.sequence[:2] for e in batch] == ["IX"]  # not with the backlog
    q.finish(batch, 0.01)
    batch = q.next_batch()  # nothing interactive left: bulk runs
    assert batch is not None and all(e.sequence.startswith("B") for e in batch)


def test_aged_bulk_gets_every_other_batch() -> None:
    """Past bulk_max_wait_s, bulk and interactive batches alternate: bulk progresses under a steady
    interactive load, and an interactive item waits for at most one bulk batch."""
    clock = Clock()
    q = make_queue(clock, max_batch_size=1)
    for i in range(3):
        q.add(f"B{i}" + "A" * 8, waiter("bulk"))
    clock.now = 0.5
    for i in range(3):
        q.add(f"I{i}" + "A" * 8, waiter("interactive"))
    order = []
    for step in range(6):
        if step == 1:
            clock.now = 1.5  # the bulk backlog is now past bulk_max_wait_s
        batch = q.next_batch()
        assert batch is not None
        order.append(batch[0].sequence[:2])
        q.finish(batch, 0.01)
    assert order == ["I0", "B0", "I1", "B1", "I2", "B2"]


def test_bulk_batches_are_smaller_so_interactive_waits_less() -> None:
    clock = Clock()
    q = make_queue(clock, max_batch_tokens=40, max_batch_size=8, bulk_batch_share=0.25)
    for i in range(8):
        q.add(f"B{i}" + "A" * 8, waiter("bulk"))  # 10 residues each
    batch = q.next_batch()
    assert batch is not None and len(batch) == 1  # 10 x 1 fits the bulk budget of 10, 10 x 2 does not
    q.finish(batch, 0.01)
    for i in range(8):
        q.add(f"I{i}" + "A" * 8, waiter("interactive"))
    batch = q.next_batch()
    assert batch is not None and len(batch) == 4 and all(e.sequence[0] == "I" for e in batch)


def test_bulk_fills_only_its_share_of_the_queue() -> None:
    clock = Clock()
    q = make_queue(clock)
    q.add("A" * 40, waiter("bulk"))
    with pytest.raises(OverloadedError, match="bulk limit 50"):
        q.admit(20, "bulk")
    q.admit(20, "interactive")  # room is kept for interactive work
    assert q.queued_bulk_tokens == 40
    q.add("A" * 40, waiter("interactive"))  # an interactive request for the same item promotes it
    assert q.queued_bulk_tokens == 0


async def test_engine_passes_priority_and_refuses_unknown(make_settings: Callable[..., Settings]) -> None:
    eng = Engine.from_settings(make_settings())
    await eng.start()
    try:
        bulk = await eng.embed([EmbedInput("MKTAYIAK")], EmbedOptions(priority="bulk"))
        inter = await eng.embed([EmbedInput("MKTAYIAKQ")], EmbedOptions())
        assert np.isfinite(bulk.results[0].embedding).all() and inter.results[0].embedding.shape == (8,)
        sample = eng.metrics.registry.get_sample_value
        assert sample("protembed_batcher_wait_seconds_count", {"priority": "bulk"}) == 1.0
        assert sample("protembed_batcher_wait_seconds_count", {"priority": "interactive"}) == 1.0
        with pytest.raises(InvalidRequestError, match="priority='urgent'"):
            await eng.embed([EmbedInput("MK")], EmbedOptions(priority="urgent"))
    finally:
        await eng.stop()


async def test_a_cold_server_retry_after_comes_from_measured_throughput(
    make_settings: Callable[..., Settings],
) -> None:
    """Before any real batch ran, a 429's Retry-After is the queue over a throughput measured at warm-up,
    not a fixed 1 s."""
    eng = Engine.from_settings(make_settings())
    await eng.start()
    try:
        stats = eng.batcher.stats()
        assert stats.tokens_per_s > 0 and eng.batcher.batches_run == 0
        q = eng.batcher.queue
        q.queued_tokens = int(stats.tokens_per_s * 7)  # as if seven seconds of work were queued
        assert q.retry_after_s() == pytest.approx(7.0, rel=0.01)
        q.queued_tokens = 0
    finally:
        await eng.stop()
