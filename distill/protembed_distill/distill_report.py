"""The distillation run's report: data, teacher caches, size sweep, training curve, export parity and
throughput against the teachers, gathered from the run folder, the model card and ``bench_model.json``.

Every figure is read from files the run wrote; nothing here is typed in by hand, so re-running the job
and then ``protembed distill CONFIG --stage report`` regenerates the report.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from protembed_distill.config import DistillConfig
from protembed_distill.reports import fmt, header, new_report, read_json, table, write_report
from protembed_distill.sweep import candidate_table

COSINE_TARGET = 0.90
SPEEDUP_TARGET = 20.0


def _jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def build(cfg: DistillConfig, reports_dir: Path, from_reports: bool = False) -> dict[str, Any]:
    """Collect the run's figures; also copies the training log and sweep next to the report.

    ``from_reports``: the run folder is gone (it lived on a GPU box, or in an earlier session), so the
    run's figures come from the copies the last report kept (``distill.json``, ``distill/train.jsonl``);
    the card and ``bench_model.json`` are read afresh, so a new benchmark reaches the report.
    """
    run_dir = Path(cfg.run.dir)
    model_dir = Path(cfg.output.model_dir)
    card = read_json(model_dir / "model.json")
    if card is None:
        raise FileNotFoundError(f"{model_dir / 'model.json'}: export the model first (--stage export)")
    if from_reports:
        previous = read_json(reports_dir / "distill.json")
        if previous is None:
            raise FileNotFoundError(f"{reports_dir / 'distill.json'}: no earlier report to rebuild from")
        if previous.get("model", {}).get("id") != card["id"]:
            raise ValueError(
                f"{reports_dir / 'distill.json'} reports model {previous.get('model', {}).get('id')!r}, "
                f"not {card['id']!r}: run the report from that model's run folder instead"
            )
        events = _jsonl(reports_dir / "distill" / "train.jsonl")
        sweep = previous.get("sweep")
        teacher_embedding = previous.get("teacher_embedding") or {}
        teacher_fp16 = previous.get("teacher_weights_fp16")
    else:
        events = _jsonl(run_dir / "train.jsonl")
        sweep = read_json(run_dir / "sweep" / "sweep.json")
        teacher_embedding = read_json(run_dir / "embed_report.json") or {}
        # Written by scripts/after_gpu.sh when the caches were filled from fp16-rounded weights.
        teacher_fp16 = read_json(run_dir / "teacher_fp16_effect.json")
    epochs = [e for e in events if e.get("kind") == "epoch"]
    bench = read_json(reports_dir / "bench_model.json")
    report = new_report("distill")
    report.update(
        {
            "model": {"id": card["id"], "version": card["version"], "folder": str(model_dir)},
            "data": card.get("training_data", {}),
            "teacher_embedding": teacher_embedding,
            "teacher_weights_fp16": teacher_fp16,
            "sweep": sweep,
            "epochs": epochs,
            "metrics": card.get("metrics", {}),
            "files": card.get("files", []),
            "architecture": card.get("architecture", {}),
            "teachers": card.get("teachers", []),
            "licence": card.get("licence", {}),
            "throughput": (bench or {}).get("ratios"),
            "throughput_results": {
                k: {"residues_per_s": v.get("residues_per_s"), "peak_rss_mb": v.get("peak_rss_mb")}
                for k, v in ((bench or {}).get("results") or {}).items()
                if "error" not in v
            },
        }
    )
    if from_reports:
        return report
    # The raw logs travel with the report so the curve can be re-plotted without the run folder.
    log_dir = reports_dir / "distill"
    log_dir.mkdir(parents=True, exist_ok=True)
    for src in (run_dir / "train.jsonl", run_dir / "train.csv", run_dir / "sweep" / "sweep.md"):
        if src.is_file():
            shutil.copyfile(src, log_dir / src.name)
        else:
            (log_dir / src.name).unlink(missing_ok=True)  # never leave an earlier run's log beside this one
    return report


def _min_cosine(per_output: dict[str, Any] | None) -> str:
    """The lowest per-sequence cosine to the fp32 graph over every output (``—`` for fp32 itself)."""
    if not per_output:
        return fmt(None)
    return fmt(min(v["min"] for v in per_output.values()), 6)


def render(report: dict[str, Any]) -> str:
    lines = [header("Distillation run", report)]
    data, arch, metrics = report["data"], report["architecture"], report["metrics"]
    lines += [
        "## Data",
        "",
        f"- Corpus: `{data.get('corpus')}`, {data.get('corpus_sequences')} sequences; removed at >= "
        f"{data.get('identity_threshold')} identity (coverage {data.get('coverage')}) to any evaluation "
        f"sequence (MMseqs2): **{data.get('removed_by_eval_overlap')}** "
        f"(by source: {data.get('removed_by_source')}).",
        f"- Subset: {data.get('sequences')} sequences cropped at {data.get('max_length')} residues "
        f"({data.get('cropped')} cropped): {data.get('train_sequences')} train "
        f"({data.get('train_residues')} residues) / {data.get('val_sequences')} held-out validation.",
        "",
        "## Teacher embedding cache",
        "",
    ]
    rows = [
        [
            name,
            str(int(r.get("embedded", 0))),
            str(int(r.get("cached_before", 0))),
            fmt(r.get("residues_per_s"), 0) if "residues_per_s" in r else "(cached earlier)",
        ]
        for name, r in report["teacher_embedding"].items()
    ]
    lines += [table(["teacher", "embedded now", "already cached", "residues/s"], rows), ""]
    fp16 = report.get("teacher_weights_fp16")
    if fp16:
        lines += [
            "The caches were filled on a GPU box from teacher weights rounded to float16 (a transfer limit; "
            "the teachers still computed in float32). Against the exact weights on "
            f"{fp16.get('sequences')} corpus sequences:",
            "",
            table(
                ["teacher", "min cosine", "max abs diff", "mean abs diff", "float16 storage max abs diff"],
                [
                    [
                        name,
                        f"{e['min_cosine']:.6f}",
                        f"{e['max_abs_diff']:.2e}",
                        f"{e['mean_abs_diff']:.2e}",
                        f"{e['float16_storage_max_abs_diff']:.2e}",
                    ]
                    for name, e in fp16.items()
                    if isinstance(e, dict)
                ],
            ),
            "",
        ]
    sweep = report.get("sweep")
    if sweep:
        title = (
            f"## Candidates trained side by side (full runs, up to {sweep.get('steps_per_size')} steps, "
            "same data, seed and time budget)"
            if sweep.get("mode") == "full runs compared"
            else f"## Size sweep ({sweep.get('steps_per_size')} steps each, same data and seed)"
        )
        lines += [
            title,
            "",
            candidate_table(sweep),
            "",
            f"Chosen: {arch.get('layers')} layers, d_model {arch.get('d_model')}, {arch.get('heads')} heads, "
            f"ffn {arch.get('ffn')}"
            + (f", pool_dim {arch['pool_dim']}" if arch.get("pool_dim") else "")
            + f" ({arch.get('parameters')} parameters).",
            "",
        ]
    lines += ["## Training (held-out validation, each epoch)", ""]
    names = [t["name"] for t in report["teachers"]]
    rows = [
        [
            str(e["epoch"]),
            str(e["step"]),
            fmt(e.get("train_loss")),
            fmt(e.get("val_loss")),
            *[fmt(e["val_cosine"].get(n)) for n in names],
            *[fmt(e["val_cosine_std"].get(n)) for n in names],
            fmt(e.get("elapsed_s"), 0),
        ]
        for e in report["epochs"]
    ]
    lines += [
        table(
            [
                "epoch",
                "step",
                "train loss",
                "val loss",
                *[f"cos {n}" for n in names],
                *[f"std cos {n}" for n in names],
                "elapsed s",
            ],
            rows,
        ),
        "",
        "`cos` is the cosine between the student's teacher-space head and the teacher's own per-protein "
        "vector in the teacher's original units (the figure the target refers to); `std cos` is the same "
        "after standardising both with the training-set mean and std, which removes the large shared "
        "component of the teachers' vectors and so is the harder, more telling number.",
        "",
        "### Held-out cosine to each teacher (best checkpoint)",
        "",
    ]
    rows = [
        [
            n,
            fmt(metrics.get("val_cosine", {}).get(n)),
            fmt(metrics.get("val_cosine_standardized", {}).get(n)),
            "yes" if (metrics.get("val_cosine", {}).get(n) or 0) >= COSINE_TARGET else "**no**",
        ]
        for n in names
    ]
    lines += [table(["teacher", "cosine", "standardised cosine", f">= {COSINE_TARGET}"], rows), ""]
    lines += ["## Exported artifact", ""]
    rows = [
        [
            f["variant"],
            f["file"],
            f"{f['bytes'] / 2**20:.2f} MiB",
            f"{f['parity_max_abs_diff']:.2e}",
            _min_cosine(f.get("metrics", {}).get("cosine_to_fp32")),
        ]
        for f in report["files"]
    ]
    lines += [
        table(["variant", "file", "size", "max abs diff vs PyTorch", "worst cosine to fp32"], rows),
        "",
    ]
    ratios, results = report.get("throughput"), report.get("throughput_results")
    if ratios and results:
        lines += [
            "## Throughput against the teachers (same run, same threads; from reports/bench_model.json)",
            "",
        ]
        rows = [[k, fmt(v["residues_per_s"], 0), fmt(v.get("peak_rss_mb"), 0)] for k, v in results.items()]
        lines += [table(["model", "residues/s", "peak RSS MiB"], rows), ""]
        rows = [[s, *[fmt(r.get(k), 1) for k in sorted(r)]] for s, r in ratios.items() if isinstance(r, dict)]
        keys = sorted(next((r for r in ratios.values() if isinstance(r, dict)), {}))
        lines += [table(["student", *[f"x {k}" for k in keys]], rows), ""]
        target = f"Target: student ONNX CPU throughput >= {SPEEDUP_TARGET:.0f}x the teachers it replaces."
        lines += [target, ""]
    lic = report.get("licence", {})
    if lic:
        lines += ["## Licence", "", *[f"- {k}: {v}" for k, v in lic.items()], ""]
    return "\n".join(lines)


def write(cfg: DistillConfig, reports_dir: Path, from_reports: bool = False) -> tuple[Path, Path]:
    report = build(cfg, reports_dir, from_reports)
    return write_report(reports_dir, "distill", report, render(report))
