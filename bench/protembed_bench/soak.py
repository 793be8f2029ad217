"""A soak: mixed traffic against one server for a long time, with Redis restarted under it.

Interactive REST clients (sequences of every length, long ones chunked), a gRPC client, a bulk client
(``priority: bulk``, honouring 429 Retry-After), a per-residue client and a client sending bad input, for
``--seconds`` (30 minutes by default); the server's Redis (its own redis-server on a free port) is killed
and restarted every ``--redis-restart-every`` seconds. The server's RSS is sampled every 10 s. Checked:
no 5xx, every request answered (no exception, no timeout), every good answer the right shape, bad input
always 422, and RSS after warm-up not growing. Figures in ``reports/soak.md`` and ``.json``::

    python -m protembed_bench.soak --seconds 1800
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import grpc
import httpx

from protembed.proto import embedder_pb2 as pb
from protembed.proto import embedder_pb2_grpc as pb_grpc
from protembed.testing import RedisServer, free_port, serve_env, spawn_server, stop_server, wait_ready
from protembed_distill.reports import cpu_model

REPO = Path(__file__).resolve().parents[2]


class Tally:
    def __init__(self) -> None:
        self.status: Counter[str] = Counter()
        self.problems: list[str] = []

    def bad(self, what: str) -> None:
        if len(self.problems) < 50:
            self.problems.append(what)
        self.status["problem"] += 1


def corpus(path: Path, seed: int) -> list[str]:
    from protembed.fasta import read_fasta

    seqs = [r.sequence for r in read_fasta(str(path))]
    random.Random(seed).shuffle(seqs)
    return seqs


async def rest_client(url: str, seqs: list[str], end: float, t: Tally, kind: str, rng: random.Random) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        i = 0
        while time.monotonic() < end:
            body: dict[str, Any]
            if kind == "interactive":
                body = {"sequences": [seqs[i % len(seqs)]], "normalize": rng.random() < 0.5}
            elif kind == "bulk":
                body = {
                    "sequences": [s[:1500] for s in seqs[i : i + 32]] or seqs[:32],
                    "priority": "bulk",
                    "encoding": "base64",
                }
            elif kind == "per_residue":
                body = {
                    "sequences": [s[:600] for s in seqs[i : i + 4]] or seqs[:4],
                    "per_residue": True,
                    "encoding": "base64",
                }
            else:  # bad input
                body = rng.choice(
                    [
                        {"sequences": ["MK-T"]},
                        {"sequences": ["MK1"]},
                        {"sequences": []},
                        {"sequences": ["MK"], "output": "nope"},
                        {"sequences": ["MK"], "priority": "x"},
                    ]
                )
            i += 1 if kind == "interactive" else 32
            try:
                r = await client.post("/embed", json=body)
            except httpx.HTTPError as err:
                t.bad(f"{kind}: {type(err).__name__}")
                continue
            t.status[f"{kind} {r.status_code}"] += 1
            if r.status_code >= 500:
                t.bad(f"{kind}: {r.status_code} {r.text[:200]}")
            elif kind == "bad":
                if r.status_code != 422:
                    t.bad(f"bad input answered {r.status_code}")
            elif r.status_code == 429:
                await asyncio.sleep(float(r.headers.get("retry-after", "1")))
            elif r.status_code != 200:
                t.bad(f"{kind}: {r.status_code} {r.text[:200]}")
            elif len(r.json()["data"]) != len(body["sequences"]):
                t.bad(f"{kind}: {len(r.json()['data'])} answers for {len(body['sequences'])} sequences")
            if kind in ("interactive", "bad"):
                await asyncio.sleep(0.05)


async def grpc_client(target: str, seqs: list[str], end: float, t: Tally) -> None:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.EmbedderStub(channel)
        i = 0
        while time.monotonic() < end:
            batch = [pb.Sequence(id=f"g{i + k}", sequence=s) for k, s in enumerate(seqs[i : i + 8])]
            i += 8
            try:
                reply = await stub.Embed(pb.EmbedRequest(sequences=batch), timeout=120)
                t.status["grpc OK"] += 1
                if [e.id for e in reply.embeddings] != [s.id for s in batch]:
                    t.bad("grpc: ids out of order")
            except grpc.aio.AioRpcError as err:
                t.status[f"grpc {err.code().name}"] += 1
                if err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    await asyncio.sleep(1)
                else:
                    t.bad(f"grpc: {err.code().name} {err.details()}")
            await asyncio.sleep(0.1)


async def soak(
    url: str, target: str, pid: int, redis: RedisServer, seqs: list[str], args: argparse.Namespace
) -> dict[str, Any]:
    t = Tally()
    rng = random.Random(3)
    start = time.monotonic()
    end = start + args.seconds
    samples: list[tuple[float, float]] = []
    restarts = 0

    async def sample() -> None:
        while time.monotonic() < end:
            status = Path(f"/proc/{pid}/status").read_text().splitlines()
            rss = next(int(line.split()[1]) for line in status if line.startswith("VmRSS")) / 1024
            samples.append((time.monotonic() - start, rss))
            await asyncio.sleep(10)

    async def chaos() -> None:
        nonlocal restarts
        while time.monotonic() + args.redis_restart_every < end:
            await asyncio.sleep(args.redis_restart_every)
            redis.kill()
            await asyncio.sleep(5)  # the server answers from the model meanwhile
            redis.start()
            restarts += 1

    n = len(seqs) // 6
    tasks = [
        rest_client(url, seqs[0:n], end, t, "interactive", rng),
        rest_client(url, seqs[n : 2 * n], end, t, "interactive", rng),
        rest_client(url, seqs[2 * n : 3 * n], end, t, "bulk", rng),
        rest_client(url, seqs[3 * n : 4 * n], end, t, "per_residue", rng),
        rest_client(url, [], end, t, "bad", rng),
        grpc_client(target, seqs[4 * n :], end, t),
        sample(),
        chaos(),
    ]
    await asyncio.gather(*tasks)
    warm = [r for s, r in samples if s >= min(300, args.seconds / 4)]
    third = max(1, len(warm) // 3)
    first, last = warm[:third], warm[-third:]
    return {
        "seconds": args.seconds,
        "status": dict(t.status),
        "problems": t.problems,
        "redis_restarts": restarts,
        "rss_mb": {
            "samples": len(samples),
            "max": max(r for _, r in samples),
            "first_third_after_warmup_mean": sum(first) / len(first),
            "last_third_mean": sum(last) / len(last),
        },
        "rss_series": samples,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=1800)
    parser.add_argument("--redis-restart-every", type=float, default=300)
    parser.add_argument(
        "--corpus", type=Path, default=REPO.parent / "shared" / "data" / "corpus" / "corpus.fasta"
    )
    parser.add_argument("--out", type=Path, default=REPO / "reports" / "soak")
    args = parser.parse_args(argv)
    seqs = corpus(args.corpus, seed=11)
    work = Path(tempfile.mkdtemp(prefix="protembed-soak-"))
    redis = RedisServer(work)
    redis.start()
    port, grpc_port = free_port(), free_port()
    env = serve_env(
        port,
        {
            "PROTEMBED_GRPC_PORT": str(grpc_port),
            "PROTEMBED_PROVIDERS": "CPUExecutionProvider",
            "PROTEMBED_LOG_LEVEL": "warning",
            "REDIS_URL": redis.url,
        },
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    log = args.out.with_suffix(".server.log")
    proc = spawn_server(env, log)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc, log)
        result = asyncio.run(soak(url, f"127.0.0.1:{grpc_port}", proc.pid, redis, seqs, args))
    finally:
        stop_server(proc)
        redis.kill()
    command = "python -m protembed_bench.soak " + " ".join(argv if argv is not None else sys.argv[1:])
    rss = result["rss_mb"]
    server_errors = sum(v for k, v in result["status"].items() if k.split()[-1].startswith("5"))
    lines = [
        "# Soak: mixed traffic with Redis restarts",
        "",
        f"Command: `{command.strip()}`  ",
        f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
        f"CPU: {cpu_model()}, {os.cpu_count()} cores; bundled model (int8), "
        "default settings, Redis cache; other jobs shared the cores.",
        "",
        f"- {args.seconds / 60:.0f} minutes; Redis killed and restarted {result['redis_restarts']} times.",
        f"- 5xx answers: {server_errors}; problems (exceptions, timeouts, wrong shapes, bad input not 422): "
        f"{len(result['problems'])}.",
        f"- Server RSS: max {rss['max']:.0f} MB; mean {rss['first_third_after_warmup_mean']:.0f} MB in the "
        f"first third after warm-up, {rss['last_third_mean']:.0f} MB in the last third.",
        "",
        "| answers | count |",
        "|---|---|",
        *[f"| {k} | {v} |" for k, v in sorted(result["status"].items())],
        "",
    ]
    if result["problems"]:
        lines += ["Problems (first 50):", "", *[f"- {p}" for p in result["problems"]], ""]
    args.out.with_suffix(".md").write_text("\n".join(lines))
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
