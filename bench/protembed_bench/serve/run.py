"""The whole ``protembed bench serve`` run: draw the request streams, start the server, sweep the load levels
per transport, pair raw ONNX Runtime with the server at the top level, time the cache, replay the padding."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from protembed_bench.serve.cache_timing import cache_latency, cache_latency_async
from protembed_bench.serve.clients import Call, run_client, with_transport
from protembed_bench.serve.config import ServeBenchConfig
from protembed_bench.serve.load import closed_loop
from protembed_bench.serve.metrics import batching_delta, scrape
from protembed_bench.serve.raw_ort import prepare_raw_ort
from protembed_bench.serve.replay import queue_kwargs, replay_padding
from protembed_bench.serve.server import ServerProcess


def paired_round(
    cfg: ServeBenchConfig,
    server: ServerProcess,
    stream: list[str],
    batching: dict[str, Any],
    log: Callable[[str], None],
) -> dict[str, Any]:
    """Raw ONNX Runtime on the batches the server's queue forms from ``stream`` (mean over passes, the
    server idle), then the server on that stream at the top level over the first transport: two means
    over similar windows, seconds apart, so a drift in the host's speed cancels in their ratio."""
    raw = prepare_raw_ort(cfg, stream, batching)(with_singles=False)
    top, transport = max(cfg.levels), cfg.transports[0]

    async def body(call: Call) -> dict[str, Any]:
        return await closed_loop(call, stream, top, cfg.seconds_per_level)

    row = run_client(with_transport(transport, server, cfg, body, top))
    out = {
        "transport": transport,
        "concurrency": top,
        "raw_residues_per_s": raw["server_batches_mean_residues_per_s"],
        "server_residues_per_s": row["residues_per_s"],
        "errors": row["errors"],
        "ratio": row["residues_per_s"] / raw["server_batches_mean_residues_per_s"],
    }
    log(
        f"bench serve: paired round: server {out['server_residues_per_s']:.0f} res/s vs raw "
        f"{out['raw_residues_per_s']:.0f} = {out['ratio']:.3f}"
    )
    return out


def median_length_pool(sequences: Sequence[str], k: int) -> list[str]:
    """The k sequences whose lengths are closest to the pool's median length."""
    median = statistics.median(len(s) for s in sequences)
    return sorted(sequences, key=lambda s: (abs(len(s) - median), s))[:k]


# --- the whole run ----------------------------------------------------------------------------------
def level_sizes(cfg: ServeBenchConfig) -> list[int]:
    return [max(cfg.requests_per_level, 8 * c) for c in cfg.levels]


def run_serve_bench(cfg: ServeBenchConfig, work: Path, log: Callable[[str], None] = print) -> dict[str, Any]:
    from protembed.artifact import read_model_card
    from protembed.runtime import AUTO_VARIANT, variant_for
    from protembed_bench.model import length_stats
    from protembed_distill.data.dataset import read_corpus

    card = read_model_card(cfg.model_dir)
    if cfg.variant == AUTO_VARIANT:  # the server runs on the CPU here, and raw ORT must run the same file
        cfg = replace(cfg, variant=variant_for(card, "CPUExecutionProvider"))
    crop = card.max_length
    sizes = level_sizes(cfg)
    top_size = sizes[cfg.levels.index(max(cfg.levels))]
    needed = (
        len(cfg.transports) * (sum(sizes) + cfg.warmup_requests)
        + cfg.paired_rounds * top_size
        + 2 * cfg.cache_sequences * 20
    )
    records = read_corpus(cfg.corpus)
    order = np.random.default_rng(cfg.seed).permutation(len(records))
    pool = list(dict.fromkeys(records[i].sequence[:crop] for i in order))
    if len(pool) < needed:
        raise ValueError(
            f"{cfg.corpus}: {len(pool)} distinct sequences, this run needs {needed}; lower "
            "--requests-per-level or the levels"
        )
    cursor = 0

    def take(n: int) -> list[str]:
        nonlocal cursor
        cursor += n
        return pool[cursor - n : cursor]

    server = ServerProcess(cfg, work / "server.log")
    try:
        server.wait_ready(cfg.startup_timeout_s)
        import httpx

        info = httpx.get(server.url + "/info", timeout=10.0).json()
        batching = {k: v for k, v in info.get("batching", {}).items() if not k.startswith("queued_")}
        levels: dict[str, list[dict[str, Any]]] = {}
        # Every request stream is drawn up front (same order as before), so the raw ONNX Runtime limit can
        # be measured on the final stream several times while the server sits idle between transports:
        # on a shared machine the cores' speed drifts over minutes, and one measurement after the run
        # compared a slow moment with the server's best.
        plan = [
            (transport, take(cfg.warmup_requests), [take(n) for n in sizes]) for transport in cfg.transports
        ]
        streams = plan[-1][2][cfg.levels.index(max(cfg.levels))]
        measure_raw = prepare_raw_ort(cfg, streams, batching)
        raws: list[dict[str, Any]] = []
        for transport, warm, level_seqs in plan:
            raws.append(measure_raw())

            async def warm_up(call: Call, seqs: list[str] = warm) -> None:
                for s in seqs:
                    await call(s)

            run_client(with_transport(transport, server, cfg, warm_up, 4))
            levels[transport] = []
            for concurrency, seqs in zip(cfg.levels, level_seqs, strict=True):

                async def body(call: Call, seqs: list[str] = seqs, c: int = concurrency) -> dict[str, Any]:
                    return await closed_loop(call, seqs, c, cfg.seconds_per_level)

                before = scrape(server.url)
                row = run_client(with_transport(transport, server, cfg, body, concurrency))
                row["server_batching"] = batching_delta(before, scrape(server.url))
                levels[transport].append(row)
                log(
                    f"bench serve: {transport} x{concurrency}: {row['requests_per_s']:.1f} req/s, "
                    f"{row['residues_per_s']:.0f} res/s, p50 {row['p50_ms']:.1f} ms, "
                    f"p99 {row['p99_ms']:.1f} ms, "
                    f"errors {row['errors']}"
                )
        paired = [paired_round(cfg, server, take(top_size), batching, log) for _ in range(cfg.paired_rounds)]
        cache = cache_latency(
            server, cfg, median_length_pool(take(cfg.cache_sequences * 20), cfg.cache_sequences)
        )
        cache_async = run_client(
            cache_latency_async(
                server, cfg, median_length_pool(take(cfg.cache_sequences * 20), cfg.cache_sequences)
            )
        )
        log(
            f"bench serve: cache hit {cache['hit_median_ms']:.2f} ms vs miss {cache['miss_median_ms']:.2f} ms"
        )
    finally:
        server.stop()
    # The limit, measured again while the server is stopped; the best measurement is the limit.
    raws.append(measure_raw())
    raw = {
        **max(raws, key=lambda r: r["residues_per_s"]),
        "all_residues_per_s": [r["residues_per_s"] for r in raws],
        "all_limit_residues_per_s": [r["limit_residues_per_s"] for r in raws],
        "all_server_batches_residues_per_s": [r["server_batches_residues_per_s"] for r in raws],
    }
    raw["limit_residues_per_s"] = max(raw["all_limit_residues_per_s"])
    raw["server_batches_residues_per_s"] = max(raw["all_server_batches_residues_per_s"])
    log(
        f"bench serve: raw ONNX Runtime {raw['server_batches_residues_per_s']:.0f} residues/s in the server "
        f"queue's batches, {raw['residues_per_s']:.0f} in length-sorted batches, "
        f"{raw['single_residues_per_s']:.0f} one at a time"
    )
    best_transport, best = max(
        ((t, r) for t, rows in levels.items() for r in rows), key=lambda tr: tr[1]["residues_per_s"]
    )
    replay = {
        policy: {
            str(c): replay_padding(
                streams,
                fifo=policy == "fifo",
                concurrency=c,
                tokens_per_s=raw["padded_tokens_per_s"],
                **queue_kwargs(batching),
            )
            for c in cfg.levels
        }
        for policy in ("bucketed", "fifo")
    }
    top = str(max(cfg.levels))
    return {
        "model": {
            "folder": str(cfg.model_dir),
            "id": card.id,
            "version": card.version,
            "variant": cfg.variant,
        },
        "settings": {
            "threads": cfg.threads,
            "levels": cfg.levels,
            "requests_per_level": sizes,
            "seconds_per_level": cfg.seconds_per_level,
            "transports": cfg.transports,
            "http_encoding": cfg.http_encoding,
            "http_client": cfg.http_client,
            "cache_repeats": cfg.cache_repeats,
            "seed": cfg.seed,
            "crop": crop,
            "server_command": " ".join(server.command),
            "server_batching": batching,
            "provider": info.get("provider"),
        },
        "workload": length_stats(streams),
        "levels": levels,
        "raw_ort": raw,
        "best": {
            "transport": best_transport,
            "concurrency": best["concurrency"],
            "residues_per_s": best["residues_per_s"],
        },
        # As the issue defines it, at saturation: against raw ONNX Runtime on the same batches, those the
        # server's queue forms from the stream at the top level. What the server adds (HTTP, Python, the
        # cores shared with its event loop and the load client), its batching choices aside. The median
        # of paired rounds: this host's speed drifts by a fifth within minutes, and a ratio of two bests
        # taken minutes apart measured the drift as much as the server.
        "server_vs_raw_ort": (
            statistics.median(r["ratio"] for r in paired)
            if paired
            else best["residues_per_s"] / raw["server_batches_residues_per_s"]
        ),
        "paired_rounds": paired,
        # The best level of the sweep against the best raw pass of the run.
        "server_vs_raw_ort_best": best["residues_per_s"] / raw["server_batches_residues_per_s"],
        # Stricter: against the whole stream length-sorted into full batches, which no online batcher
        # sees (it also charges the server for the padding and size of the batches it can form).
        "server_vs_raw_ort_sorted": best["residues_per_s"] / raw["residues_per_s"],
        # Against whichever batch shape the hardware runs fastest (one sequence per run wins on some CPUs).
        "server_vs_raw_ort_best_shape": best["residues_per_s"] / raw["limit_residues_per_s"],
        "padding_replay": replay,
        "padding_ratio_bucketed": replay["bucketed"][top]["padding_ratio"],
        "padding_ratio_fifo": replay["fifo"][top]["padding_ratio"],
        "cache": cache,
        "cache_async_client": cache_async,
    }
