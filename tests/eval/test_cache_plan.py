"""The capacity plan's measurement harness (protembed_bench.cache_plan): the repeat pattern it replays,
and a hit-rate and bytes measurement on a real redis-server, small enough for the test suite."""

from __future__ import annotations

import itertools
import shutil
from pathlib import Path

import pytest

from protembed.artifact import read_model_card
from protembed_bench.cache_plan import measure_bytes, measure_hits, render, repeat_pattern

SEQS = ["M" + "ACDEFGHIKLMNPQRSTVWY"[i % 20] * (1 + i % 7) + f"K{i}" for i in range(400)]  # keys only

needs_redis = pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server not installed")


def test_each_pass_replaces_the_fraction_with_unseen_sequences() -> None:
    seqs = [f"S{i}" for i in range(300)]
    runs = repeat_pattern(seqs, proteome=100, new_fraction=0.1, passes=3, seed=0)
    assert [len(r) for r in runs] == [100, 100, 100]
    assert set(runs[0]) == set(seqs[:100])
    seen: set[str] = set()
    for before, after in itertools.pairwise(runs):
        seen |= set(before)
        assert len(set(after) & set(before)) == 90
        assert len(set(after) - seen) == 10  # the new ones were never embedded before


@needs_redis
def test_a_cache_that_holds_the_proteome_hits_all_but_the_new_sequences() -> None:
    result = measure_hits(SEQS, proteome=200, new_fraction=0.1, passes=3, fractions=[2.0], dim=16)
    for row in result["rows"]:
        assert row["hit_rate_per_pass"] == [0.0, 0.9, 0.9], row
        assert row["entries_held_at_end"] == 240  # 200 + 2 x 20 new, nothing evicted
    assert result["float32_footprint_bytes"] > 200 * (9 + 16 * 4)


@needs_redis
def test_bytes_per_entry_cover_the_value_and_float16_halves_it(tiny_model_dir: Path) -> None:
    card = read_model_card(tiny_model_dir)
    # enough entries that Redis's own allocations (client buffers, a few KB) are noise next to the values
    rows = measure_bytes(card, SEQS, n_protein=400, n_residue=400)
    assert {r["redis"] for r in rows} == {"single", "cluster node"}
    for r in rows:
        assert r["bytes_per_entry"] > r["value_bytes"] > 0, r
    by = {(r["redis"], r["output"], r["encoding"]): r for r in rows}
    for (mode, output, encoding), r in by.items():
        if encoding == "float16":
            f32 = by[(mode, output, "float32")]
            assert r["value_bytes"] - 9 == pytest.approx((f32["value_bytes"] - 9) / 2, abs=2), r
    report = {
        "bytes": rows,
        "runs": {"bytes": {"command": "c", "date": "d", "cpu": "x"}},
        "redis_version": "7",
        "redis_py": "8",
    }
    assert "| single | " in render(report)
