"""``protembed distill CONFIG [--stage ...]``: the config-driven distillation job, stage by stage.

Stages: ``data`` (overlap filter + split, cached), ``embed`` (teacher caches, resumable), ``train``
(resumes from the run dir's last checkpoint), ``export`` (best checkpoint -> output.model_dir),
``sweep`` (size sweep report), ``report`` (reports/distill.md from the run and the card),
``plan`` (random-weight throughput of the sweep sizes, no teachers
needed), ``compare`` (candidates trained as full runs, e.g. side by side on a GPU with ``--set``: their
held-out cosine next to their ONNX CPU throughput measured here, written as the run's sweep report),
and ``all`` = embed -> train -> export. Heavy imports happen inside the handler.

``--set key=value`` (repeatable) overrides one config key, e.g. ``--set student.pool_dim=1024
--set run.dir=runs/p1024``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

STAGES = ("all", "data", "embed", "train", "export", "sweep", "plan", "compare", "report")


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "distill",
        help="distill a student from teachers as described by a TOML/YAML config",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("config", type=Path, help="distillation config (.toml, .yaml)")
    p.add_argument("--stage", choices=STAGES, default="all", help="which stage to run (default: all)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key (dotted, TOML value), e.g. optim.lr=2e-3; repeatable",
    )
    p.add_argument(
        "--runs",
        type=Path,
        nargs="+",
        default=[],
        help="--stage compare: run folders of the candidates (each holds train.jsonl)",
    )
    p.add_argument("--threads", type=int, default=None, help="intra-op threads (overrides run.threads)")
    p.add_argument("--max-sequences", type=int, default=None, help="override data.max_sequences")
    p.add_argument("--time-budget", type=float, default=None, help="override optim.time_budget_s (training)")
    p.add_argument("--no-resume", action="store_true", help="train from scratch even if a checkpoint exists")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--quiet", action="store_true", help="do not echo training log lines to stderr")
    p.add_argument(
        "--reports", type=Path, default=Path("reports"), help="where --stage report writes distill.md/.json"
    )
    p.add_argument(
        "--from-reports",
        action="store_true",
        help="--stage report: rebuild from the run's figures kept under --reports (distill.json, "
        "distill/train.jsonl) when the run folder is gone, e.g. after a new `protembed bench model`",
    )
    p.set_defaults(func=run)


def _log(msg: str) -> None:
    print(f"distill: {msg}", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    from protembed_distill.config import ConfigError, load_config

    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as err:
        print(f"protembed distill: {err}", file=sys.stderr)
        return 2
    if args.threads is not None:
        cfg = cfg.model_copy(update={"run": cfg.run.model_copy(update={"threads": args.threads})})
    if args.max_sequences is not None:
        cfg = cfg.model_copy(
            update={"data": cfg.data.model_copy(update={"max_sequences": args.max_sequences})}
        )
    if args.time_budget is not None:
        cfg = cfg.model_copy(
            update={"optim": cfg.optim.model_copy(update={"time_budget_s": args.time_budget})}
        )
    threads = cfg.threads()
    if args.stage == "report":
        from protembed_distill.distill_report import write

        try:
            paths = write(cfg, args.reports, from_reports=args.from_reports)
        except (FileNotFoundError, ValueError) as err:
            print(f"protembed distill: {err}", file=sys.stderr)
            return 1
        _log(f"report: {', '.join(str(p) for p in paths)}")
        return 0

    from protembed_distill.data.dataset import DataError, prepare_dataset
    from protembed_distill.train.trainer import set_threads

    set_threads(threads)
    run_dir = Path(cfg.run.dir)
    try:
        ds = prepare_dataset(
            cfg.data, run_dir, threads=max(1, threads), shared_cache=cfg.teacher_cache_dir().parent / "dedupe"
        )
    except DataError as err:
        print(f"protembed distill: {err}", file=sys.stderr)
        return 2
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "data_stats.json").write_text(json.dumps(ds.stats, indent=1))
    _log(
        f"data: {ds.stats['train_sequences']} train / {ds.stats['val_sequences']} val sequences, "
        f"{ds.stats['train_residues']} train residues; removed by eval overlap: "
        f"{ds.stats['removed_by_eval_overlap']} {ds.stats['removed_by_source']}"
    )
    stage = args.stage
    if stage == "data":
        return 0
    if stage == "compare":
        from protembed_distill.sweep import compare_runs

        try:
            report = compare_runs(cfg, args.runs, max(1, threads), [i.sequence for i in ds.val][:256])
        except (FileNotFoundError, ValueError) as err:
            print(f"protembed distill: compare: {err}", file=sys.stderr)
            return 1
        print((run_dir / "sweep" / "sweep.md").read_text())
        _log(f"compare: {len(report['sizes'])} candidates -> {run_dir / 'sweep'}")
        return 0
    if stage == "plan":
        from protembed_distill.sweep import measure_sizes

        report = measure_sizes(cfg, ds, max(1, threads))
        print(json.dumps(report, indent=1))
        return 0
    if stage in ("all", "embed", "sweep"):
        from protembed_distill.teacher_cache import build_caches

        report = build_caches(cfg, ds.ranked, progress=not args.no_progress, log=_log)
        report_path = run_dir / "embed_report.json"
        # Keep the measured rate of an earlier invocation when this one found everything cached.
        previous: dict[str, Any] = json.loads(report_path.read_text()) if report_path.is_file() else {}
        merged: dict[str, Any] = dict(report)
        for name, entry in report.items():
            if not entry.get("embedded") and "residues_per_s" in previous.get(name, {}):
                merged[name] = {**previous[name], "cached_before": entry.get("cached_before")}
        report_path.write_text(json.dumps(merged, indent=1))
        _log("embed: " + json.dumps(report))
        if stage == "embed":
            return 0
    if stage == "sweep":
        from protembed_distill.sweep import run_sweep

        sweep = run_sweep(cfg, ds, max(1, threads), echo=not args.quiet)
        print((run_dir / "sweep" / "sweep.md").read_text())
        _log(f"sweep: {len(sweep['sizes'])} sizes -> {run_dir / 'sweep'}")
        return 0
    if stage in ("all", "train"):
        from protembed_distill.train.trainer import train

        res = train(cfg, ds, resume=not args.no_resume, echo=not args.quiet)
        _log(
            f"train: step {res.step}, val {json.dumps(res.val.get('val_cosine', {}))}, "
            f"best checkpoint {res.best_checkpoint}"
        )
        if stage == "train":
            return 0
    from protembed_distill.export.model_folder import export_checkpoint
    from protembed_distill.export.onnx import ExportError

    ckpt = run_dir / "checkpoints" / "best.pt"
    try:
        card = export_checkpoint(
            ckpt, cfg.output.model_dir, int8=cfg.output.int8, fp16=cfg.output.fp16, threads=max(1, threads)
        )
    except (ExportError, FileNotFoundError) as err:
        print(f"protembed distill: export: {err}", file=sys.stderr)
        return 1
    _log(f"export: {cfg.output.model_dir} ({', '.join(f['file'] for f in card['files'])})")
    return 0
