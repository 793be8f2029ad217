"""``bench_serve.md``: the run's report in markdown, and its headline values for ``summary.json``."""

from __future__ import annotations

from typing import Any


def render_markdown(report: dict[str, Any], head: str) -> str:
    from protembed_distill.reports import fmt, table

    s = report["settings"]
    w = report["workload"]
    lines = [
        head,
        f"Model `{report['model']['id']}` {report['model']['version']} ({report['model']['variant']}), "
        "server "
        f"`{s['server_command']}` on 127.0.0.1, provider {s['provider']}, {s['threads']} intra-op threads, "
        f"batching {s['server_batching']}. One sequence per request, each sent once, closed loop per "
        f"concurrency level; sequences from the corpus (seed {s['seed']}, cropped to {s['crop']}; the top "
        f"level's {w['sequences']} sequences: median length {w['median']}, mean {w['mean']}, "
        f"max {w['max']}). "
        f"HTTP client: {s['http_client']}, vectors as {s['http_encoding']}. Client and server share this "
        "machine's cores.",
        "",
        "## Headline",
        "",
        table(
            ["figure", "value"],
            [
                [
                    "best server throughput",
                    f"{report['best']['residues_per_s']:.0f} residues/s "
                    f"({report['best']['transport']}, {report['best']['concurrency']} in flight)",
                ],
                [
                    "raw ONNX Runtime on the same sequences, best pass",
                    f"the server queue's batches {report['raw_ort']['server_batches_residues_per_s']:.0f} "
                    f"residues/s ({report['raw_ort']['server_batches']} batches, padding "
                    f"{report['raw_ort']['server_batches_padding_ratio']:.3f}); whole stream "
                    f"length-sorted {report['raw_ort']['residues_per_s']:.0f}; one sequence per run "
                    f"{report['raw_ort']['single_residues_per_s']:.0f}",
                ],
                [
                    "server / raw ONNX Runtime on the same batches (median of paired rounds)",
                    f"{fmt(report['server_vs_raw_ort'])} ("
                    + ", ".join(fmt(r["ratio"]) for r in report["paired_rounds"])
                    + ")",
                ]
                if report["paired_rounds"]
                else [
                    "server / raw ONNX Runtime on the same batches (no paired rounds: best / best)",
                    fmt(report["server_vs_raw_ort"]),
                ],
                [
                    "server / raw ONNX Runtime, best level against best raw pass",
                    fmt(report["server_vs_raw_ort_best"]),
                ],
                [
                    "server / raw ONNX Runtime, whole stream length-sorted (stricter)",
                    fmt(report["server_vs_raw_ort_sorted"]),
                ],
                [
                    "server / raw ONNX Runtime, fastest batch shape",
                    fmt(report["server_vs_raw_ort_best_shape"]),
                ],
                [
                    f"padding ratio, length-bucketed (replay, {max(s['levels'])} in flight)",
                    fmt(report["padding_ratio_bucketed"]),
                ],
                [
                    f"padding ratio, arrival order / FIFO (replay, {max(s['levels'])} in flight)",
                    fmt(report["padding_ratio_fifo"]),
                ],
                [
                    "cache hit vs miss (median-length sequences, median latency)",
                    f"{fmt(report['cache']['hit_median_ms'], 2)} ms vs "
                    f"{fmt(report['cache']['miss_median_ms'], 2)} ms "
                    f"= {fmt(report['cache']['speedup'], 1)}x",
                ],
            ],
        ),
        "",
    ]
    for transport, rows in report["levels"].items():
        lines += [f"## {transport}", ""]
        lines += [
            table(
                [
                    "in flight",
                    "requests",
                    "errors",
                    "req/s",
                    "residues/s",
                    "p50 ms",
                    "p95 ms",
                    "p99 ms",
                    "server: batches",
                    "mean batch",
                    "padding (tokens)",
                ],
                [
                    [
                        str(r["concurrency"]),
                        str(r["requests"]),
                        str(r["errors"]),
                        fmt(r["requests_per_s"], 1),
                        f"{r['residues_per_s']:.0f}",
                        fmt(r["p50_ms"], 1),
                        fmt(r["p95_ms"], 1),
                        fmt(r["p99_ms"], 1),
                        f"{r['server_batching']['batches']:.0f}",
                        fmt(r["server_batching"]["mean_batch_size"], 1),
                        fmt(r["server_batching"]["padding_share_of_tokens"]),
                    ]
                    for r in rows
                ],
            ),
            "",
        ]
    rep = report["padding_replay"]
    lines += [
        "## Padding: length bucketing vs arrival order (same request stream)",
        "",
        "The core's `BatchQueue` replayed with a simulated clock (closed loop, one model worker whose batch "
        "time is padded tokens / the raw ONNX Runtime rate); FIFO = the same queue with `batching=fifo` "
        "(arrival order, no padding bound). Padding ratio = padding share of all padded tokens.",
        "",
        table(
            ["in flight", "bucketed padding", "bucketed mean batch", "FIFO padding", "FIFO mean batch"],
            [
                [
                    c,
                    fmt(rep["bucketed"][c]["padding_ratio"]),
                    fmt(rep["bucketed"][c]["mean_batch_size"], 1),
                    fmt(rep["fifo"][c]["padding_ratio"]),
                    fmt(rep["fifo"][c]["mean_batch_size"], 1),
                ]
                for c in rep["bucketed"]
            ],
        ),
        "",
    ]
    c, a = report["cache"], report["cache_async_client"]
    lines += [
        "## Cache",
        "",
        f"{c['sequences']} sequences of median length {c['length_median']}, each sent once (miss) then "
        f"repeated {report['settings']['cache_repeats']} times, one request at a time over one keep-alive "
        f"connection from a blocking socket (no client event loop); hit p95 {fmt(c['hit_p95_ms'], 2)} ms, "
        f"miss p95 {fmt(c['miss_p95_ms'], 2)} ms. Through the load levels' asyncio client instead (other "
        f"sequences of the same length): hit {fmt(a['hit_median_ms'], 2)} ms vs miss "
        f"{fmt(a['miss_median_ms'], 2)} ms = {fmt(a['speedup'], 1)}x.",
        "",
    ]
    return "\n".join(lines)


def summary_values(report: dict[str, Any]) -> dict[str, Any]:
    return {
        "server_vs_raw_ort": report["server_vs_raw_ort"],
        "server_vs_raw_ort_best": report["server_vs_raw_ort_best"],
        "server_vs_raw_ort_sorted": report["server_vs_raw_ort_sorted"],
        "server_vs_raw_ort_best_shape": report["server_vs_raw_ort_best_shape"],
        "padding_ratio_bucketed": report["padding_ratio_bucketed"],
        "padding_ratio_fifo": report["padding_ratio_fifo"],
        "cache_hit_speedup": report["cache"]["speedup"],
        "server_variant": report["model"]["variant"],
        "server_residues_per_s": report["best"]["residues_per_s"],
    }
