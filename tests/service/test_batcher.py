"""The micro-batcher on its own: a fake clock for the queue's decisions, a fake model for the driver."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

import numpy as np
import pytest

from protembed.batcher import Batcher, BatchingConfig, BatchQueue, Entry, Waiter
from protembed.errors import DeadlineExceededError, OverloadedError, RequestCancelledError


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def make_queue(clock: FakeClock, **kw: object) -> BatchQueue:
    opts: dict[str, object] = {
        "max_batch_tokens": 100,
        "max_batch_size": 8,
        "max_wait_s": 0.01,
        "max_queue_tokens": 1000,
    }
    opts.update(kw)
    return BatchQueue(BatchingConfig(**opts), clock=clock)  # type: ignore[arg-type]


def waiter(output: str = "student", **kw: object) -> Waiter:
    return Waiter(output, asyncio.get_running_loop().create_future(), **kw)  # type: ignore[arg-type]


def seq(n: int, letter: str = "A") -> str:
    return "M" + letter * (n - 1)


def busy(q: BatchQueue) -> list[Entry]:
    """Put one batch in flight (not finished), so the queue is no longer idle."""
    q.add("MBUSY", waiter())
    batch = q.next_batch()
    assert batch is not None and [e.sequence for e in batch] == ["MBUSY"]
    return batch


def padding(batch: list[Entry]) -> float:
    longest = max(e.tokens for e in batch)
    return 1.0 - sum(e.tokens for e in batch) / (len(batch) * longest)


async def test_idle_queue_dispatches_at_once() -> None:
    clock = FakeClock()
    q = make_queue(clock, max_wait_s=10.0)
    q.add(seq(5), waiter())
    first = q.next_batch()  # nothing running: no wait at all, the clock has not moved
    assert first is not None and [e.sequence for e in first] == [seq(5)]
    q.add(seq(6), waiter())
    assert q.next_batch() is None  # a batch is running: this one waits for company
    q.finish(first, 0.001)
    second = q.next_batch()  # the model went idle: what is queued leaves at once
    assert second is not None and [e.sequence for e in second] == [seq(6)] and clock.now == 0.0


async def test_waits_for_max_wait_then_releases_while_busy() -> None:
    clock = FakeClock()
    q = make_queue(clock)
    busy(q)
    q.add(seq(5), waiter())
    assert q.next_batch() is None
    assert q.due_in(clock.now) == pytest.approx(0.01)
    clock.now = 0.0099
    assert q.next_batch() is None
    clock.now = 0.01
    batch = q.next_batch()
    assert batch is not None and [e.sequence for e in batch] == [seq(5)]
    assert q.queued_tokens == 0 and q.queued_items == 0


async def test_token_budget_counts_padding_and_full_batch_leaves_while_busy() -> None:
    clock = FakeClock()
    q = make_queue(clock, max_batch_tokens=30, max_padding_ratio=1.0)
    busy(q)
    # 10 + 10 + 10 fit (30); with the 15-long item the padded cost would be 4 x 15 = 60 > 30.
    for s in (seq(10, "A"), seq(10, "C"), seq(15, "D"), seq(10, "E")):
        q.add(s, waiter())
    batch = q.next_batch()  # full (a 4th item of any length would pass 30): leaves without waiting
    assert batch is not None
    longest = max(e.tokens for e in batch)
    assert len(batch) * longest <= 30
    assert sorted(e.tokens for e in batch) == [10, 10, 10]  # nearest lengths grouped, 15 left for later
    assert q.next_batch() is None  # 15 alone is not full and not due
    rest = q.next_batch(force=True)
    assert rest is not None and [e.tokens for e in rest] == [15]


async def test_max_batch_size_and_length_bucketing() -> None:
    clock = FakeClock()
    q = make_queue(clock, max_batch_tokens=10_000, max_batch_size=3, max_padding_ratio=0.2)
    lengths = [50, 5, 52, 6, 49, 7]
    for i, n in enumerate(lengths):
        q.add(seq(n, "ACDEFG"[i]), waiter())
    first = q.next_batch()
    assert first is not None and sorted(e.tokens for e in first) == [49, 50, 52]
    second = q.next_batch()  # full at the size cap, so it leaves although the first is running
    assert second is not None and sorted(e.tokens for e in second) == [5, 6, 7]


@pytest.mark.parametrize("bound", [0.0, 0.05, 0.1, 0.3])
async def test_padding_share_of_every_batch_stays_within_the_bound(bound: float) -> None:
    clock = FakeClock()
    q = make_queue(
        clock, max_batch_tokens=4096, max_batch_size=16, max_queue_tokens=10**9, max_padding_ratio=bound
    )
    rng = np.random.default_rng(3)
    lengths = np.clip(rng.lognormal(np.log(200), 0.7, 400).astype(int), 5, 1000)
    sent = [f"M{i:04d}" + "A" * int(n) for i, n in enumerate(lengths)]
    for s in sent:
        q.add(s, waiter())
    ran: list[str] = []
    sizes = []
    while q.queued_items:
        batch = q.next_batch(force=True)
        assert batch is not None
        assert padding(batch) <= bound + 1e-9, [e.tokens for e in batch]
        assert len(batch) <= 16 and (len(batch) == 1 or len(batch) * max(e.tokens for e in batch) <= 4096)
        ran += [e.sequence for e in batch]
        sizes.append(len(batch))
        q.finish(batch, 0.01)
    assert sorted(ran) == sorted(sent)  # every item exactly once
    if bound >= 0.1:
        assert np.mean(sizes) > 4  # the bound still leaves room for real batches on this stream


async def test_bucketing_pads_far_less_than_arrival_order() -> None:
    rng = np.random.default_rng(4)
    lengths = np.clip(rng.lognormal(np.log(230), 0.7, 300).astype(int), 20, 1024)
    sent = [f"M{i:04d}" + "A" * int(n) for i, n in enumerate(lengths)]
    shares = {}
    for policy in ("bucketed", "fifo"):
        q = make_queue(
            FakeClock(), max_batch_tokens=16384, max_batch_size=64, max_queue_tokens=10**9, policy=policy
        )
        for s in sent:
            q.add(s, waiter())
        padded = real = 0
        while q.queued_items:
            batch = q.next_batch(force=True)
            assert batch is not None
            padded += len(batch) * max(e.tokens for e in batch)
            real += sum(e.tokens for e in batch)
            q.finish(batch, 0.01)
        shares[policy] = 1 - real / padded
    assert shares["bucketed"] < 0.1 < 0.3 < shares["fifo"], shares


async def test_oldest_item_is_in_the_next_batch_once_due() -> None:
    clock = FakeClock()
    q = make_queue(clock, max_batch_tokens=10_000, max_batch_size=4)
    busy(q)
    q.add(seq(300, "W"), waiter())  # an odd length, oldest in the queue
    for i in range(4):
        q.add(seq(40, "ACDE"[i]), waiter())
    early = q.next_batch()  # full batch of the common length; the odd one is not due yet
    assert early is not None and [e.tokens for e in early] == [40] * 4
    for i in range(4):
        q.add(seq(41, "FGHI"[i]), waiter())
    clock.now = 0.01  # now the odd item is due: it rides the next batch even though a fuller one exists
    due = q.next_batch()
    assert due is not None and seq(300, "W") in [e.sequence for e in due]
    assert padding(due) <= 0.1


def teach_cost(q: BatchQueue, fixed_s: float, per_token_s: float) -> None:
    """Finish a few batches of different sizes whose time is ``fixed_s + per_token_s x padded tokens``."""
    for n in (1, 2, 3, 4, 1, 2, 3, 4):
        batch = [Entry(seq(50, "ACDE"[i]), 0.0) for i in range(n)]
        q.finish(batch, fixed_s + per_token_s * 50 * n)


CPU_LIKE = (0.001, 3e-5)  # a millisecond per batch, 30 us per token: a batch's time is its tokens'
GPU_LIKE = (0.003, 2e-7)  # the per-batch cost dominates: more items are nearly free


async def test_batch_time_fit_tells_token_bound_from_overhead_bound() -> None:
    q = make_queue(FakeClock())
    assert q.batch_time_fit() is None and not q.tokens_cost_time(100)  # nothing measured yet
    teach_cost(q, *CPU_LIKE)
    fixed, per_token = q.batch_time_fit() or (0.0, 0.0)
    assert fixed == pytest.approx(0.001) and per_token == pytest.approx(3e-5)
    assert q.tokens_cost_time(100)
    teach_cost(q, *GPU_LIKE)  # the fit follows recent batches
    assert not q.tokens_cost_time(100)
    q2 = make_queue(FakeClock())
    for _ in range(8):  # every batch the same size: no slope to see, so no claim either way
        q2.finish([Entry(seq(50), 0.0)], 0.01)
    assert q2.batch_time_fit() is None


def overtaking_queue(cost: tuple[float, float]) -> tuple[FakeClock, BatchQueue, dict[str, str]]:
    """Two old items of different lengths, then younger items of the oldest one's length."""
    clock = FakeClock()
    q = make_queue(clock, max_batch_tokens=10_000, max_batch_size=8)
    teach_cost(q, *cost)
    items = {"oldest": seq(100, "W"), "old_other": seq(300, "Y"), "half_aged": seq(99, "V")}
    q.add(items["oldest"], waiter())
    q.add(items["old_other"], waiter())
    clock.now = 0.04
    q.add(items["half_aged"], waiter())  # will have waited 0.06 of the oldest's 0.1
    clock.now = 0.09
    for i in range(3):
        items[f"young{i}"] = seq(98 + 2 * i, "ACD"[i])  # will have waited 0.01
        q.add(items[f"young{i}"], waiter())
    clock.now = 0.1
    return clock, q, items


async def test_younger_items_do_not_overtake_where_items_cost_their_run_time() -> None:
    # On a CPU, the oldest item's batch takes only items that have waited at least half as long: the
    # young ones would delay the old item of another length by their run time, and are not due.
    _, q, items = overtaking_queue(CPU_LIKE)
    first = q.next_batch()
    assert first is not None
    assert sorted(e.sequence for e in first) == sorted([items["oldest"], items["half_aged"]])
    q.finish(first, 0.01)
    second = q.next_batch()  # the other old item next, before the young ones of the first length
    assert second is not None and [e.sequence for e in second] == [items["old_other"]]
    q.finish(second, 0.01)
    third = q.next_batch()
    assert third is not None
    assert sorted(e.sequence for e in third) == sorted(items[f"young{i}"] for i in range(3))


async def test_younger_items_still_fill_the_batch_where_they_are_nearly_free() -> None:
    # On a GPU a batch costs about the same with more items: the young ones ride along (fuller batches).
    _, q, items = overtaking_queue(GPU_LIKE)
    first = q.next_batch()
    assert first is not None and len(first) == 5 and items["old_other"] not in [e.sequence for e in first]


def closed_loop_latencies(lengths: list[int], concurrency: int, cost: tuple[float, float]) -> np.ndarray:
    """``concurrency`` clients each sending the next sequence once their last is answered; one model
    whose batch takes ``fixed + per_token x padded x (1 + longest / 512)`` (attention grows with length)."""
    clock = FakeClock()
    q = make_queue(clock, max_batch_tokens=16384, max_batch_size=64, max_wait_s=0.005, max_queue_tokens=10**9)
    loop = asyncio.get_running_loop()
    todo = [f"M{i:04d}" + "A" * (n - 5) for i, n in enumerate(lengths)]
    sent: dict[str, float] = {}
    latencies = []

    def send() -> None:
        if todo:
            s = todo.pop(0)
            sent[s] = clock.now
            q.add(s, Waiter("student", loop.create_future()))

    for _ in range(concurrency):
        send()
    while q.queued_items:
        batch = q.next_batch()
        assert batch is not None  # the model is idle between batches: something always leaves
        longest = max(e.tokens for e in batch)
        seconds = cost[0] + cost[1] * len(batch) * longest * (1 + longest / 512)
        clock.now += seconds
        q.finish(batch, seconds)
        for e in batch:
            latencies.append(clock.now - sent[e.sequence])
            send()
    return np.array(latencies)


async def test_latency_tail_of_a_loaded_closed_loop_stays_near_the_median() -> None:
    # 64 clients on a CPU-like model: before, each due batch served one old item and several young
    # length-neighbours, and p99 was over twice p50 (plain FIFO batching: about 1.2x).
    rng = np.random.default_rng(0)
    lengths = [int(n) for n in np.clip(rng.lognormal(np.log(230), 0.7, 600), 20, 512)]
    lat = closed_loop_latencies(lengths, 64, CPU_LIKE)
    p50, p99 = np.percentile(lat, [50, 99])
    assert p99 < 1.8 * p50, (p50, p99)


async def test_fifo_policy_keeps_arrival_order() -> None:
    clock = FakeClock()
    q = make_queue(clock, max_batch_tokens=200, max_batch_size=3, policy="fifo")
    lengths = [50, 5, 52, 6, 49, 7, 60, 61]
    sent = [seq(n, "ACDEFGHI"[i]) for i, n in enumerate(lengths)]
    for s in sent:
        q.add(s, waiter())
    ran = []
    while q.queued_items:
        batch = q.next_batch(force=True)
        assert batch is not None
        ran.append([e.sequence for e in batch])
    # size cap 3, then the token budget (4 x 61 > 200 is never reached; 3 x 61 = 183 fits)
    assert ran == [sent[0:3], sent[3:6], sent[6:8]]
    assert [s for b in ran for s in b] == sent  # arrival order, no bucketing, no padding bound


async def test_fifo_stops_at_the_token_budget_in_arrival_order() -> None:
    q = make_queue(FakeClock(), max_batch_tokens=100, max_batch_size=8, policy="fifo")
    sent = [seq(10, "A"), seq(40, "C"), seq(10, "D"), seq(10, "E")]
    for s in sent:
        q.add(s, waiter())
    first = q.next_batch()
    # a third item would make 3 x 40 = 120 > 100; the short item after it does not jump the queue
    assert first is not None and [e.sequence for e in first] == sent[:2]


def test_bad_policy_and_bound_are_refused() -> None:
    with pytest.raises(ValueError, match="batching policy 'lifo'"):
        make_queue(FakeClock(), policy="lifo")
    with pytest.raises(ValueError, match=r"max_padding_ratio 1\.5"):
        make_queue(FakeClock(), max_padding_ratio=1.5)


async def test_oversized_single_item_still_runs_alone() -> None:
    clock = FakeClock()
    q = make_queue(clock, max_batch_tokens=10)
    q.add(seq(30), waiter())
    clock.now = 1.0
    batch = q.next_batch()
    assert batch is not None and batch[0].tokens == 30


async def test_dedup_queued_and_in_flight() -> None:
    clock = FakeClock()
    q = make_queue(clock)
    assert q.add("MKT", waiter()) is False
    assert q.add("MKT", waiter()) is True
    assert q.add("MKT", waiter("residues")) is True  # another output of the same queued item joins it
    assert q.queued_items == 1 and q.queued_tokens == 3
    clock.now = 1.0
    batch = q.next_batch()
    assert batch is not None and batch[0].outputs == {"student", "residues"} and len(batch[0].waiters) == 3
    # while in flight, the same sequence and output joins the running entry instead of queueing again
    assert q.new_tokens(["MKT"], "student") == 0
    assert q.add("MKT", waiter()) is True and q.queued_items == 0
    q.finish(batch, 0.1)
    assert q.add("MKT", waiter()) is False


async def test_backpressure_in_tokens_with_retry_after() -> None:
    clock = FakeClock()
    q = make_queue(clock, max_queue_tokens=20)
    q.admit(15)
    q.add(seq(15), waiter())
    q.admit(5)  # exactly at the bound
    with pytest.raises(OverloadedError) as info:
        q.admit(6)
    assert info.value.retry_after_s >= 1.0 and "limit 20" in info.value.message
    q.tokens_per_s = 1.0  # measured throughput drives Retry-After
    with pytest.raises(OverloadedError) as info:
        q.admit(6)
    assert info.value.retry_after_s == pytest.approx(15.0)


async def test_empty_queue_admits_a_large_request() -> None:
    q = make_queue(FakeClock(), max_queue_tokens=20)
    q.admit(500)


async def test_cancelled_and_expired_items_are_dropped_before_the_model() -> None:
    clock = FakeClock()
    q = make_queue(clock)
    gone = waiter(cancelled=lambda: True)
    late = waiter(deadline=0.005)
    keep = waiter()
    q.add("MAAA", gone)
    q.add("MCCC", late)
    q.add("MDDD", keep)
    shared_gone = waiter(cancelled=lambda: True)
    shared_keep = waiter()
    q.add("MEEE", shared_gone)
    q.add("MEEE", shared_keep)
    clock.now = 0.01
    batch = q.next_batch()
    assert batch is not None
    assert sorted(e.sequence for e in batch) == ["MDDD", "MEEE"]
    assert isinstance(gone.future.exception(), RequestCancelledError)
    assert isinstance(late.future.exception(), DeadlineExceededError)
    assert {id(w) for e in batch for w in e.waiters} == {id(keep), id(shared_keep)}
    assert q.dropped == {"cancelled": 2, "deadline": 1}


# --- the asyncio driver with a fake model ---------------------------------------------------------


class FakeModel:
    """Returns, per sequence, a vector that encodes it (length, first letter); records each batch."""

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.batches: list[list[str]] = []
        self.threads: set[str] = set()
        self.gate = gate

    def __call__(self, sequences: list[str], outputs: frozenset[str]) -> dict[str, list[np.ndarray]]:
        if self.gate is not None:
            self.gate.wait(5)
        self.threads.add(threading.current_thread().name)
        self.batches.append(list(sequences))
        return {
            o: [np.array([len(s), ord(s[0]), len(o)], dtype=np.float32) for s in sequences] for o in outputs
        }


class FnModel:
    """A plain function as the batcher's model."""

    provider = "fake"

    def __init__(self, fn: Callable[..., dict[str, list[np.ndarray]]]) -> None:
        self.embed = fn


class StartedBatcher(Batcher):
    """A batcher that knows its model at construction, so tests can ``await b.start()``."""

    def __init__(self, model: Callable[..., dict[str, list[np.ndarray]]], config: BatchingConfig) -> None:
        super().__init__(config)
        self._fake = FnModel(model)

    async def start(self, model: object = None) -> None:  # type: ignore[override]
        await super().start(self._fake)  # type: ignore[arg-type]


def make_batcher(model: Callable[..., dict[str, list[np.ndarray]]], **kw: object) -> Batcher:
    opts: dict[str, object] = {
        "max_batch_tokens": 1000,
        "max_batch_size": 16,
        "max_wait_s": 0.002,
        "max_queue_tokens": 10_000,
    }
    opts.update(kw)
    return StartedBatcher(model, BatchingConfig(**opts))  # type: ignore[arg-type]


async def test_results_come_back_in_order_and_off_the_loop() -> None:
    model = FakeModel()
    b = make_batcher(model)
    await b.start()
    try:
        seqs = ["MKTAYIAK", "AC", "WWWWWWWWWWWWW", "AC", "Y"]
        out = await b.submit(seqs, "student")
        assert [v[:2].tolist() for v in out] == [[len(s), ord(s[0])] for s in seqs]
        assert sum(len(x) for x in model.batches) == 4  # the duplicate "AC" ran once
        assert all(name.startswith("protembed-infer") for name in model.threads)
        assert threading.main_thread().name not in model.threads
    finally:
        await b.stop()


async def test_concurrent_requests_are_batched_and_deduplicated() -> None:
    gate = threading.Event()
    model = FakeModel(gate)
    b = make_batcher(model, max_wait_s=0.0, max_padding_ratio=1.0)  # lengths 4-7: no padding bound here
    await b.start()
    try:
        first = asyncio.create_task(b.submit(["MFIRST"], "student"))
        await asyncio.sleep(0.05)  # the first batch is now blocked inside the model
        tasks = [asyncio.create_task(b.submit(["MSHARED", f"MOWN{'K' * i}"], "student")) for i in range(4)]
        await asyncio.sleep(0.05)
        gate.set()
        results = await asyncio.gather(first, *tasks)
        assert model.batches[0] == ["MFIRST"]
        # everything that queued while the model was busy went in one batch, MSHARED once
        assert len(model.batches) == 2 and sorted(model.batches[1]).count("MSHARED") == 1
        assert len(model.batches[1]) == 5
        for i, res in enumerate(results[1:]):
            assert res[0][0] == len("MSHARED") and res[1][0] == len(f"MOWN{'K' * i}")
    finally:
        await b.stop()


async def test_overload_refuses_at_once() -> None:
    gate = threading.Event()
    b = make_batcher(FakeModel(gate), max_queue_tokens=10, max_wait_s=0.0)
    await b.start()
    try:
        busy = asyncio.create_task(b.submit(["MAAAAAAAA"], "student"))  # taken by the model, blocked
        await asyncio.sleep(0.05)
        queued = asyncio.create_task(b.submit(["MCCCCCCC"], "student"))  # 8 tokens queued
        await asyncio.sleep(0.01)
        with pytest.raises(OverloadedError):
            await b.submit(["MDDDD"], "student")  # 8 + 5 > 10
        gate.set()
        await asyncio.gather(busy, queued)
    finally:
        await b.stop()


async def test_disconnected_client_never_reaches_the_model() -> None:
    gate = threading.Event()
    model = FakeModel(gate)
    b = make_batcher(model, max_wait_s=0.0)
    await b.start()
    try:
        busy = asyncio.create_task(b.submit(["MBUSY"], "student"))
        await asyncio.sleep(0.05)
        client_gone = False
        doomed = asyncio.create_task(b.submit(["MGONE"], "student", cancelled=lambda: client_gone))
        expired = asyncio.create_task(b.submit(["MLATE"], "student", deadline=b.queue.clock() + 0.01))
        task_cancelled = asyncio.create_task(b.submit(["MTASK"], "student"))
        await asyncio.sleep(0.05)
        client_gone = True
        task_cancelled.cancel()
        gate.set()
        await busy
        with pytest.raises(RequestCancelledError):
            await doomed
        with pytest.raises(DeadlineExceededError):
            await expired
        with pytest.raises(asyncio.CancelledError):
            await task_cancelled
        await b.submit(["MNEXT"], "student")
        ran = [s for batch in model.batches for s in batch]
        assert ran == ["MBUSY", "MNEXT"]
    finally:
        await b.stop()


async def test_model_error_reaches_every_waiter_and_batcher_survives() -> None:
    calls = 0

    def flaky(sequences: list[str], outputs: frozenset[str]) -> dict[str, list[np.ndarray]]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("boom")
        return {o: [np.zeros(2, np.float32) for _ in sequences] for o in outputs}

    b = make_batcher(flaky)
    await b.start()
    try:
        with pytest.raises(Exception, match="inference failed: boom"):
            await b.submit(["MA", "MC"], "student")
        assert len(await b.submit(["MA"], "student")) == 1
    finally:
        await b.stop()


async def test_lone_request_does_not_wait_for_max_wait() -> None:
    model = FakeModel()
    b = make_batcher(model, max_wait_s=30.0)  # were the wait applied, this test would time out
    await b.start()
    try:
        out = await asyncio.wait_for(b.submit(["MKTAYIAK"], "student"), 5.0)
        assert out[0][0] == 8 and model.batches == [["MKTAYIAK"]]
    finally:
        await b.stop()


async def test_batches_formed_while_busy_respect_the_padding_bound() -> None:
    gate = threading.Event()
    model = FakeModel(gate)
    b = make_batcher(model, max_wait_s=0.0, max_batch_tokens=100_000, max_batch_size=64)
    await b.start()
    try:
        first = asyncio.create_task(b.submit(["MFIRST"], "student"))
        await asyncio.sleep(0.05)  # blocked in the model; the rest queues behind it
        lengths = [10, 200, 11, 190, 12, 205, 100, 95]
        tasks = [
            asyncio.create_task(b.submit([seq(n, "ACDEFGHI"[i])], "student")) for i, n in enumerate(lengths)
        ]
        await asyncio.sleep(0.05)
        gate.set()
        await asyncio.gather(first, *tasks)
        groups = sorted(sorted(len(s) for s in batch) for batch in model.batches[1:])
        assert groups == [[10, 11, 12], [95, 100], [190, 200, 205]]
    finally:
        await b.stop()
