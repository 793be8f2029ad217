"""Size sweep: train each candidate student for the same short budget on the same data, then measure
held-out cosine per teacher and ONNX CPU throughput, so the size is chosen by numbers, not taste."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from protembed_distill.config import DistillConfig, StudentConfig
from protembed_distill.data.dataset import Dataset

__all__ = ["compare_runs", "run_summary", "run_sweep", "size_tag"]


def size_tag(s: StudentConfig) -> str:
    tag = f"L{s.layers}-d{s.d_model}-h{s.heads}-f{s.ffn}"
    return f"{tag}-p{s.pool_dim}" if s.pool_dim else tag


def run_sweep(
    cfg: DistillConfig, ds: Dataset, threads: int, echo: bool = True, bench_seconds: float = 3.0
) -> dict[str, Any]:
    from protembed_distill.export.onnx import export_temp_fp32, onnx_throughput
    from protembed_distill.train.checkpoint import load_checkpoint, student_from_checkpoint
    from protembed_distill.train.trainer import train

    if not cfg.sweep.sizes:
        raise ValueError("sweep.sizes: give at least one student size to sweep")
    out_dir = Path(cfg.run.dir) / "sweep"
    bench_seqs = [i.sequence for i in ds.val][:256]
    rows: list[dict[str, Any]] = []
    for size in cfg.sweep.sizes:
        tag = size_tag(size)
        optim = cfg.optim.model_copy(
            update={
                "max_steps": cfg.sweep.steps,
                "epochs": 10_000,
                "patience": 0,
                "time_budget_s": cfg.sweep.time_budget_s,
                "checkpoint_every_steps": 0,
            }
        )
        scfg = cfg.model_copy(update={"student": size, "optim": optim})
        res = train(scfg, ds, run_dir=out_dir / tag, echo=echo)
        model = student_from_checkpoint(load_checkpoint(res.last_checkpoint)).eval()
        tmp, path = export_temp_fp32(model)
        with tmp:
            rate = onnx_throughput(path, bench_seqs, threads, min_seconds=bench_seconds)
        rows.append(
            {
                "size": tag,
                "layers": size.layers,
                "d_model": size.d_model,
                "heads": size.heads,
                "ffn": size.ffn,
                "parameters": model.parameter_count(),
                "steps": res.step,
                "val_cosine": res.val.get("val_cosine", {}),
                "val_cosine_std": res.val.get("val_cosine_std", {}),
                "val_loss": res.val.get("val_loss"),
                "train_residues_per_s": res.train_residues_per_s,
                "onnx_cpu_residues_per_s": rate,
                "threads": threads,
            }
        )
    report = {
        "sizes": rows,
        "steps_per_size": cfg.sweep.steps,
        "bench_sequences": len(bench_seqs),
        "data": {k: ds.stats[k] for k in ("train_sequences", "val_sequences", "max_length")},
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "sweep.json").write_text(json.dumps(report, indent=1))
    (out_dir / "sweep.md").write_text(_markdown(report))
    return report


def run_summary(run_dir: Path) -> tuple[StudentConfig, dict[str, Any], dict[str, Any], int]:
    """(student config, start event, best epoch by val loss, last step) from a run's train.jsonl."""
    log = run_dir / "train.jsonl"
    if not log.is_file():
        raise FileNotFoundError(f"{log} does not exist: not a training run folder")
    events = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    starts = [e for e in events if e.get("kind") == "start"]
    epochs = [e for e in events if e.get("kind") == "epoch" and e.get("val_loss") is not None]
    if not starts or not epochs:
        raise ValueError(f"{log}: no start event or no validated epoch yet")
    best = min(epochs, key=lambda e: e["val_loss"])  # the epoch best.pt holds, as export reads it
    student = StudentConfig.model_validate(starts[-1]["config"]["student"])
    return student, starts[-1], best, max(int(e.get("step", 0)) for e in events)


def compare_runs(
    cfg: DistillConfig, run_dirs: list[Path], threads: int, bench_sequences: list[str], seconds: float = 6.0
) -> dict[str, Any]:
    """The sweep report for candidates trained as full runs (same data and budget, e.g. side by side on
    one GPU): each run's best held-out cosine from its log, next to the ONNX Runtime CPU throughput of
    its architecture measured here, in this call, with the same threads (weights do not change speed,
    so a random-weight export of the logged architecture measures it without the checkpoint)."""
    import torch

    from protembed_distill.export.onnx import export_temp_fp32, onnx_throughput
    from protembed_distill.student.model import Student

    if not run_dirs:
        raise ValueError("--runs: give the candidates' run folders")
    rows: list[dict[str, Any]] = []
    steps: list[int] = []
    for run_dir in run_dirs:
        student, start, best, last_step = run_summary(run_dir)
        torch.manual_seed(0)
        dims = {t["name"]: 1024 for t in start["config"]["teachers"]}  # heads are per protein: negligible
        model = Student(student, dims).eval()
        tmp, path = export_temp_fp32(model)
        with tmp:
            rate = onnx_throughput(path, bench_sequences, threads, min_seconds=seconds)
        steps.append(last_step)
        rows.append(
            {
                "size": size_tag(student),
                "run": str(run_dir),
                "layers": student.layers,
                "d_model": student.d_model,
                "heads": student.heads,
                "ffn": student.ffn,
                "pool_dim": student.pool_dim,
                "parameters": int(start.get("parameters", 0)),
                "steps": last_step,
                "best_epoch": best.get("epoch"),
                "device": start.get("device"),
                "val_cosine": best.get("val_cosine", {}),
                "val_cosine_std": best.get("val_cosine_std", {}),
                "val_loss": best.get("val_loss"),
                "train_residues_per_s": _median_epoch_rate(run_dir),
                "onnx_cpu_residues_per_s": rate,
                "threads": threads,
            }
        )
    report = {
        "mode": "full runs compared",
        "sizes": rows,
        "steps_per_size": max(steps),
        "bench_sequences": len(bench_sequences),
    }
    out_dir = Path(cfg.run.dir) / "sweep"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "sweep.json").write_text(json.dumps(report, indent=1))
    (out_dir / "sweep.md").write_text(_markdown(report))
    return report


def _median_epoch_rate(run_dir: Path) -> float:
    """The run's typical training residues/s: the median over its epochs, because the epoch a time
    budget cuts after a step or two reports a rate dominated by its validation pass."""
    events = [json.loads(x) for x in (run_dir / "train.jsonl").read_text().splitlines() if x.strip()]
    rates = sorted(float(e["train_residues_per_s"]) for e in events if e.get("kind") == "epoch")
    return rates[len(rates) // 2] if rates else 0.0


def candidate_table(report: dict[str, Any]) -> str:
    """The sweep's (or the compared runs') table in markdown: one row per candidate, the held-out
    cosine to each teacher (original units and standardized) next to training and ONNX CPU speed."""
    rows = report["sizes"]
    teachers = sorted({t for r in rows for t in r["val_cosine"]})
    runs = report.get("mode") == "full runs compared"
    head = [
        *(["run"] if runs else []),
        "size",
        "params",
        "steps",
        *(f"val cos {t}" for t in teachers),
        *(f"std cos {t}" for t in teachers),
        "train res/s",
        "ONNX CPU res/s",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [
            *([Path(r["run"]).name] if runs else []),
            r["size"],
            f"{r['parameters'] / 1e6:.2f}M",
            str(r["steps"]),
            *(f"{r['val_cosine'].get(t, float('nan')):.4f}" for t in teachers),
            *(f"{r['val_cosine_std'].get(t, float('nan')):.4f}" for t in teachers),
            f"{r['train_residues_per_s']:.0f}",
            f"{r['onnx_cpu_residues_per_s']:.0f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _markdown(report: dict[str, Any]) -> str:
    rows = report["sizes"]
    title = (
        f"# Student candidates, full runs side by side (up to {report['steps_per_size']} steps; "
        f"ONNX CPU throughput measured here, threads {rows[0]['threads']})"
        if report.get("mode") == "full runs compared"
        else f"# Student size sweep ({report['steps_per_size']} steps each, threads {rows[0]['threads']})"
    )
    return f"{title}\n\n{candidate_table(report)}"


def measure_sizes(cfg: DistillConfig, ds: Dataset, threads: int, seconds: float = 20.0) -> dict[str, Any]:
    """Planning numbers without teachers: for each sweep size, random-weight training throughput
    (forward + backward + AdamW step, real residues/s on the training crops) and ONNX Runtime CPU
    throughput on validation sequences. Weights do not change speed, so this sizes the real run."""
    import time

    import torch

    from protembed_distill.export.onnx import export_temp_fp32, onnx_throughput
    from protembed_distill.student.model import Student
    from protembed_distill.train.batches import collate, make_batches
    from protembed_distill.train.losses import Standardizer, embedding_loss

    sizes = cfg.sweep.sizes or [cfg.student]
    dims = {t.name: 1024 for t in cfg.teachers}  # head cost is negligible next to the encoder
    lengths = [len(i.sequence) for i in ds.train]
    batches = make_batches(lengths, cfg.optim.batch_tokens, cfg.run.seed, 0)
    bench = [i.sequence for i in ds.val][:256]
    rows = []
    for size in sizes:
        torch.manual_seed(0)
        model = Student(size, dims)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        model.train()
        done = 0
        t0 = time.perf_counter()
        for b in batches:
            ids, mask = collate(ds.train, b, torch.device("cpu"))
            out = model(ids, mask)
            loss = sum(
                embedding_loss(
                    out[f"teacher_{n}"],
                    torch.zeros(len(b), d),
                    cfg.loss,
                    Standardizer(torch.zeros(d), torch.ones(d)),  # throughput only: any statistics do
                )[0]
                for n, d in dims.items()
            )
            opt.zero_grad()
            loss.backward()  # type: ignore[union-attr]
            opt.step()
            done += int(mask.sum())
            if time.perf_counter() - t0 > seconds:
                break
        train_rate = done / (time.perf_counter() - t0)
        model.eval()
        tmp, path = export_temp_fp32(model)
        with tmp:
            onnx_rate = onnx_throughput(path, bench, threads, min_seconds=seconds / 2)
        rows.append(
            {
                "size": size_tag(size),
                "parameters": model.parameter_count(),
                "train_residues_per_s": train_rate,
                "onnx_cpu_residues_per_s": onnx_rate,
            }
        )
    return {
        "threads": threads,
        "batch_tokens": cfg.optim.batch_tokens,
        "max_length": cfg.data.max_length,
        "train_sequences": len(ds.train),
        "train_residues": sum(lengths),
        "bench_residues": sum(len(s) for s in bench),
        "sizes": rows,
    }
