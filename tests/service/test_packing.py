"""The one token-budget packer: budgets, orders, laziness, and the training epoch's shuffled pools."""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protembed.packing import Budget, by_length, pack, pack_shuffled, pack_sorted, ranges

lengths_st = st.lists(st.integers(min_value=1, max_value=300), max_size=120)
budget_st = st.builds(
    Budget,
    tokens=st.integers(min_value=1, max_value=2000),
    max_items=st.integers(min_value=0, max_value=20),
    padded=st.booleans(),
)


def _cost(batch: list[int], lengths: list[int], budget: Budget) -> int:
    ns = [lengths[i] for i in batch]
    return len(ns) * max(ns) if budget.padded else sum(ns)


@given(lengths_st, budget_st)
def test_every_batch_keeps_the_budget_unless_one_item_alone_exceeds_it(
    lengths: list[int], budget: Budget
) -> None:
    batches = list(pack(range(len(lengths)), budget, lengths.__getitem__))
    assert [i for b in batches for i in b] == list(range(len(lengths)))  # every item once, in order
    for b in batches:
        assert b, "no empty batch"
        if len(b) > 1:
            assert _cost(b, lengths, budget) <= budget.tokens
            assert not budget.max_items or len(b) <= budget.max_items


@given(lengths_st, budget_st)
def test_greedy_cuts_only_where_the_next_item_would_not_fit(lengths: list[int], budget: Budget) -> None:
    batches = list(pack(range(len(lengths)), budget, lengths.__getitem__))
    for b, nxt in itertools.pairwise(batches):
        grown = [*b, nxt[0]]
        over_count = bool(budget.max_items) and len(grown) > budget.max_items
        assert over_count or _cost(grown, lengths, budget) > budget.tokens


def test_padded_and_unpadded_budgets() -> None:
    lengths = [40, 40, 40, 10]
    assert list(pack(range(4), Budget(90, padded=False), lengths.__getitem__)) == [[0, 1], [2, 3]]
    # padded: 2 x 40 = 80 fits 90, a third row would be 120
    assert list(pack(range(4), Budget(90), lengths.__getitem__)) == [[0, 1], [2, 3]]
    assert list(pack(range(4), Budget(100), lengths.__getitem__)) == [[0, 1], [2, 3]]
    assert list(pack(range(4), Budget(130), lengths.__getitem__)) == [[0, 1, 2], [3]]


def test_count_cap_and_an_oversized_item_alone() -> None:
    fives = [5] * 5
    capped = Budget(100, max_items=2, padded=False)
    assert ranges(pack(range(5), capped, fives.__getitem__)) == [(0, 2), (2, 4), (4, 5)]
    lengths = [10, 500, 10]
    assert list(pack(range(3), Budget(100, padded=False), lengths.__getitem__)) == [[0], [1], [2]]
    assert list(pack([], Budget(10), len)) == []


def test_pack_is_lazy_on_a_stream() -> None:
    pulled: list[str] = []

    def stream() -> Iterator[str]:
        for s in ["AAAA", "BBBB", "CCCC", "DDDD"]:
            pulled.append(s)
            yield s

    batches = pack(stream(), Budget(8, padded=False), len)
    assert next(batches) == ["AAAA", "BBBB"]
    assert pulled == ["AAAA", "BBBB", "CCCC"]  # only what it took to close the first batch
    assert list(batches) == [["CCCC", "DDDD"]]


def test_pack_sorted_orders_by_length_with_ties_in_input_order() -> None:
    lengths = [30, 10, 20, 10]
    assert by_length(lengths) == [1, 3, 2, 0]
    # 10, 10 (20 tokens); + 20 would pad to 3 x 20 = 60 > 40; 20 + 30 would pad to 60 too
    assert pack_sorted(lengths, Budget(40)) == [[1, 3], [2], [0]]
    assert pack_sorted(lengths, Budget(60)) == [[1, 3, 2], [0]]


def test_pack_sorted_respects_the_budget_and_covers_everything() -> None:
    lengths = [5, 50, 7, 300, 20, 20, 49, 1]
    batches = pack_sorted(lengths, Budget(100))
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        assert len(b) == 1 or max(lengths[i] for i in b) * len(b) <= 100
    flat = [lengths[i] for b in batches for i in b]
    assert flat == sorted(flat)  # length-sorted


@given(lengths_st, st.integers(min_value=1, max_value=4000), st.integers(min_value=0, max_value=10**6))
def test_pack_shuffled_is_a_pure_function_of_the_rng_and_covers_every_item(
    lengths: list[int], tokens: int, seed: int
) -> None:
    budget = Budget(tokens)
    one = pack_shuffled(lengths, budget, random.Random(seed))
    assert one == pack_shuffled(lengths, budget, random.Random(seed))
    assert sorted(i for b in one for i in b) == list(range(len(lengths)))
    assert all(len(b) == 1 or _cost(b, lengths, budget) <= tokens for b in one)


def test_pack_shuffled_changes_from_epoch_to_epoch_and_pads_little() -> None:
    rng_lengths = random.Random(0)
    lengths = [rng_lengths.randint(20, 500) for _ in range(2000)]
    budget = Budget(4096)
    a = pack_shuffled(lengths, budget, random.Random(1))
    b = pack_shuffled(lengths, budget, random.Random(2))
    assert a != b
    padded = sum(_cost(x, lengths, budget) for x in a)
    assert 1 - sum(lengths) / padded < 0.1  # sorted pools: little padding despite the shuffle


@pytest.mark.parametrize("kwargs", [{"tokens": 0}, {"tokens": -5}, {"tokens": 10, "max_items": -1}])
def test_bad_budgets_are_refused_naming_the_field(kwargs: dict[str, int]) -> None:
    field = "max_items" if "max_items" in kwargs else "tokens"
    with pytest.raises(ValueError, match=field):
        Budget(**kwargs)
