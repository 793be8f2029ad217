"""``reports/bench_peers.md`` from a ``bench peers`` run, and its latency-vs-throughput plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from protembed_bench.peers.catalog import PROTEMBED, describe
from protembed_bench.peers.run import best_run, top_row


def _fmt(value: float | None, digits: int = 0) -> str:
    from protembed_distill.reports import fmt

    return fmt(value, digits)


def render_markdown(report: dict[str, Any], head: str, plot_name: str | None) -> str:
    from protembed_distill.reports import table

    s, w, h = report["settings"], report["workload"], report["headline"]
    top = h["top_level"]
    tol, fc = s["tolerance"], report["file_check"]
    lines = [
        head,
        f"Model `{report['model']['id']}` {report['model']['version']}, the **{report['model']['variant']}** "
        f"file (sha256 `{str(report['model'].get('sha256'))[:12]}`), served by every server on the CPU "
        f"with {s['threads']} ONNX Runtime intra-op threads. "
        f"{w['sequences']} corpus sequences (seed {s['seed']}) cut at {s['crop']} residues "
        f"({w['residues']} residues; median length {w['median']}, max {w['max']}), one sequence per request, "
        f"every sequence once per level, closed loop at {', '.join(map(str, s['levels']))} requests in "
        f"flight, the same keep-alive HTTP client for every server; each server runs alone, with each of "
        f"two batching settings, and the better one at {top} in flight is kept. protembed runs with its "
        "cache off. Client and servers share this machine's cores, and **other jobs were running on the "
        "same 2 cores during this run** (see the load average above): absolute figures are low and noisy; "
        "compare the ratios, whose two sides were measured minutes apart in the same run.",
        "",
        "## Headline",
        "",
    ]
    rows = []
    if "protembed_vs_best_peer" in h:
        per_round = ", ".join(f"{r:.2f}" for r in h["protembed_vs_best_peer_per_round"])
        rows.append(
            [
                f"protembed / best peer ({h['best_peer']}), residues/s at {top} in flight",
                f"**{h['protembed_vs_best_peer']:.2f}x** ({_fmt(h['protembed_residues_per_s'])} vs "
                f"{_fmt(h['best_peer_residues_per_s'])}; per round: {per_round}; target >= 2)",
            ]
        )
    if "protembed_vs_raw_ort_same_batches" in h:
        rows.append(
            [
                "protembed / raw ONNX Runtime on the same batches (those its queue forms from this stream)",
                f"**{h['protembed_vs_raw_ort_same_batches']:.3f}** (target >= 0.95); against the whole "
                f"stream "
                f"length-sorted: {h['protembed_vs_raw_ort_length_sorted']:.3f}",
            ]
        )
    if "p99_no_worse_than_any_peer" in h:
        rows.append(
            [
                f"protembed p99 at {top} in flight no worse than any peer's",
                f"{'yes' if h['p99_no_worse_than_any_peer'] else '**no**'} "
                f"(protembed {_fmt(h['protembed_p99_ms'])} ms)",
            ]
        )
    rows.append(["servers that did not install, start or finish cleanly", ", ".join(h["failed"]) or "none"])
    lines += [table(["figure", "value"], rows), ""]

    summary = []
    for srv in report["servers"].values():
        run = best_run(srv, top)
        row = top_row(run, top) if run else None
        first = (
            next((r for r in run["levels"] if r["concurrency"] == min(s["levels"])), None) if run else None
        )
        summary.append(
            [
                srv["title"],
                ", ".join(f"{k} {v}" for k, v in srv["versions"].items()) or "—",
                describe(run["setting"]) if run else "—",
                _fmt(first["residues_per_s"]) if first else "—",
                _fmt(row["residues_per_s"]) if row else "—",
                _fmt(row["p50_ms"]) if row else "—",
                _fmt(row["p99_ms"]) if row else "—",
                _fmt(row["batching"].get("mean_batch_size"), 1) if row else "—",
                _fmt(row["batching"].get("padding_share_of_tokens"), 2) if row else "—",
                _fmt(run.get("startup_s"), 1) if run else "—",
            ]
        )
    lines += [
        f"## Each server with its better setting ({top} in flight decides)",
        "",
        table(
            [
                "server",
                "versions",
                "setting kept",
                f"res/s, {min(s['levels'])} in flight",
                f"res/s, {top} in flight",
                f"p50 ms, {top}",
                f"p99 ms, {top}",
                "mean batch",
                "padding share",
                "start-up s",
            ],
            summary,
        ),
        "",
        "Padding share = padding tokens / all tokens the model ran, from each server's own counters "
        "(protembed's /metrics; the peers' shared model wrapper counts every batch it is handed). "
        "Start-up = from spawning the process to its first correct answer.",
        "",
    ]
    if plot_name:
        lines += [f"![latency vs throughput]({plot_name})", ""]

    lines += ["## Every run", ""]
    detail = []
    for srv in report["servers"].values():
        for run in srv["runs"]:
            for r in run["levels"]:
                c = r["correctness"]
                detail.append(
                    [
                        srv["title"],
                        str(run["round"]),
                        describe(run["setting"]),
                        str(r["concurrency"]),
                        str(r["requests"]),
                        str(r["errors"]),
                        _fmt(r["residues_per_s"]),
                        _fmt(r["p50_ms"]),
                        _fmt(r["p99_ms"]),
                        _fmt(r["batching"].get("mean_batch_size"), 1),
                        _fmt(r["batching"].get("padding_share_of_tokens"), 2),
                        f"{c['max_abs_diff']:.2g} / {c['min_cosine']:.5f}",
                    ]
                )
    lines += [
        table(
            [
                "server",
                "round",
                "setting",
                "in flight",
                "answers",
                "errors",
                "res/s",
                "p50 ms",
                "p99 ms",
                "mean batch",
                "padding",
                "max abs diff / min cosine",
            ],
            detail,
        ),
        "",
    ]
    for srv in report["servers"].values():
        for run in srv["runs"]:
            if "raw_ort" in run:
                raw = run["raw_ort"]
                lines.append(
                    f"- raw ONNX Runtime beside protembed ({describe(run['setting'])}, "
                    f"round {run['round']}): "
                    f"its queue's batches {_fmt(raw['same_batches_residues_per_s'])} residues/s "
                    f"({raw['same_batches_batches']} batches, padding {raw['same_batches_padding']:.3f}) -> "
                    f"ratio {raw['ratio']:.3f}; length-sorted {_fmt(raw['length_sorted_residues_per_s'])} "
                    f"(padding {raw['length_sorted_padding']:.3f}) -> {raw['ratio_to_length_sorted']:.3f}"
                )
    lines += [
        "",
        "## Correctness",
        "",
        f"Every answer (warm-up and start-up probes included) is compared with raw ONNX Runtime on that "
        f"sequence alone; an answer off by more than {tol['max_abs_diff']:g} (max abs) or below cosine "
        f"{tol['min_cosine']:g} counts as an error. Why that tolerance: this file's own vectors move "
        f"with their batch-mates — on this run's sequences, padded batches of 32 in arrival order differ "
        f"from one-at-a-time by up to {fc['batched_32_max_abs_diff']:.3g} abs (cosine >= "
        f"{fc['batched_32_min_cosine']:.5f}) with no server involved — while the closest two distinct "
        f"sequences are at cosine {fc['closest_distinct_cosine']:.3f}, so an answer for the wrong sequence "
        "or a pooling bug cannot pass. (fp32 runs use 1e-4 abs; the int8 file's batch dependence is being "
        "removed by static quantization, issue 16.)",
        "",
        "## Settings, start-up and failures",
        "",
    ]
    for srv in report["servers"].values():
        inst = srv["install"]
        state = (
            "not installed: " + (inst["error"] or "")
            if not inst["ok"]
            else (f"installed in {inst['seconds']:.0f} s" if inst["seconds"] else "installed (venv reused)")
        )
        lines.append(f"- **{srv['title']}** ({srv['note']}); {state}.")
        for run in srv["runs"]:
            start = (
                f"first answer after {run['startup_s']:.1f} s" if run.get("startup_s") else "did not start"
            )
            lines.append(
                f"  - round {run['round']}, {describe(run['setting'])}: {start}"
                + (f"; command `{run['command']}`" if run.get("command") else "")
                + (f"; **failed**: {run['error']}" if run["error"] else "")
                + "".join(
                    f"; {r['errors']} errors at {r['concurrency']} in flight (first: {r['first_errors'][:1]})"
                    for r in run["levels"]
                    if r["errors"]
                )
            )
    lines += [
        "",
        "Each peer runs from its own virtualenv under "
        f"`{s['env_root']}/<name>/venv`, built on first use from "
        "`bench/protembed_bench/peers/requirements/<name>.txt` (pinned; the wrappers are in "
        "`bench/protembed_bench/peers/servers/`).",
    ]
    return "\n".join(lines)


def plot(report: dict[str, Any], path: Path) -> Path | None:
    """p50 (solid) and p99 (dashed) latency against residues/s, each server's kept setting."""
    from protembed_bench.plots import _pyplot

    top = report["headline"]["top_level"]
    runs = {n: r for n, s in report["servers"].items() if (r := best_run(s, top)) is not None}
    if not runs:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.0, 4.6))
    for i, (name, run) in enumerate(runs.items()):
        rows = [r for r in run["levels"] if r["requests"]]
        colour = "black" if name == PROTEMBED else f"C{i}"
        x = [r["residues_per_s"] for r in rows]
        title = report["servers"][name]["title"]
        ax.plot(
            x,
            [r["p50_ms"] for r in rows],
            "o-",
            color=colour,
            label=f"{title} p50",
            lw=2 if name == PROTEMBED else 1,
        )
        ax.plot(x, [r["p99_ms"] for r in rows], "s--", color=colour, alpha=0.5, label=f"{title} p99")
        for r in rows:
            ax.annotate(
                str(r["concurrency"]),
                (r["residues_per_s"], r["p50_ms"]),
                textcoords="offset points",
                xytext=(3, -9),
                fontsize=7,
            )
    ax.set_yscale("log")
    ax.set_xlabel("throughput (residues / s)")
    ax.set_ylabel("latency (ms, log)")
    ax.set_title("protembed vs peer servers, same ONNX file (labels: requests in flight)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def summary_values(report: dict[str, Any]) -> dict[str, Any]:
    h = report["headline"]
    keys = ("protembed_vs_best_peer", "protembed_vs_raw_ort_same_batches", "best_peer")
    return {f"peers_{k}" if not k.startswith("protembed") else k: h[k] for k in keys if k in h}
