"""Property tests of the batch queue: random streams, random clocks, and a brute-force planner.

The example tests in test_batcher.py pin single decisions; these check the invariants every decision
must keep, on streams hypothesis draws (and shrinks to a minimal counterexample when one breaks).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protembed.batcher import BatchingConfig, BatchQueue, Entry, Waiter

# Waiters hold futures; the queue never awaits them, so a loop that never runs is enough to make them.
_LOOP = asyncio.new_event_loop()

PROPS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module", autouse=True)
def _close_loop() -> Iterator[None]:
    yield
    _LOOP.close()


def waiter() -> Waiter:
    return Waiter("student", _LOOP.create_future())


def queue(clock: list[float], *, tokens: int, size: int, bound: float, policy: str) -> BatchQueue:
    config = BatchingConfig(
        max_batch_tokens=tokens,
        max_batch_size=size,
        max_wait_s=1.0,
        max_queue_tokens=10**9,
        max_padding_ratio=bound,
        policy=policy,  # type: ignore[arg-type]
    )
    return BatchQueue(config, clock=lambda: clock[0])


def best_run_brute_force(q: BatchQueue, due: bool) -> tuple[float, int]:
    """(fill, real tokens) of the best run, by trying every run of the length-sorted queue."""
    entries = list(q.pending.values())
    order = sorted(range(len(entries)), key=lambda i: entries[i].tokens)
    toks = [entries[i].tokens for i in order]
    keep = (1.0 - q.max_padding_ratio) * (1.0 - 1e-12)
    best = (0.0, 0)
    for r in range(len(toks)):
        longest = toks[r]
        cap = max(1, min(q.max_batch_size, q.max_batch_tokens // longest))
        for lo in range(max(0, r - cap + 1), r + 1):
            if due and 0 not in order[lo : r + 1]:
                continue
            real = sum(toks[lo : r + 1])
            if real < keep * (r - lo + 1) * longest:
                continue
            fill = real / (cap * longest)
            best = max(best, (fill, real))
    return best


def assert_within_limits(batch: list[Entry], size: int, tokens: int, bound: float | None) -> None:
    """Size cap and token budget (a lone item always fits); the padding bound unless ``bound`` is None."""
    toks = [e.tokens for e in batch]
    longest = max(toks)
    assert len(batch) == 1 or (len(batch) <= size and len(batch) * longest <= tokens), toks
    if bound is not None:
        assert 1.0 - sum(toks) / (len(batch) * longest) <= bound + 1e-9, toks


lengths = st.lists(st.integers(min_value=1, max_value=120), min_size=1, max_size=40)


@PROPS
@given(
    lens=lengths,
    tokens=st.integers(min_value=1, max_value=600),
    size=st.integers(min_value=1, max_value=12),
    bound=st.sampled_from([0.0, 0.05, 0.1, 0.25, 1.0]),
    due=st.booleans(),
)
def test_bucketed_plan_is_the_best_run(
    lens: list[int], tokens: int, size: int, bound: float, due: bool
) -> None:
    clock = [0.0]
    q = queue(clock, tokens=tokens, size=size, bound=bound, policy="bucketed")
    for i, n in enumerate(lens):
        q.add(f"{i}:" + "A" * n, waiter())
    entries = list(q.pending.values())
    plan = q._plan_bucketed(entries, due, q.budget(bulk=False))
    toks = [e.tokens for e in plan]
    longest = max(toks)
    cap = max(1, min(size, tokens // longest))
    # the bisection finds what trying every run finds
    assert (sum(toks) / (cap * longest), sum(toks)) == pytest.approx(best_run_brute_force(q, due))
    assert_within_limits(plan, size, tokens, bound)
    if due:
        assert entries[0] in plan


# One step of a stream: add an item of this length, let time pass, ask for a batch, finish the oldest
# running batch.
step = st.one_of(
    st.tuples(st.just("add"), st.integers(min_value=1, max_value=150)),
    st.tuples(st.just("tick"), st.sampled_from([0.1, 0.5, 1.0, 2.0])),
    st.tuples(st.just("next"), st.booleans()),
    st.tuples(st.just("finish"), st.just(0)),
)


@PROPS
@given(
    steps=st.lists(step, max_size=80),
    policy=st.sampled_from(["bucketed", "fifo"]),
    tokens=st.integers(min_value=50, max_value=800),
    size=st.integers(min_value=1, max_value=10),
    bound=st.sampled_from([0.0, 0.1, 0.3]),
)
def test_every_item_runs_once_within_the_limits(
    steps: list[tuple[str, object]], policy: str, tokens: int, size: int, bound: float
) -> None:
    clock = [0.0]
    q = queue(clock, tokens=tokens, size=size, bound=bound, policy=policy)
    added: list[str] = []
    ran: list[str] = []
    running: list[list[Entry]] = []

    def dispatch(force: bool) -> list[Entry] | None:
        before = list(q.pending.values())
        idle, due = not q.running, bool(before) and q.due_in(clock[0]) == 0.0
        batch = q.next_batch(force=force)
        if batch is None:
            # it held back only with a batch in flight, nothing due and nothing forced
            assert not before or not (idle or due or force)
            return None
        # fifo has no padding bound (it is the baseline), but keeps arrival order from the oldest
        assert_within_limits(batch, size, tokens, bound if policy == "bucketed" else None)
        if policy == "fifo":
            assert batch == before[: len(batch)]
        if due:
            assert before[0] in batch  # the oldest item is never passed over once due
        ran.extend(e.sequence for e in batch)
        running.append(batch)
        return batch

    for kind, arg in steps:
        if kind == "add":
            s = f"{len(added)}:" + "A" * int(arg)  # type: ignore[call-overload]
            q.add(s, waiter())
            added.append(s)
        elif kind == "tick":
            clock[0] += float(arg)  # type: ignore[arg-type]
        elif kind == "next":
            dispatch(bool(arg))
        elif running:
            q.finish(running.pop(0), 0.01)
        assert q.queued_tokens == sum(e.tokens for e in q.pending.values())
        assert q.queued_items == len(q.pending)
    while q.pending:  # drain: forcing always makes progress
        assert dispatch(True)
    assert sorted(ran) == sorted(added) and len(ran) == len(set(ran))
