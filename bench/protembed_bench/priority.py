"""Interactive latency under a bulk flood, with and without request priorities.

Three runs against one ``protembed serve`` (bundled model, cache off, so every request reaches the
model): interactive clients alone; the same clients while bulk clients saturate the server with
``priority: bulk``; and the same flood sent without a priority (everything interactive, as before
priorities existed). Interactive latency p50/p99 and bulk throughput per run go to
``reports/priority.md`` and ``.json``::

    python -m protembed_bench.priority --seconds 30
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
import numpy as np

from protembed.testing import free_port, serve_env, spawn_server, stop_server, wait_ready
from protembed_distill.reports import cpu_model

REPO = Path(__file__).resolve().parents[2]


@dataclass
class RunResult:
    name: str
    interactive_requests: int
    interactive_p50_s: float
    interactive_p99_s: float
    interactive_max_s: float
    bulk_residues_per_s: float
    bulk_refused: int


def corpus(path: Path, n: int, seed: int) -> list[str]:
    from protembed.fasta import read_fasta

    seqs = [r.sequence[:512] for r in read_fasta(str(path))]
    random.Random(seed).shuffle(seqs)
    return seqs[:n]


async def _interactive(client: httpx.AsyncClient, seqs: list[str], end: float, out: list[float]) -> None:
    i = 0
    while time.monotonic() < end:
        t0 = time.perf_counter()
        r = await client.post("/embed", json={"sequences": [seqs[i % len(seqs)]]})
        r.raise_for_status()
        out.append(time.perf_counter() - t0)
        i += 1
        await asyncio.sleep(0.05)  # a person or a pipeline step, not a flood


async def _bulk(
    client: httpx.AsyncClient,
    seqs: list[str],
    end: float,
    priority: str | None,
    done: list[int],
    refused: list[int],
) -> None:
    i = 0
    while time.monotonic() < end:
        batch = seqs[i : i + 32] if i + 32 <= len(seqs) else seqs[:32]
        i = (i + 32) % max(1, len(seqs) - 32)
        body: dict[str, object] = {"sequences": batch}
        if priority is not None:
            body["priority"] = priority
        r = await client.post("/embed", json=body)
        if r.status_code == 429:
            refused.append(1)
            await asyncio.sleep(float(r.headers.get("retry-after", "1")))
            continue
        r.raise_for_status()
        done.append(sum(map(len, batch)))


async def run(
    url: str,
    name: str,
    interactive: list[str],
    bulk: list[str],
    seconds: float,
    flood: str | None,
    bulk_clients: int,
) -> RunResult:
    latencies: list[float] = []
    done: list[int] = []
    refused: list[int] = []
    limits = httpx.Limits(max_connections=64)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        start = time.monotonic()
        end = start + seconds
        tasks = [
            asyncio.create_task(_interactive(client, interactive[k::2], end, latencies)) for k in range(2)
        ]
        if flood != "none":
            priority = None if flood == "unprioritised" else "bulk"
            tasks += [
                asyncio.create_task(_bulk(client, bulk[k::bulk_clients], end, priority, done, refused))
                for k in range(bulk_clients)
            ]
        await asyncio.gather(*tasks)
        elapsed = time.monotonic() - start
    lat = np.array(latencies)
    return RunResult(
        name=name,
        interactive_requests=len(lat),
        interactive_p50_s=float(np.percentile(lat, 50)),
        interactive_p99_s=float(np.percentile(lat, 99)),
        interactive_max_s=float(lat.max()),
        bulk_residues_per_s=sum(done) / elapsed,
        bulk_refused=len(refused),
    )


def start_server(log: Path, threads: int) -> tuple[str, object]:
    port = free_port()
    env = serve_env(
        port,
        {
            "PROTEMBED_GRPC_PORT": "0",
            "PROTEMBED_PROVIDERS": "CPUExecutionProvider",
            "PROTEMBED_INTRA_OP_THREADS": str(threads),
            "PROTEMBED_CACHE_MAX_BYTES": "0",
            "PROTEMBED_LOG_LEVEL": "warning",
        },
    )
    proc = spawn_server(env, log)
    url = f"http://127.0.0.1:{port}"
    wait_ready(url, proc, log)
    return url, proc


def report(results: list[RunResult], args: argparse.Namespace, command: str) -> str:
    idle = results[0]
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    cpu = f"{cpu_model()}, {os.cpu_count()} cores"
    lines = [
        "# Interactive latency under a bulk flood, with and without priorities",
        "",
        f"Command: `{command}`  ",
        f"Date: {when}; CPU: {cpu}; bundled model, cache off, {args.threads} intra-op thread(s); other "
        "jobs shared the cores, so compare the rows of this one run.",
        "",
        f"2 interactive clients (one sequence per request, a 50 ms pause between requests) for "
        f"{args.seconds:.0f} s per run; the flood is {args.bulk_clients} bulk clients sending 32 sequences "
        "per request back to back.",
        "",
        "| run | interactive requests | p50 (s) | p99 (s) | max (s) | p99 / idle p99 | bulk residues/s "
        "| bulk 429s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.name} | {r.interactive_requests} | {r.interactive_p50_s:.3f} | "
            f"{r.interactive_p99_s:.3f} | {r.interactive_max_s:.3f} | "
            f"{r.interactive_p99_s / idle.interactive_p99_s:.2f} | "
            f"{r.bulk_residues_per_s:,.0f} | {r.bulk_refused} |"
        )
    lines += [
        "",
        "Target (issue 18): interactive p99 under bulk load within 2x of its idle value. A batch already "
        "running is never interrupted, so an interactive request can still wait for one bulk batch "
        "(bulk_batch_share of max_batch_tokens: a quarter by default) plus its own. Bulk throughput is "
        "lower with priorities: its batches are smaller and interactive work goes first.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--bulk-clients", type=int, default=6)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--corpus", type=Path, default=REPO.parent / "shared" / "data" / "corpus" / "corpus.fasta"
    )
    parser.add_argument("--out", type=Path, default=REPO / "reports" / "priority")
    args = parser.parse_args(argv)
    seqs = corpus(args.corpus, 20_000, seed=7)
    interactive, bulk = seqs[:2000], seqs[2000:]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    url, proc = start_server(args.out.with_suffix(".server.log"), args.threads)
    try:
        results: list[RunResult] = []
        for name, flood in (
            ("interactive alone", "none"),
            ("with bulk flood, priority=bulk", "bulk"),
            ("with bulk flood, no priorities", "unprioritised"),
        ):
            # distinct sequences per run: nothing is answered from an earlier run's work
            k = len(results)
            r = asyncio.run(
                run(url, name, interactive[k::3], bulk[k::3], args.seconds, flood, args.bulk_clients)
            )
            print(
                f"{name}: p50 {r.interactive_p50_s:.3f} s, p99 {r.interactive_p99_s:.3f} s, "
                f"bulk {r.bulk_residues_per_s:,.0f} res/s",
                file=sys.stderr,
            )
            results.append(r)
    finally:
        stop_server(proc)  # type: ignore[arg-type]
    command = "python -m protembed_bench.priority " + " ".join(argv if argv is not None else sys.argv[1:])
    args.out.with_suffix(".md").write_text(report(results, args, command.strip()))
    args.out.with_suffix(".json").write_text(json.dumps([asdict(r) for r in results], indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
