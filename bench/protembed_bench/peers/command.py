"""``protembed bench peers``: its options, and writing ``<reports>/bench_peers.{md,json,png}``."""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from protembed_bench.peers.catalog import SERVERS

SMOKE: dict[str, Any] = {
    "sequences": 24,
    "levels": [1, 8],
    "seconds_per_level": 10.0,
    "warmup_requests": 2,
    "raw_min_seconds": 0.0,
    "startup_timeout_s": 120.0,
}


def add_parser(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    """The ``peers`` subcommand under ``protembed bench`` (``common``: its shared --model, --corpus,
    --threads, --seed, --reports, --smoke)."""
    p = sub.add_parser(
        "peers",
        help="protembed against LitServe, mosec, BentoML, Ray Serve and PyTriton on the same ONNX file",
        description=(
            "Start protembed and each peer server (each from its own virtualenv, built on first use from "
            "pinned requirements), drive each alone with the same client and sequences at several "
            "concurrency levels, check every answer against raw ONNX Runtime, and write "
            "<reports>/bench_peers.{md,json,png}."
        ),
    )
    common(p)
    p.add_argument(
        "--variant",
        default="auto",
        help="model file every server runs (default: %(default)s = what protembed serves on the CPU)",
    )
    p.add_argument(
        "--servers",
        nargs="+",
        choices=list(SERVERS),
        default=list(SERVERS),
        help="servers to run (default: all)",
    )
    p.add_argument(
        "--levels", type=int, nargs="+", default=[1, 8, 64], help="requests in flight (default: %(default)s)"
    )
    p.add_argument(
        "--sequences",
        type=int,
        default=300,
        help="corpus sequences sent at each level (default: %(default)s)",
    )
    p.add_argument(
        "--seconds-per-level", type=float, default=60.0, help="time bound of one level (default: %(default)s)"
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run every server and setting this many times (default: %(default)s)",
    )
    p.add_argument(
        "--env-root",
        type=Path,
        default=None,
        help="folder of the peers' virtualenvs (default: ~/.cache/protembed/peers)",
    )
    p.add_argument(
        "--no-install", action="store_true", help="use only peers whose virtualenv is already built"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from protembed.errors import ModelArtifactError
    from protembed_bench.peers import report as peers_report
    from protembed_bench.peers.run import PeersConfig, run_peers_bench
    from protembed_distill import reports

    if min(args.levels) < 1 or args.sequences < 1 or args.rounds < 1:
        print("protembed bench peers: --levels, --sequences and --rounds must be >= 1", file=sys.stderr)
        return 2
    cfg = PeersConfig(
        model_dir=args.model,
        corpus=args.corpus,
        variant=args.variant,
        threads=args.threads,
        sequences=args.sequences,
        levels=sorted(set(args.levels)),
        servers=list(dict.fromkeys(args.servers)),
        seconds_per_level=args.seconds_per_level,
        rounds=args.rounds,
        seed=args.seed,
        install=not args.no_install,
    )
    if args.env_root is not None:
        cfg = replace(cfg, env_root=args.env_root)
    if args.smoke:
        cfg = replace(cfg, **SMOKE)
    import logging

    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per request otherwise
    # SIGTERM unwinds like Ctrl-C, so every server started so far is stopped (a Ray cluster included).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    report = reports.new_report("bench_peers")
    report["smoke"] = bool(args.smoke)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="protembed-bench-peers-") as work:
        try:
            report.update(run_peers_bench(cfg, Path(work), _log))
        except (ValueError, ModelArtifactError, OSError) as exc:
            print(f"protembed bench peers: {exc}", file=sys.stderr)
            return 1
    reports.finish(report, time.perf_counter() - start)
    out_dir = args.reports / "smoke" if args.smoke else args.reports
    made = peers_report.plot(report, out_dir / "bench_peers.png")
    markdown = peers_report.render_markdown(
        report, reports.header("protembed vs peer model servers", report), made.name if made else None
    )
    json_path, md_path = reports.write_report(out_dir, "bench_peers", report, markdown)
    values = peers_report.summary_values(report)
    if values:
        reports.update_summary(out_dir, values, "bench_peers")
    print(f"wrote {md_path}, {json_path}" + (f", {made}" if made else ""))
    for key, value in values.items():
        print(f"{key}: {value:.3f}" if isinstance(value, float) else f"{key}: {value}")
    failed = report["headline"]["failed"]
    if failed:
        print(
            f"protembed bench peers: did not run cleanly: {', '.join(failed)} (see the report)",
            file=sys.stderr,
        )
    # Peers that cannot install or start here are findings, not a failed benchmark; protembed is not.
    return 1 if "protembed" in failed else 0


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
