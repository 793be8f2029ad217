"""Closed-loop load: ``concurrency`` clients each sending the next sequence when their previous one returns,
and the latency/throughput summary of one level."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from protembed_bench.serve.clients import Call

PERCENTILES = (50, 95, 99)


async def closed_loop(
    call: Call, sequences: Sequence[str], concurrency: int, seconds: float
) -> dict[str, Any]:
    """``concurrency`` workers each send the next sequence as soon as their previous one returns."""
    latencies: list[float] = []
    residues = 0
    errors: list[str] = []
    it = iter(sequences)
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal residues
        for seq in it:
            if time.perf_counter() > deadline:
                return
            t0 = time.perf_counter()
            try:
                await call(seq)
            except Exception as exc:  # a failed request is counted, not fatal: the level still reports
                errors.append(f"{type(exc).__name__}: {exc}"[:200])
                continue
            latencies.append(time.perf_counter() - t0)
            residues += len(seq)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - start
    return summarize(latencies, residues, wall, concurrency, errors)


def summarize(
    latencies: list[float], residues: int, wall: float, concurrency: int, errors: list[str]
) -> dict[str, Any]:
    lat_ms = np.array(latencies) * 1000.0
    pct = np.percentile(lat_ms, PERCENTILES) if len(lat_ms) else [float("nan")] * len(PERCENTILES)
    return {
        "concurrency": concurrency,
        "requests": len(latencies),
        "errors": len(errors),
        "first_errors": errors[:3],
        "seconds": wall,
        "requests_per_s": len(latencies) / wall if wall > 0 else 0.0,
        "residues_per_s": residues / wall if wall > 0 else 0.0,
        **{f"p{p}_ms": float(v) for p, v in zip(PERCENTILES, pct, strict=True)},
        "mean_ms": float(lat_ms.mean()) if len(lat_ms) else float("nan"),
    }
