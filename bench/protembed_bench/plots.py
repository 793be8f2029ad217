"""PNG plots from the JSON reports (matplotlib, Agg backend: no display needed).

* ``quality_vs_speed.png`` — per probe task, each model's test score (95% interval) against its
  measured residues/s: needs ``evaluate.json`` and ``bench_model.json``.
* ``latency_vs_throughput.png`` — server p50/p95 latency against throughput as concurrency rises, per
  transport, with the raw ONNX Runtime limit: needs ``bench_serve.json``.

:func:`refresh` redraws whichever plots have their inputs, so each command calls it after writing its
report and the plots always match the newest reports.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from protembed_distill.reports import read_json

QUALITY_PLOT = "quality_vs_speed.png"
LATENCY_PLOT = "latency_vs_throughput.png"


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plain_log_ticks(ax: Any) -> None:
    """Label only the decades of a log axis: matplotlib's minor labels overlap at these widths."""
    from matplotlib.ticker import NullFormatter

    ax.xaxis.set_minor_formatter(NullFormatter())


def quality_vs_speed(evaluation: dict[str, Any], bench: dict[str, Any], path: Path) -> Path | None:
    """One panel per task: score vs residues/s for every model measured by both reports."""
    speeds = {
        name: r["residues_per_s"] for name, r in bench.get("results", {}).items() if r.get("residues_per_s")
    }
    tasks = evaluation.get("tasks", {})
    if not tasks or not speeds:
        return None
    plt = _pyplot()
    ncols = min(2, len(tasks))
    nrows = -(-len(tasks) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.2 * ncols, 3.8 * nrows), squeeze=False)
    flat = list(axes.ravel())
    for ax in flat[len(tasks) :]:
        ax.set_visible(False)
    for ax, (task, t) in zip(flat, tasks.items(), strict=False):
        metric = t["metric"]
        for model, res in t["results"].items():
            m = res["metrics"][metric]
            if model not in speeds:
                if model == "composition":  # no speed to plot: draw as the bar to clear
                    ax.axhline(m["point"], color="grey", ls="--", lw=1, label="composition baseline")
                continue
            colour = "tab:red" if model.startswith("teacher:") else "tab:blue"
            ax.errorbar(
                speeds[model],
                m["point"],
                yerr=[[m["point"] - m["low"]], [m["high"] - m["point"]]],
                fmt="o",
                color=colour,
                capsize=3,
            )
            ax.annotate(
                model, (speeds[model], m["point"]), textcoords="offset points", xytext=(4, 4), fontsize=7
            )
        ax.set_xscale("log")
        _plain_log_ticks(ax)
        ax.set_xlabel("residues / s (CPU, log)")
        ax.set_ylabel(f"test {metric}")
        ax.set_title(task)
        ax.grid(alpha=0.3)
    flat[0].legend(fontsize=7, loc="lower right")
    fig.suptitle("Probe quality vs speed (red: teachers, blue: student)", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def latency_vs_throughput(serve: dict[str, Any], path: Path) -> Path | None:
    levels = serve.get("levels", {})
    if not any(levels.values()):
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    styles = {"http": "tab:blue", "grpc": "tab:green"}
    for transport, rows in levels.items():
        if not rows:
            continue
        x = [r["residues_per_s"] for r in rows]
        colour = styles.get(transport, "tab:grey")
        ax.plot(x, [r["p50_ms"] for r in rows], "o-", color=colour, label=f"{transport} p50")
        ax.plot(x, [r["p95_ms"] for r in rows], "s--", color=colour, alpha=0.6, label=f"{transport} p95")
        for r in rows:
            ax.annotate(
                str(r["concurrency"]),
                (r["residues_per_s"], r["p50_ms"]),
                textcoords="offset points",
                xytext=(3, -9),
                fontsize=7,
            )
    raw = serve.get("raw_ort", {}).get("residues_per_s")
    if raw:
        ax.axvline(raw, color="black", ls=":", label="raw ONNX Runtime, length-sorted")
        fastest = max(r["residues_per_s"] for rows in levels.values() for r in rows)
        if fastest > 0 and raw > 5 * fastest:  # far apart (e.g. a tiny test model): keep both readable
            ax.set_xscale("log")
            _plain_log_ticks(ax)
    ax.set_yscale("log")
    ax.set_xlabel("throughput (residues / s)")
    ax.set_ylabel("latency (ms, log)")
    ax.set_title("Server latency vs throughput (labels: requests in flight)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def refresh(reports_dir: Path) -> list[Path]:
    """Redraw every plot whose input reports exist; returns the files written."""
    made: list[Path] = []
    evaluation = read_json(reports_dir / "evaluate.json")
    bench = read_json(reports_dir / "bench_model.json")
    serve = read_json(reports_dir / "bench_serve.json")
    if evaluation and bench:
        p = quality_vs_speed(evaluation, bench, reports_dir / QUALITY_PLOT)
        if p:
            made.append(p)
    if serve:
        p = latency_vs_throughput(serve, reports_dir / LATENCY_PLOT)
        if p:
            made.append(p)
    return made
