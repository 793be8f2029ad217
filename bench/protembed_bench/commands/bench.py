"""``protembed bench model`` and ``protembed bench serve``: throughput against the teachers and the hardware.

``bench model`` times every teacher (PyTorch) and the student (ONNX Runtime fp32/int8, and PyTorch when
a checkpoint is given) on one seeded sample of the corpus, each in a fresh subprocess, and writes
``<reports>/bench_model.{md,json}``. ``bench serve`` starts the real server on loopback and drives it
with concurrent HTTP and gRPC clients, writing ``<reports>/bench_serve.{md,json}``. Both merge their
headline figures into ``<reports>/summary.json`` and redraw the plots. ``--smoke`` runs each in seconds
on tiny settings (reports under ``<reports>/smoke/``).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from protembed.settings import default_model_dir
from protembed_bench.commands._options import add_teacher_options, parse_teacher_options, teacher_names
from protembed_bench.evaluate import DEFAULT_DATA_DIR

DEFAULT_MODEL_DIR = default_model_dir()
DEFAULT_CORPUS = DEFAULT_DATA_DIR / "corpus" / "corpus.fasta"
MODEL_SMOKE: dict[str, Any] = {"sequences": 12, "min_seconds": 0.0, "max_repeats": 1, "timeout_s": 120.0}
SERVE_SMOKE: dict[str, Any] = {
    "levels": [1, 4],
    "requests_per_level": 12,
    "seconds_per_level": 10.0,
    "warmup_requests": 2,
    "cache_sequences": 3,
    "cache_repeats": 3,
    "paired_rounds": 2,
    "raw_min_seconds": 0.0,
    "raw_min_passes": 1,
    "startup_timeout_s": 60.0,
}


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "bench",
        help="benchmark model throughput (vs teachers) or the running server (vs raw ONNX Runtime)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="bench_command", metavar="WHAT")
    sub.required = True

    from protembed_bench.model import BATCH_TOKENS

    m = sub.add_parser("model", help="throughput and peak memory of each teacher and the student")
    _common(m)
    add_teacher_options(
        m,
        teachers_help="registry names or NAME=package.module:factory (default: the model card's teachers)",
        option_help="option for a teacher's loader (e.g. esm2.model=/path)",
        batch_grid=BATCH_TOKENS,
    )
    m.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        help="distillation checkpoint: also time the student in PyTorch",
    )
    m.add_argument("--sequences", type=int, default=256, help="corpus sample size (default: %(default)s)")
    m.add_argument(
        "--min-seconds",
        type=float,
        default=5.0,
        help="repeat a model's pass until this much time is measured (default: %(default)s)",
    )
    m.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="measure every model this many times, interleaved, keeping each one's fastest round "
        "(use 2-3 on a shared machine; default: %(default)s)",
    )
    m.set_defaults(func=run_model)

    s = sub.add_parser("serve", help="start the server and drive it with HTTP and gRPC clients")
    _common(s)
    s.add_argument(
        "--variant",
        default="auto",
        help="model variant the server loads (default: %(default)s, the server's own default: int8 on the "
        "CPU when the model has it)",
    )
    s.add_argument(
        "--levels",
        type=int,
        nargs="+",
        default=[1, 2, 4, 8, 16, 32, 64],
        help="requests in flight per level (default: %(default)s)",
    )
    s.add_argument("--transports", nargs="+", choices=["http", "grpc"], default=["http", "grpc"])
    s.add_argument(
        "--requests-per-level",
        type=int,
        default=256,
        help="requests per level, at least 8 x in-flight (default: %(default)s)",
    )
    s.add_argument(
        "--seconds-per-level", type=float, default=30.0, help="time bound per level (default: %(default)s)"
    )
    s.add_argument(
        "--paired-rounds",
        type=int,
        default=3,
        help="rounds of raw ONNX Runtime then the server at the top level, each on a fresh stream; "
        "server_vs_raw_ort is the median of their ratios (default: %(default)s)",
    )
    s.add_argument("--http-encoding", choices=["float", "base64"], default="base64")
    s.add_argument(
        "--http-client",
        choices=["raw", "httpx"],
        default="raw",
        help="raw: a minimal keep-alive HTTP/1.1 client (default; httpx's pool saturates first at high "
        "concurrency); httpx: httpx.AsyncClient",
    )
    s.add_argument(
        "--server-setting",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra server setting, e.g. max_batch_tokens=8192 (becomes PROTEMBED_NAME)",
    )
    s.set_defaults(func=run_serve)

    from protembed_bench.peers import command as peers_command

    peers_command.add_parser(sub, _common)  # protembed against other model servers (issue 19)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model", type=Path, default=DEFAULT_MODEL_DIR, help="model folder (default: %(default)s)"
    )
    p.add_argument(
        "--corpus", type=Path, default=DEFAULT_CORPUS, help="FASTA to sample (default: %(default)s)"
    )
    p.add_argument(
        "--threads", type=int, default=2, help="threads for every model / the server (default: %(default)s)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--reports", type=Path, default=Path("reports"), help="report folder (default: %(default)s)"
    )
    p.add_argument(
        "--smoke",
        action="store_true",
        help="seconds-long run on tiny settings; reports under <reports>/smoke/",
    )


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _quiet_clients() -> None:
    """httpx logs every request at INFO: thousands of lines that would bury the benchmark's own."""
    import logging

    logging.getLogger("httpx").setLevel(logging.WARNING)


def _run_report(
    what: str,
    smoke: bool,
    work_prefix: str,
    run: Callable[[Path], dict[str, Any]],
    errors: tuple[type[Exception], ...],
) -> dict[str, Any] | None:
    """A timed ``bench_<what>`` report of ``run(scratch folder)``; ``None`` (said on stderr) on ``errors``."""
    from protembed_distill import reports

    report = reports.new_report(f"bench_{what}")
    report["smoke"] = bool(smoke)
    with tempfile.TemporaryDirectory(prefix=work_prefix) as work:
        try:
            start = time.perf_counter()
            report.update(run(Path(work)))
            reports.finish(report, time.perf_counter() - start)
        except errors as exc:
            print(f"protembed bench {what}: {exc}", file=sys.stderr)
            return None
    return report


def _finish(args: argparse.Namespace, name: str, report: dict[str, Any], module: Any, title: str) -> None:
    """Write the report (markdown and JSON), merge ``module``'s headline values into the summary, and
    redraw the plots. ``module`` is ``protembed_bench.model`` or ``protembed_bench.serve.report``: both render
    and summarise alike."""
    from protembed_bench import plots
    from protembed_distill import reports

    out_dir = args.reports / "smoke" if args.smoke else args.reports
    markdown = module.render_markdown(report, reports.header(title, report))
    values = module.summary_values(report)
    json_path, md_path = reports.write_report(out_dir, name, report, markdown)
    if values:
        reports.update_summary(out_dir, values, name)
    made = plots.refresh(out_dir)
    print(f"wrote {md_path}, {json_path}" + "".join(f", {p}" for p in made))
    for key, value in values.items():
        if isinstance(value, float):
            print(f"{key}: {value:.3f}")


def run_model(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from protembed.errors import ModelArtifactError
    from protembed_bench import model as bench_model

    try:
        cfg = bench_model.BenchConfig(
            model_dir=args.model,
            teachers=teacher_names(args.teachers, args.model),
            corpus=args.corpus,
            checkpoint=args.checkpoint,
            sequences=args.sequences,
            seed=args.seed,
            crop=args.crop,
            threads=args.threads,
            batch_tokens=tuple(args.batch_tokens),
            min_seconds=args.min_seconds,
            int8=not args.no_int8,
            teacher_options=parse_teacher_options(args.teacher_option),
            rounds=args.rounds,
        )
    except (ValueError, ModelArtifactError) as exc:
        print(f"protembed bench model: {exc}", file=sys.stderr)
        return 2
    if args.rounds < 1 or args.sequences < 1:
        print("protembed bench model: --rounds and --sequences must be >= 1", file=sys.stderr)
        return 2
    if args.smoke:
        cfg = replace(cfg, **MODEL_SMOKE)
    report = _run_report(
        "model",
        args.smoke,
        "protembed-bench-",
        lambda work: bench_model.run_bench(cfg, work, _log),
        (ValueError, ModelArtifactError, OSError),
    )
    if report is None:
        return 1
    failed = [n for n, r in report["results"].items() if "error" in r]
    _finish(args, "bench_model", report, bench_model, "Model throughput")
    if failed:
        print(f"protembed bench model: failed: {', '.join(failed)} (see the report)", file=sys.stderr)
        return 1
    return 0


def run_serve(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from protembed.errors import ModelArtifactError
    from protembed_bench.serve import report as serve_report
    from protembed_bench.serve.config import ServeBenchConfig
    from protembed_bench.serve.run import run_serve_bench

    env: dict[str, str] = {}
    for item in args.server_setting:
        name, sep, value = item.partition("=")
        if not sep or not name:
            print(f"protembed bench serve: --server-setting {item!r}: expected NAME=VALUE", file=sys.stderr)
            return 2
        env[f"PROTEMBED_{name.upper()}"] = value
    cfg = ServeBenchConfig(
        model_dir=args.model,
        corpus=args.corpus,
        variant=args.variant,
        threads=args.threads,
        levels=sorted(set(args.levels)),
        transports=list(dict.fromkeys(args.transports)),
        requests_per_level=args.requests_per_level,
        seconds_per_level=args.seconds_per_level,
        paired_rounds=args.paired_rounds,
        seed=args.seed,
        http_encoding=args.http_encoding,
        http_client=args.http_client,
        server_env=env,
    )
    if args.smoke:
        cfg = replace(cfg, **SERVE_SMOKE)
    if min(cfg.levels) < 1:
        print("protembed bench serve: --levels must be >= 1", file=sys.stderr)
        return 2
    if cfg.paired_rounds < 0:
        print("protembed bench serve: --paired-rounds must be >= 0", file=sys.stderr)
        return 2
    _quiet_clients()
    report = _run_report(
        "serve",
        args.smoke,
        "protembed-bench-serve-",
        lambda work: run_serve_bench(cfg, work, _log),
        (ValueError, ModelArtifactError, RuntimeError, OSError),
    )
    if report is None:
        return 1
    _finish(args, "bench_serve", report, serve_report, "Server benchmark")
    return 0
