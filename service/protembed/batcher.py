"""The micro-batcher between transports and the model.

Two layers, in the shape of TEI's ``queue.rs``:

* ``BatchQueue`` — plain, synchronous state with an injected clock: add items, ask for the next batch.
  It owns every batching decision (token budget counting padding, size cap, padding bound, max wait,
  length bucketing or arrival order, dedup, backpressure, dropping items whose client is gone), so it
  is tested with a fake clock and no sleeps.
* ``Batcher`` — the asyncio driver: ``submit`` from request handlers, one worker task that pulls
  batches and runs the model in a dedicated thread (off the event loop), results back per item.

When a batch leaves: at once while the model is idle (as TEI does: a lone request never waits for
company that may not come; items pile up, and so batch, while the model is busy); with a batch still
running, only when full or due. Which batch: with ``bucketed``, the fullest group of similar lengths;
once the oldest item has waited ``max_wait_s`` the next batch is built around it, so an odd length is
passed over for fuller batches at most that long. Where a batch's time grows with its tokens (a CPU),
that batch takes only items that have waited at least half as long as the oldest: younger items of its
length would otherwise overtake older items of other lengths batch after batch (the latency tail).
The ``Batcher`` runs one batch at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Literal, get_args

import numpy as np

from protembed.errors import (
    DeadlineExceededError,
    NotReadyError,
    OverloadedError,
    ProtembedError,
    RequestCancelledError,
)
from protembed.metrics import Metrics
from protembed.runtime import Model

log = logging.getLogger(__name__)

Clock = Callable[[], float]
_SHUTTING_DOWN = "server is shutting down; retry on another replica"
# A batch built around a due item takes only items that have waited at least this share of that item's
# wait, where items cost their own run time (``BatchQueue.tokens_cost_time``). Why: the oldest item's
# batch otherwise fills with its length-neighbours whatever their age, so on a loaded queue each batch
# serves one old item and several young ones, and an item of an unusual length waits until every item
# older than it has been served one per batch, behind all the young ones served meanwhile: in a replay
# of `bench peers` at 64 in flight on a CPU, p99 was 2.2x p50, against about 1.2x for plain FIFO
# batching. With half: 1.5-1.6x, at about the same padding share and throughput.
AGED_SHARE = 0.5
# Finished batches the batch-time fit decays over (a weight of 0.9 per batch: about the last 10).
_FIT_DECAY = 0.9
# bucketed: batches of similar lengths, padding share bounded; fifo: arrival order (the baseline).
Policy = Literal["bucketed", "fifo"]
POLICIES: tuple[str, ...] = get_args(Policy)
# interactive: a person or a pipeline waiting on the answer (the default); bulk: throughput work (the
# bulk CLI, workflows) that should use idle capacity without slowing interactive requests down.
Priority = Literal["interactive", "bulk"]
PRIORITIES: tuple[str, ...] = get_args(Priority)


@dataclass(frozen=True)
class BatchingConfig:
    """Every batching parameter, in one place: the engine builds it from the settings, /info reports it,
    benchmarks replay it."""

    max_batch_tokens: int  # token budget of one batch, padding counted (count x longest)
    max_batch_size: int  # most items in one batch
    max_wait_s: float  # how long the oldest item may be passed over for fuller batches
    max_queue_tokens: int  # queue bound in residues (backpressure past it)
    max_padding_ratio: float = 0.1  # bucketed: most padding share of a batch
    policy: Policy = "bucketed"
    # Bulk items wait while interactive ones are queued, but no longer than this: then they compete
    # as interactive items do (aging), so a steady interactive load cannot starve bulk work forever.
    bulk_max_wait_s: float = 5.0
    # Share of max_queue_tokens bulk work may fill, so a bulk flood leaves room for interactive requests.
    bulk_queue_share: float = 0.75
    # A bulk batch's token budget as a share of max_batch_tokens: a batch that is running is never
    # interrupted, so an interactive item that arrives meanwhile waits for it; smaller bulk batches
    # bound that wait.
    bulk_batch_share: float = 0.25

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(f"batching policy {self.policy!r} is not one of {list(POLICIES)}")
        if not 0.0 <= self.max_padding_ratio <= 1.0:
            raise ValueError(f"max_padding_ratio {self.max_padding_ratio} must be in [0, 1]")
        if self.max_batch_tokens <= 0 or self.max_batch_size <= 0:
            raise ValueError("max_batch_tokens and max_batch_size must be positive")
        if not 0.0 < self.bulk_queue_share <= 1.0:
            raise ValueError(f"bulk_queue_share {self.bulk_queue_share} must be in (0, 1]")
        if not 0.0 < self.bulk_batch_share <= 1.0:
            raise ValueError(f"bulk_batch_share {self.bulk_batch_share} must be in (0, 1]")


@dataclass(frozen=True)
class QueueStats:
    """A snapshot of the queue for /info, metrics and Retry-After."""

    queued_items: int
    queued_tokens: int
    running_items: int
    tokens_per_s: float
    retry_after_s: float
    dropped: dict[str, int]


@dataclass(eq=False)
class Waiter:
    """One request's interest in one item: which output it wants and how to reach it."""

    output: str
    future: asyncio.Future[np.ndarray]
    deadline: float | None = None
    cancelled: Callable[[], bool] | None = None
    priority: Priority = "interactive"

    def check(self, now: float) -> str | None:
        """Why this waiter is gone (and fail its future accordingly), or None while it still waits."""
        if self.future.done():  # the request task itself was cancelled or already failed
            return "abandoned"
        if self.cancelled is not None and self.cancelled():
            self.future.set_exception(RequestCancelledError("client went away before inference"))
            return "cancelled"
        if self.deadline is not None and now >= self.deadline:
            self.future.set_exception(DeadlineExceededError("deadline passed while queued"))
            return "deadline"
        return None


@dataclass(eq=False)
class Entry:
    """One distinct sequence queued or in flight, shared by every request that asked for it."""

    sequence: str
    enqueued_at: float
    outputs: set[str] = field(default_factory=set)
    waiters: list[Waiter] = field(default_factory=list)
    bulk_tokens: int = 0  # what this entry counts against the bulk share of the queue (0 once urgent)

    @property
    def priority(self) -> Priority:
        """Interactive as soon as one waiter is: a bulk item an interactive request also asked for runs
        at the interactive request's priority."""
        return "interactive" if any(w.priority == "interactive" for w in self.waiters) else "bulk"

    @property
    def tokens(self) -> int:
        return len(self.sequence)


class BatchQueue:
    """Batching state and decisions; no event loop, no threads, time comes from ``clock``."""

    def __init__(
        self,
        config: BatchingConfig,
        *,
        clock: Clock = time.monotonic,
        on_drop: Callable[[str], None] | None = None,
    ) -> None:
        self.config = config
        self.clock = clock
        self.pending: dict[str, Entry] = {}  # insertion order = arrival order, oldest first
        self.running: dict[str, Entry] = {}  # dispatched to the model, for in-flight dedup
        self.queued_tokens = 0
        self.queued_bulk_tokens = 0  # the part of queued_tokens only bulk requests wait for
        self.last_batch_bulk = False  # aging alternates: an aged bulk batch, then interactive again
        self.tokens_per_s = 0.0  # measured throughput, for Retry-After
        # Batch time ~ fixed + per_token x padded tokens, fitted over recent batches: exponentially
        # weighted sums of 1, x, y, x^2, xy (x = padded tokens, y = seconds).
        self._fit: tuple[float, ...] = (0.0, 0.0, 0.0, 0.0, 0.0)
        self.dropped: dict[str, int] = {}  # waiters dropped before the model, by reason
        self.on_drop = on_drop

    # The configuration, read through (tests and the planners use these names).
    @property
    def policy(self) -> Policy:
        return self.config.policy

    @property
    def max_padding_ratio(self) -> float:
        return self.config.max_padding_ratio

    @property
    def max_batch_tokens(self) -> int:
        return self.config.max_batch_tokens

    @property
    def max_batch_size(self) -> int:
        return self.config.max_batch_size

    @property
    def max_wait_s(self) -> float:
        return self.config.max_wait_s

    @property
    def max_queue_tokens(self) -> int:
        return self.config.max_queue_tokens

    def set_budget(self, max_batch_tokens: int) -> None:
        """Change the batch token budget (the engine settles it once the provider is known)."""
        self.config = replace(self.config, max_batch_tokens=max_batch_tokens)

    def seed_throughput(self, tokens_per_s: float) -> None:
        """A first throughput estimate (measured at warm-up), so a cold server's Retry-After says how
        long its queue needs rather than 1 s; real batches refine it."""
        if self.tokens_per_s <= 0 and tokens_per_s > 0:
            self.tokens_per_s = tokens_per_s

    def stats(self) -> QueueStats:
        return QueueStats(
            queued_items=len(self.pending),
            queued_tokens=self.queued_tokens,
            running_items=len(self.running),
            tokens_per_s=self.tokens_per_s,
            retry_after_s=self.retry_after_s(),
            dropped=dict(self.dropped),
        )

    def fail_all(self, error: Exception) -> None:
        """Fail every queued and running waiter with ``error`` and forget them (shutdown)."""
        for entry in [*self.pending.values(), *self.running.values()]:
            for w in entry.waiters:
                if not w.future.done():
                    w.future.set_exception(error)
        self.pending.clear()
        self.running.clear()
        self.queued_tokens = 0
        self.queued_bulk_tokens = 0

    @property
    def idle(self) -> bool:
        return not self.pending and not self.running

    # --- admission ---------------------------------------------------------------------------------
    def new_tokens(self, sequences: Sequence[str], output: str) -> int:
        """Residues a request would add to the queue (identical queued/in-flight items are free)."""
        seen: set[str] = set()
        total = 0
        for seq in sequences:
            if seq in seen or seq in self.pending:
                continue
            run = self.running.get(seq)
            if run is not None and output in run.outputs:
                continue
            seen.add(seq)
            total += len(seq)
        return total

    def retry_after_s(self) -> float:
        """Seconds until the queue has likely drained, from measured throughput; at least 1."""
        if self.tokens_per_s <= 0:
            return 1.0
        return float(min(60.0, max(1.0, self.queued_tokens / self.tokens_per_s)))

    def admit(self, tokens: int, priority: Priority = "interactive") -> None:
        """Refuse at once when the queue would exceed its token bound; bulk work only up to its share
        of it, so a bulk flood leaves room for interactive requests.

        An empty queue always admits (a single request above the bound would otherwise never run;
        the engine's per-request residue limit keeps such requests bounded anyway).
        """
        bulk_bound = self.config.bulk_queue_share * self.max_queue_tokens
        if priority == "bulk" and self.queued_tokens and self.queued_bulk_tokens + tokens > bulk_bound:
            raise OverloadedError(
                f"server busy: {self.queued_bulk_tokens} bulk residues queued, this request adds {tokens}, "
                f"bulk limit {int(bulk_bound)}; retry later",
                retry_after_s=self.retry_after_s(),
            )
        if self.queued_tokens and self.queued_tokens + tokens > self.max_queue_tokens:
            raise OverloadedError(
                f"server overloaded: {self.queued_tokens} residues queued, this request adds {tokens}, "
                f"limit {self.max_queue_tokens}; retry later",
                retry_after_s=self.retry_after_s(),
            )

    def add(self, sequence: str, waiter: Waiter) -> bool:
        """Attach ``waiter`` to the queued or in-flight entry for ``sequence``; True if deduplicated."""
        run = self.running.get(sequence)
        if run is not None and waiter.output in run.outputs:
            run.waiters.append(waiter)
            return True
        entry = self.pending.get(sequence)
        if entry is not None:
            entry.outputs.add(waiter.output)
            entry.waiters.append(waiter)
            if waiter.priority == "interactive" and entry.bulk_tokens:
                self.queued_bulk_tokens -= entry.bulk_tokens
                entry.bulk_tokens = 0
            return True
        bulk = len(sequence) if waiter.priority == "bulk" else 0
        self.pending[sequence] = Entry(sequence, self.clock(), {waiter.output}, [waiter], bulk)
        self.queued_tokens += len(sequence)
        self.queued_bulk_tokens += bulk
        return False

    def _leave(self, entry: Entry) -> None:
        """Take ``entry`` out of the pending queue's accounting (it ran or nobody waits for it)."""
        del self.pending[entry.sequence]
        self.queued_tokens -= entry.tokens
        self.queued_bulk_tokens -= entry.bulk_tokens

    # --- batching ----------------------------------------------------------------------------------
    def prune(self, now: float) -> None:
        """Drop waiters whose client is gone or whose deadline passed; drop entries nobody waits for."""
        for seq in list(self.pending):
            entry = self.pending[seq]
            alive = []
            for w in entry.waiters:
                reason = w.check(now)
                if reason is None:
                    alive.append(w)
                else:
                    self.dropped[reason] = self.dropped.get(reason, 0) + 1
                    if self.on_drop is not None:
                        self.on_drop(reason)
            entry.waiters = alive
            if not alive:
                self._leave(entry)
            else:
                entry.outputs = {w.output for w in alive}
                if not entry.bulk_tokens and entry.priority == "bulk":  # its interactive waiter left
                    entry.bulk_tokens = entry.tokens
                    self.queued_bulk_tokens += entry.tokens

    def due_in(self, now: float) -> float | None:
        """Seconds until the oldest queued item has waited ``max_wait_s``; None when empty."""
        if not self.pending:
            return None
        oldest = next(iter(self.pending.values()))
        return max(0.0, oldest.enqueued_at + self.max_wait_s - now)

    def budget(self, bulk: bool) -> int:
        """The token budget of a batch being planned: a share of the full one for a batch only bulk
        requests wait for, so an interactive arrival waits behind a smaller batch."""
        if bulk:
            return max(1, int(self.max_batch_tokens * self.config.bulk_batch_share))
        return self.max_batch_tokens

    def _fits(self, count: int, longest: int, budget: int) -> bool:
        """Size cap and token budget (padding counted); a single item always fits, however long."""
        return count == 1 or (count <= self.max_batch_size and count * longest <= budget)

    def _is_full(self, count: int, longest: int, budget: int) -> bool:
        """No further item, not even one as short as the rest, could join: waiting cannot help."""
        return not self._fits(count + 1, longest, budget)

    def _candidates(self, now: float) -> list[Entry]:
        """The queued entries the next batch is drawn from, oldest first.

        Only one kind at a time: interactive entries while any are queued, except that once the oldest
        bulk entry has waited ``bulk_max_wait_s``, every other batch is a bulk one (aging). So bulk work
        always progresses, and an interactive item waits for at most one bulk batch, never a backlog.
        """
        entries = list(self.pending.values())
        if not self.queued_bulk_tokens:
            return entries
        interactive = [e for e in entries if not e.bulk_tokens]
        bulk = [e for e in entries if e.bulk_tokens]
        aged = bulk[0].enqueued_at <= now - self.config.bulk_max_wait_s
        take_bulk = not interactive or (aged and not self.last_batch_bulk)
        return bulk if take_bulk else interactive

    def batch_time_fit(self) -> tuple[float, float] | None:
        """(fixed seconds per batch, seconds per padded token), a least-squares line through recent
        finished batches; None until there are a few batches of different sizes."""
        w, sx, sy, sxx, sxy = self._fit
        if w < 3.0:
            return None
        mx, my = sx / w, sy / w
        var = sxx / w - mx * mx
        if var <= 1e-6 * mx * mx:  # all of one size: no slope to see
            return None
        slope = max(0.0, (sxy / w - mx * my) / var)
        return max(0.0, my - slope * mx), slope

    def tokens_cost_time(self, tokens: int) -> bool:
        """Whether an item of ``tokens`` residues adds more to a batch's run time than a batch costs by
        itself. True on a CPU (a batch's time is nearly all per-token work; the fit's fixed part is a
        millisecond or less); False on a GPU, where a batch costs about the same with more items, and
        False until batches have been measured."""
        fit = self.batch_time_fit()
        return fit is not None and fit[1] * tokens > fit[0]

    def _aged(self, entries: list[Entry], now: float) -> list[Entry]:
        """The entries that may join a batch built around the due ``entries[0]``: all of them, except
        where each item costs its own run time; then only those that have waited ``AGED_SHARE`` of its
        wait. A younger item taken now delays every older item of other lengths by its run time, for
        nothing: it is not due, and later batches of its length take it."""
        oldest = entries[0]
        if not self.tokens_cost_time(oldest.tokens):
            return entries
        cutoff = now - AGED_SHARE * (now - oldest.enqueued_at)
        return [e for e in entries if e.enqueued_at <= cutoff]  # arrival order kept: oldest first

    def _plan_fifo(self, entries: list[Entry], budget: int) -> list[Entry]:
        """Arrival order from the oldest, until the next item would break the size cap or token budget.

        No padding bound: this is plain arrival-order batching, the baseline bucketing is measured against.
        """
        batch: list[Entry] = []
        longest = 0
        for e in entries:
            width = max(longest, e.tokens)
            if batch and not self._fits(len(batch) + 1, width, budget):
                break
            batch.append(e)
            longest = width
        return batch

    def _plan_bucketed(self, entries: list[Entry], due: bool, budget: int) -> list[Entry]:
        """The fullest run of queued items adjacent in length order whose padding share stays <=
        ``max_padding_ratio`` within the size cap and token budget; when the oldest item is due, only
        runs that include it (so odd lengths cannot starve).

        Fullest = the largest share of what a batch of that longest length could hold (then the most
        real tokens): the batch that waiting could improve least, so the others keep filling.

        In a length-sorted run ``[l..r]`` the longest is ``r``, and for a fixed ``r`` the padding share
        only grows as shorter items are added, so the shortest start that keeps the bound is found by
        bisection: O(n log max_batch_size) per plan.
        """
        # ``entries`` in arrival order: entries[0] is the oldest
        order = sorted(range(len(entries)), key=lambda i: entries[i].tokens)  # stable: ties by age
        toks = [entries[i].tokens for i in order]
        prefix = [0]
        for t in toks:
            prefix.append(prefix[-1] + t)
        # the bound as "real >= keep x padded"; a relative epsilon so a run exactly at the bound counts
        # as within it despite float rounding
        keep = (1.0 - self.max_padding_ratio) * (1.0 - 1e-12)
        max_size, max_tokens = self.max_batch_size, budget
        seed = order.index(0) if due else -1
        best = (0.0, 0, 0, -1)  # (fill, real tokens, l, r)
        for r in range(max(seed, 0), len(toks)):  # hot loop at large queues: kept inline
            longest = toks[r]
            cap = max(1, min(max_size, max_tokens // longest))
            lo = r - cap + 1
            end = prefix[r + 1]
            if seed >= 0:
                if lo > seed:
                    break  # longer ends only shrink the cap: no later run can reach the oldest item
                hi = seed
                if end - prefix[seed] < keep * (r - seed + 1) * longest:
                    continue  # even the shortest run from the oldest item to r pads too much
            else:
                hi = r  # [r..r] always qualifies
            if lo < 0:
                lo = 0
            while lo < hi:  # the smallest start that keeps the padding bound
                mid = (lo + hi) // 2
                if end - prefix[mid] >= keep * (r - mid + 1) * longest:
                    hi = mid
                else:
                    lo = mid + 1
            real = end - prefix[lo]
            fill = real / (cap * longest)
            if fill > best[0] or (fill == best[0] and real > best[1]):
                best = (fill, real, lo, r)
        _, _, lo, r = best
        return [entries[i] for i in order[lo : r + 1]]

    def next_batch(self, now: float | None = None, *, force: bool = False) -> list[Entry] | None:
        """The next batch to run, or None to keep waiting.

        A batch leaves at once when nothing is running (the model is idle), when it is full, when its
        oldest item is due (waited ``max_wait_s``; the batch then always includes that item), or when
        ``force`` is set; otherwise None (the caller waits ``due_in`` or for new items).
        """
        now = self.clock() if now is None else now
        self.prune(now)
        if not self.pending:
            return None
        entries = self._candidates(now)
        budget = self.budget(bool(self.queued_bulk_tokens) and all(e.bulk_tokens for e in entries))
        due = entries[0].enqueued_at + self.max_wait_s <= now
        if self.policy == "fifo":
            batch = self._plan_fifo(entries, budget)
        else:
            batch = self._plan_bucketed(self._aged(entries, now) if due else entries, due, budget)
        longest = max(e.tokens for e in batch)
        idle = not self.running
        if not (idle or due or force or self._is_full(len(batch), longest, budget)):
            return None
        self.last_batch_bulk = all(e.bulk_tokens for e in batch)
        for e in batch:
            self._leave(e)
            self.running[e.sequence] = e
        return batch

    def finish(self, batch: list[Entry], seconds: float) -> None:
        """Forget a finished batch and update the throughput estimate."""
        for e in batch:
            if self.running.get(e.sequence) is e:
                del self.running[e.sequence]
        if seconds > 0:
            rate = sum(e.tokens for e in batch) / seconds
            self.tokens_per_s = rate if self.tokens_per_s == 0 else 0.8 * self.tokens_per_s + 0.2 * rate
            x = float(len(batch) * max(e.tokens for e in batch))
            point = (1.0, x, seconds, x * x, x * seconds)
            self._fit = tuple(_FIT_DECAY * s + v for s, v in zip(self._fit, point, strict=True))

    @property
    def queued_items(self) -> int:
        return len(self.pending)


class Batcher:
    """Asyncio driver around ``BatchQueue``: one worker task, the model run in one dedicated thread."""

    def __init__(
        self,
        config: BatchingConfig,
        *,
        clock: Clock = time.monotonic,
        metrics: Metrics | None = None,
    ) -> None:
        self.queue = BatchQueue(
            config,
            clock=clock,
            on_drop=None if metrics is None else (lambda reason: metrics.dropped_items.labels(reason).inc()),
        )
        self.model: Model | None = None
        self.metrics = metrics
        self.batches_run = 0
        self._closed = False
        self._wake = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None

    @property
    def config(self) -> BatchingConfig:
        return self.queue.config

    def set_budget(self, max_batch_tokens: int) -> None:
        self.queue.set_budget(max_batch_tokens)

    def seed_throughput(self, tokens_per_s: float) -> None:
        self.queue.seed_throughput(tokens_per_s)

    def stats(self) -> QueueStats:
        return self.queue.stats()

    @property
    def running(self) -> bool:
        return self._worker is not None and not self._worker.done()

    async def start(self, model: Model) -> None:
        """Run batches through ``model`` (its ``embed`` is called in the worker thread)."""
        self.model = model
        if self.running:
            return
        self._closed = False
        # One thread: ORT parallelises inside a run; a second concurrent run would only contend.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="protembed-infer")
        self._worker = asyncio.create_task(self._loop(), name="protembed-batcher")

    def close(self) -> None:
        """Refuse new work from now on (NotReadyError); what is queued still runs."""
        self._closed = True

    async def drain(self, timeout_s: float) -> bool:
        """Close, then wait up to ``timeout_s`` for queued and running work to finish; True if it did."""
        self.close()
        end = time.monotonic() + timeout_s
        while not self.queue.idle and self.running and time.monotonic() < end:
            self._wake.set()
            await asyncio.sleep(0.01)
        return self.queue.idle

    async def stop(self) -> None:
        """Stop the worker and fail whatever is still queued or running with NotReadyError."""
        self._closed = True
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None
        self.queue.fail_all(NotReadyError(_SHUTTING_DOWN))
        self._observe_queue()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    async def submit(
        self,
        sequences: Sequence[str],
        output: str,
        *,
        deadline: float | None = None,
        cancelled: Callable[[], bool] | None = None,
        priority: Priority = "interactive",
    ) -> list[np.ndarray]:
        """``output`` for each (normalized) sequence, in order; raises ProtembedError subclasses."""
        if self._closed or not self.running:
            raise NotReadyError(_SHUTTING_DOWN if self._closed else "batcher is not running")
        if not sequences:
            return []
        if deadline is not None and self.queue.clock() >= deadline:
            raise DeadlineExceededError("deadline passed before the request was queued")
        try:
            self.queue.admit(self.queue.new_tokens(sequences, output), priority)
        except OverloadedError:
            if self.metrics is not None:
                self.metrics.overloaded.inc()
            raise
        start = time.perf_counter()
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[np.ndarray]] = []
        deduped = 0
        for seq in sequences:
            fut: asyncio.Future[np.ndarray] = loop.create_future()
            deduped += self.queue.add(seq, Waiter(output, fut, deadline, cancelled, priority))
            futures.append(fut)
        self._observe_queue()
        if deduped and self.metrics is not None:
            self.metrics.dedup_items.inc(deduped)
        self._wake.set()
        results = await asyncio.gather(*futures, return_exceptions=True)
        for r in results:
            if isinstance(r, BaseException):
                raise r
        if self.metrics is not None:
            self.metrics.child(self.metrics.queue_wait, priority).observe(time.perf_counter() - start)
        return [r for r in results if isinstance(r, np.ndarray)]

    def _observe_queue(self) -> None:
        if self.metrics is not None:
            q = self.queue
            self.metrics.queue_items.set(q.queued_items)
            self.metrics.queue_tokens.set(q.queued_tokens)
            self.metrics.child(self.metrics.queue_priority_tokens, "bulk").set(q.queued_bulk_tokens)
            self.metrics.child(self.metrics.queue_priority_tokens, "interactive").set(
                q.queued_tokens - q.queued_bulk_tokens
            )

    async def _loop(self) -> None:
        while True:
            batch = self.queue.next_batch()
            if batch is None:
                self._observe_queue()
                timeout = self.queue.due_in(self.queue.clock())
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout)
                continue
            self._observe_queue()
            await self._run(batch)

    async def _run(self, batch: list[Entry]) -> None:
        sequences = [e.sequence for e in batch]
        outputs = frozenset().union(*(e.outputs for e in batch))
        longest = max(len(s) for s in sequences)
        padded = longest * len(batch)
        if self.metrics is not None:
            self.metrics.batch_size.observe(len(batch))
            self.metrics.batch_padded_tokens.observe(padded)
            self.metrics.batch_padding_ratio.observe(1.0 - sum(map(len, sequences)) / padded)
        loop = asyncio.get_running_loop()
        start = time.perf_counter()
        assert self.model is not None
        try:
            result = await loop.run_in_executor(self._executor, self.model.embed, sequences, outputs)
        except Exception as exc:
            log.exception("inference failed for a batch of %d", len(batch))
            err = exc if isinstance(exc, ProtembedError) else ProtembedError(f"inference failed: {exc}")
            for e in batch:
                for w in e.waiters:
                    if not w.future.done():
                        w.future.set_exception(err)
            self.queue.finish(batch, 0.0)
            return
        seconds = time.perf_counter() - start
        self.batches_run += 1
        if self.metrics is not None:
            self.metrics.inference_seconds.observe(seconds)
        for i, e in enumerate(batch):
            for w in e.waiters:
                if not w.future.done():
                    w.future.set_result(result[w.output][i])
        self.queue.finish(batch, seconds)
