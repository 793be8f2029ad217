"""Peak server memory and /healthz latency under the worst valid requests.

Starts ``protembed serve`` on the bundled model and, while a prober calls ``/healthz`` every 20 ms,
sends (1) the largest per-residue request the default ``max_response_bytes`` admits, as JSON floats and
as base64, one at a time and read normally; (2) eight clients sending such requests at once that never
read their answers; (3) the request of issue 16 (256 x 512 residues, per residue, JSON floats), which is
now refused before any work. Peak RSS (VmHWM) and RSS after each phase come from /proc; results go to
``reports/memory_bound.md`` and ``.json``::

    python -m protembed_bench.memory_bound
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from protembed.testing import free_port, serve_env, spawn_server, stop_server, wait_ready
from protembed_distill.reports import cpu_model

REPO = Path(__file__).resolve().parents[2]
BYTES_PER_VALUE = {"float": 22.0, "base64": 16 / 3}  # as protembed.http.app estimates them
DIM = 192  # the bundled model's per-residue width


def _rss_mb(pid: int) -> tuple[float, float]:
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    get = {line.split(":")[0]: line.split()[1] for line in status if line.startswith(("VmRSS", "VmHWM"))}
    return int(get["VmRSS"]) / 1024, int(get["VmHWM"]) / 1024


def _sequences(n: int, length: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice("ACDEFGHIKLMNPQRSTVWY") for _ in range(length)) for _ in range(n)]


def _largest_admitted(encoding: str, limit: int) -> int:
    """How many 512-residue sequences the per-residue answer limit admits for ``encoding``."""
    per_item = 512 * DIM * BYTES_PER_VALUE[encoding] + 64
    return int(limit // per_item)


async def _probe(url: str, stop: asyncio.Event, out: list[float]) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        while not stop.is_set():
            t0 = time.perf_counter()
            await client.get("/healthz")
            out.append(time.perf_counter() - t0)
            await asyncio.sleep(0.02)


def _unread_request(url: str, body: bytes) -> socket.socket:
    """Send a POST /embed and never read the answer (the socket stays open)."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    head = (
        "POST /embed HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    sock.sendall(head.encode() + body)
    return sock


async def phase(url: str, pid: int, name: str, work: Any) -> dict[str, Any]:
    stop = asyncio.Event()
    lat: list[float] = []
    prober = asyncio.create_task(_probe(url, stop, lat))
    t0 = time.perf_counter()
    detail = await work()
    seconds = time.perf_counter() - t0
    stop.set()
    await prober
    rss, hwm = _rss_mb(pid)
    return {
        "phase": name,
        "seconds": round(seconds, 2),
        "healthz_max_ms": round(1000 * max(lat), 1) if lat else None,
        "healthz_probes": len(lat),
        "rss_mb_after": round(rss),
        "peak_rss_mb_so_far": round(hwm),
        **detail,
    }


async def run(url: str, pid: int, limit: int) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        for encoding in ("float", "base64"):
            n = _largest_admitted(encoding, limit)
            seqs = _sequences(n, 512, seed=len(results))

            async def read_one(seqs: list[str] = seqs, encoding: str = encoding) -> dict[str, Any]:
                body = {"sequences": seqs, "per_residue": True, "encoding": encoding}
                r = await client.post("/embed", json=body)
                return {
                    "status": r.status_code,
                    "items": len(seqs),
                    "answer_mb": round(len(r.content) / 2**20, 1),
                }

            results.append(
                await phase(url, pid, f"largest admitted per-residue request, {encoding}", read_one)
            )

        n = _largest_admitted("float", limit)

        async def unread() -> dict[str, Any]:
            socks = [
                _unread_request(
                    url,
                    json.dumps({"sequences": _sequences(n, 512, seed=100 + k), "per_residue": True}).encode(),
                )
                for k in range(8)
            ]
            await asyncio.sleep(20)  # the server computes and starts answering; nobody reads
            for s in socks:
                s.close()
            return {"clients": 8, "items_each": n}

        results.append(await phase(url, pid, "8 clients that never read (JSON floats)", unread))

        async def refused() -> dict[str, Any]:
            body = {"sequences": _sequences(256, 512, seed=999), "per_residue": True}
            r = await client.post("/embed", json=body)
            return {"status": r.status_code, "message": r.json()["error"]["message"][:160]}

        results.append(await phase(url, pid, "issue 16's request: 256 x 512 per residue, JSON", refused))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=REPO / "reports" / "memory_bound")
    args = parser.parse_args(argv)
    from protembed.settings import Settings

    limit = Settings.model_fields["max_response_bytes"].default
    port = free_port()
    env = serve_env(
        port,
        {
            "PROTEMBED_GRPC_PORT": "0",
            "PROTEMBED_PROVIDERS": "CPUExecutionProvider",
            "PROTEMBED_LOG_LEVEL": "warning",
        },
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    log = args.out.with_suffix(".server.log")
    proc = spawn_server(env, log)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc, log)
        idle_rss, _ = _rss_mb(proc.pid)
        results = asyncio.run(run(url, proc.pid, limit))
    finally:
        stop_server(proc)
    command = "python -m protembed_bench.memory_bound " + " ".join(argv if argv is not None else sys.argv[1:])
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    lines = [
        "# Memory and liveness under the worst valid requests",
        "",
        f"Command: `{command.strip()}`  ",
        f"Date: {when}; CPU: {cpu_model()}, {os.cpu_count()} cores; bundled "
        f"model (int8), default settings (max_response_bytes {limit // 2**20} MiB); other jobs shared "
        "the cores.",
        "",
        f"Idle server RSS after warm-up: {idle_rss:.0f} MB. Before this work (issue 16, 2026-12-06), one "
        "256 x 512 per-residue JSON request built a 475 MB body, took the server to 2.3 GB RSS and stalled "
        "/healthz for 4.9 s; eight clients that never read held 1.4 GB.",
        "",
        "| phase | status | s | /healthz max (ms) | RSS after (MB) | peak RSS so far (MB) | detail |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        detail = {
            k: v
            for k, v in r.items()
            if k
            not in (
                "phase",
                "status",
                "seconds",
                "healthz_max_ms",
                "healthz_probes",
                "rss_mb_after",
                "peak_rss_mb_so_far",
            )
        }
        lines.append(
            f"| {r['phase']} | {r.get('status', '')} | {r['seconds']} | {r['healthz_max_ms']} | "
            f"{r['rss_mb_after']} | {r['peak_rss_mb_so_far']} | {json.dumps(detail)} |"
        )
    lines.append("")
    args.out.with_suffix(".md").write_text("\n".join(lines))
    args.out.with_suffix(".json").write_text(
        json.dumps({"idle_rss_mb": idle_rss, "phases": results}, indent=2) + "\n"
    )
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
