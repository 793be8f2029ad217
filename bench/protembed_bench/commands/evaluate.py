"""``protembed evaluate``: linear-probe quality of the student, its heads and int8 variant vs the teachers.

Writes ``<reports>/evaluate.md`` + ``.json``, merges ``retention`` into ``<reports>/summary.json`` and
redraws the quality-vs-speed plot when a model benchmark report is there too. ``--smoke`` runs the same
code on tiny subsets in seconds (reports go to ``<reports>/smoke/`` so real figures are never replaced).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from protembed_bench.commands._options import add_teacher_options, parse_teacher_options, teacher_names

SMOKE: dict[str, Any] = {
    "max_train": 40,
    "max_test": 30,
    "folds": 2,
    "resamples": 100,
    "ss_train_chains": 8,
    "ss_test_chains": 6,
    "ss_max_train_residues": 1500,
}


def add_parser(subparsers: Any) -> None:
    from protembed_bench import evaluate as ev  # light: numpy + the probe module's names only at call time

    p = subparsers.add_parser(
        "evaluate",
        help="linear-probe retention of the student against its teachers",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--model", type=Path, default=ev.DEFAULT_MODEL_DIR, help="model folder (default: %(default)s)"
    )
    add_teacher_options(
        p,
        teachers_help="teachers to compare with: registry names, or NAME=package.module:factory for your "
        "own (default: the teachers listed in the model card)",
        option_help="option passed to a teacher's loader (e.g. esm2.model=/path); part of its cache file "
        "name",
    )
    p.add_argument(
        "--config",
        type=Path,
        default=None,
        help="distillation config: take its teachers (with options), teacher cache folder and crop",
    )
    p.add_argument(
        "--data-dir", type=Path, default=ev.DEFAULT_DATA_DIR, help="shared data folder (default: %(default)s)"
    )
    p.add_argument("--tasks", nargs="+", default=list(ev.TASKS), choices=list(ev.TASKS), help="probe tasks")
    p.add_argument(
        "--max-train",
        type=int,
        default=ev.DEFAULT_MAX_TRAIN,
        help="train sequences per set, seeded subsample, 0 = all (default: %(default)s)",
    )
    p.add_argument(
        "--max-test",
        type=int,
        default=ev.DEFAULT_MAX_TEST,
        help="test sequences per set, seeded subsample, 0 = all (default: %(default)s)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--folds", type=int, default=5, help="CV folds on the train split (default: %(default)s)")
    p.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples (default: %(default)s)")
    p.add_argument(
        "--threads", type=int, default=2, help="torch / ONNX Runtime threads (default: %(default)s)"
    )
    p.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help=f"teacher cache folder (default: the config's, else {ev.DEFAULT_CACHE_DIR})",
    )
    p.add_argument("--no-secondary-structure", action="store_true", help="skip the per-residue Q3 probe")
    p.add_argument(
        "--reports", type=Path, default=Path("reports"), help="report folder (default: %(default)s)"
    )
    p.add_argument(
        "--smoke", action="store_true", help="tiny subsets, seconds; reports under <reports>/smoke/"
    )
    p.add_argument(
        "--embed-only",
        action="store_true",
        help="only fill the teacher caches for the sequences this evaluation probes (e.g. on a GPU box "
        "with --teacher-option NAME.device=cuda), then stop; no probes, no report",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def build_config(args: argparse.Namespace) -> Any:
    from dataclasses import replace

    from protembed_bench.evaluate import DEFAULT_CACHE_DIR, EvalConfig, TeacherSpec, parse_teacher

    options = parse_teacher_options(args.teacher_option)
    cache_dir = args.cache_dir
    crop = args.crop
    teachers: list[TeacherSpec]
    if args.config is not None:
        from protembed_distill.config import load_config

        dcfg = load_config(args.config)
        teachers = [TeacherSpec(t.name, None, dict(t.options)) for t in dcfg.teachers]
        cache_dir = cache_dir or dcfg.teacher_cache_dir()
        crop = crop or dcfg.data.max_length
    else:
        teachers = [parse_teacher(n) for n in teacher_names(args.teachers, args.model)]
    if args.teachers is not None and args.config is not None:
        teachers = [parse_teacher(n) for n in args.teachers]
    unknown = sorted(set(options) - {t.name for t in teachers})
    if unknown:
        raise ValueError(f"--teacher-option names teacher(s) {unknown} that are not evaluated")
    teachers = [replace(t, options={**t.options, **options.get(t.name, {})}) for t in teachers]
    cfg = EvalConfig(
        model_dir=args.model,
        teachers=teachers,
        data_dir=args.data_dir,
        tasks=list(dict.fromkeys(args.tasks)),
        max_train=args.max_train,
        max_test=args.max_test,
        crop=crop,
        seed=args.seed,
        folds=args.folds,
        resamples=args.resamples,
        threads=args.threads,
        batch_tokens=args.batch_tokens,
        cache_dir=cache_dir or DEFAULT_CACHE_DIR,
        int8=not args.no_int8,
        secondary_structure=not args.no_secondary_structure,
        progress=not args.no_progress,
    )
    if args.smoke:
        cfg = replace(cfg, **SMOKE)
    for name in ("max_train", "max_test", "resamples", "threads", "batch_tokens"):
        if getattr(cfg, name) < (0 if name.startswith("max_") else 1):
            raise ValueError(
                f"--{name.replace('_', '-')} must be {'>= 0' if name.startswith('max_') else '>= 1'}"
            )
    if cfg.folds < 2:
        raise ValueError("--folds must be >= 2")
    return cfg


def run(args: argparse.Namespace) -> int:
    from protembed.errors import ModelArtifactError
    from protembed_bench.evaluate import render_markdown, run_evaluation
    from protembed_distill import reports
    from protembed_distill.teachers.base import TeacherUnavailableError

    try:
        cfg = build_config(args)
    except (ValueError, ModelArtifactError) as exc:
        print(f"protembed evaluate: {exc}", file=sys.stderr)
        return 2
    if cfg.teachers:
        import torch

        torch.set_num_threads(cfg.threads)
    failures = (ValueError, FileNotFoundError, ModelArtifactError, TeacherUnavailableError, RuntimeError)
    if args.embed_only:
        from protembed_bench.evaluate import embed_teachers_only

        try:
            notes = embed_teachers_only(cfg)
        except failures as exc:
            print(f"protembed evaluate: {exc}", file=sys.stderr)
            return 1
        for name, note in notes.items():
            print(f"{name}: {note}")
        return 0
    out_dir = args.reports / "smoke" if args.smoke else args.reports
    report = reports.new_report("evaluate")
    report["smoke"] = bool(args.smoke)
    start = time.perf_counter()
    try:
        report.update(run_evaluation(cfg))
    except failures as exc:
        print(f"protembed evaluate: {exc}", file=sys.stderr)
        return 1
    reports.finish(report, time.perf_counter() - start)
    markdown = render_markdown(report, reports.header("Linear-probe evaluation", report))
    json_path, md_path = reports.write_report(out_dir, "evaluate", report, markdown)
    values: dict[str, Any] = {"retention": report["retention"]}
    if report["retention_int8"]:
        values["retention_int8"] = report["retention_int8"]
    reports.update_summary(out_dir, values, "evaluate")
    from protembed_bench import plots

    made = plots.refresh(out_dir)
    print(f"wrote {md_path}, {json_path}" + "".join(f", {p}" for p in made))
    for task, value in report["retention"].items():
        print(f"retention {task}: {value:.3f}")
    return 0
