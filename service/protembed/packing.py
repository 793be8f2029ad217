"""Token-budget packing: which items go together in one batch, the one place that decides it.

Every consumer packs with the same rule: training (shuffled pools, :func:`pack_shuffled`), teacher
caching, evaluation, export checks and benchmarks (length-sorted, :func:`pack_sorted`), and the clients
and bulk embedding (arrival order, lazily, :func:`pack`). A batch's cost is what the model computes for
it: ``count x longest`` for a padded batch, or the plain sum of lengths where the receiver re-batches
(a request to the server, bounded by its per-request residue limit). The server's own queue
(``batcher.BatchQueue``) cuts with the same padded rule plus its waiting and padding policies.

Pure functions over lengths; no model, no I/O.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Budget:
    """What one batch may hold: ``tokens`` (padded: count x longest; unpadded: sum of lengths) and at
    most ``max_items`` items (0: no count cap). A single item over ``tokens`` still forms a batch of its
    own: whether it is too long is the model's (or the server's) decision, not the packer's."""

    tokens: int
    max_items: int = 0
    padded: bool = True

    def __post_init__(self) -> None:
        if self.tokens <= 0:
            raise ValueError(f"token budget must be positive, got tokens={self.tokens}")
        if self.max_items < 0:
            raise ValueError(f"max_items must be >= 0 (0 = no cap), got {self.max_items}")

    def admits(self, count: int, longest: int, total: int) -> bool:
        """Whether a batch of ``count`` items, the longest ``longest`` and ``total`` long together, fits."""
        if self.max_items and count > self.max_items:
            return False
        return (count * longest if self.padded else total) <= self.tokens


def pack(items: Iterable[T], budget: Budget, length: Callable[[T], int]) -> Iterator[list[T]]:
    """Batches of ``items`` in the order given, cut greedily when the next item would not fit
    (``length(item)`` is its cost in tokens); lazy, so a stream (a FASTA file read record by record) is
    never held whole."""
    batch: list[T] = []
    longest = total = 0
    for item in items:
        n = length(item)
        if batch and not budget.admits(len(batch) + 1, max(longest, n), total + n):
            yield batch
            batch, longest, total = [], 0, 0
        batch.append(item)
        longest, total = max(longest, n), total + n
    if batch:
        yield batch


def by_length(lengths: Sequence[int]) -> list[int]:
    """Indices in order of length, ties in input order."""
    return sorted(range(len(lengths)), key=lengths.__getitem__)


def pack_sorted(lengths: Sequence[int], budget: Budget) -> list[list[int]]:
    """Index batches of the items sorted by length: the least padding any packing of the whole list can
    have under a padded budget (the shape offline jobs run, and benchmarks' best case)."""
    return list(pack(by_length(lengths), budget, lengths.__getitem__))


def pack_shuffled(
    lengths: Sequence[int], budget: Budget, rng: random.Random, pool_batches: int = 64
) -> list[list[int]]:
    """Index batches for one training epoch: the items shuffled, cut into pools of about
    ``pool_batches`` batches, each pool sorted by length and packed, then the batches shuffled. Sorting
    within a pool keeps padding low while which items meet in a batch still changes from epoch to epoch;
    the result is a pure function of ``lengths`` and the state of ``rng``."""
    order = list(range(len(lengths)))
    rng.shuffle(order)
    mean_len = max(1, int(sum(lengths) / max(1, len(lengths))))
    pool = max(1, pool_batches * budget.tokens // mean_len)
    batches: list[list[int]] = []
    for start in range(0, len(order), pool):
        chunk = sorted(order[start : start + pool], key=lengths.__getitem__)
        batches.extend(pack(chunk, budget, lengths.__getitem__))
    rng.shuffle(batches)
    return batches


def ranges(batches: Iterable[Sequence[int]]) -> list[tuple[int, int]]:
    """``[start, stop)`` of each batch of consecutive indices (what :func:`pack` makes of ``range(n)``)."""
    return [(b[0], b[-1] + 1) for b in batches]
