"""Benchmark and evaluation reports: ``reports/<name>.md`` + ``.json`` and the merged ``summary.json``.

Every report records how to regenerate it (the exact command), where it ran (CPU, cores, memory, load,
library versions) and when, because a throughput figure without its machine is not a figure.
``summary.json`` holds the headline numbers under fixed keys; each command merges its own keys into it,
so evaluation and the two benchmarks can run separately without clobbering each other.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import math
import os
import platform
import shlex
import sys
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

SUMMARY_FILE = "summary.json"
# Headline keys of summary.json (issue 5), and the report each one comes from.
SUMMARY_KEYS = {
    "retention": "evaluate",
    "speedup_vs_teachers": "bench_model",
    "server_vs_raw_ort": "bench_serve",
    "padding_ratio_bucketed": "bench_serve",
    "padding_ratio_fifo": "bench_serve",
    "cache_hit_speedup": "bench_serve",
}
_VERSIONED = (
    "onnxruntime-gpu",
    "onnxruntime",
    "torch",
    "numpy",
    "scikit-learn",
    "transformers",
    "httpx",
    "grpcio",
    "fastapi",
    "uvicorn",
)


def invocation(argv: list[str] | None = None) -> str:
    """The command line as a user would type it again."""
    argv = list(sys.argv if argv is None else argv)
    if not argv:
        return ""
    first = Path(argv[0])
    if first.name == "protembed":
        return shlex.join(["protembed", *argv[1:]])
    if first.name == "__main__.py" and first.parent.name == "protembed":
        return shlex.join(["python", "-m", "protembed", *argv[1:]])
    return shlex.join(argv)


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), else what the platform module knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def _versions() -> dict[str, str]:
    found: dict[str, str] = {}
    for dist in _VERSIONED:
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return found


def machine() -> dict[str, Any]:
    """What the numbers were measured on. The load average matters on a shared machine."""
    try:
        load: list[float] | None = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 1
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "memory_gib": _memory_gib(),
        "load_average_1_5_15": load,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": _versions(),
    }


def utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _jsonable(value: Any) -> Any:
    """NaN/inf are not JSON: write them as null so every report parses with a strict reader."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return _jsonable(value.item())
    return value


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def finish(report: dict[str, Any], seconds: float) -> None:
    """Record the run's wall time and how busy the (possibly shared) machine was by its end."""
    report["seconds"] = round(seconds, 1)
    with contextlib.suppress(OSError):
        report["machine"]["load_average_1_5_15_end"] = [round(x, 2) for x in os.getloadavg()]


def header(title: str, report: Mapping[str, Any]) -> str:
    """The common top of every markdown report: command, date, machine."""
    m = report["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in m.get("versions", {}).items())
    return "\n".join(
        [
            f"# {title}",
            "",
            f"- Command: `{report['command']}`",
            f"- Date (UTC): {report['date']}",
            f"- Machine: {m['cpu']}, {m['cores']} cores ({m['usable_cores']} usable), "
            f"{m['memory_gib']} GiB RAM, load average {m['load_average_1_5_15']} at start"
            + (f", {m['load_average_1_5_15_end']} at the end" if m.get("load_average_1_5_15_end") else ""),
            f"- Software: Python {m['python']}, {versions}",
            *([f"- Wall time: {report['seconds']:.0f} s"] if "seconds" in report else []),
            "",
        ]
    )


def write_report(reports_dir: Path, name: str, report: dict[str, Any], markdown: str) -> tuple[Path, Path]:
    """Write ``<name>.json`` (strict JSON) and ``<name>.md``; returns both paths."""
    json_path = reports_dir / f"{name}.json"
    md_path = reports_dir / f"{name}.md"
    _atomic_write(json_path, json.dumps(_jsonable(report), indent=2, allow_nan=False) + "\n")
    _atomic_write(md_path, markdown.rstrip() + "\n")
    return json_path, md_path


def new_report(kind: str, command: str | None = None) -> dict[str, Any]:
    return {"kind": kind, "command": command or invocation(), "date": utc_now(), "machine": machine()}


def read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc}); delete or fix it") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object at the top level")
    return data


def update_summary(reports_dir: Path, values: Mapping[str, Any], source: str) -> dict[str, Any]:
    """Merge ``values`` into ``summary.json``: other keys stay; dict values merge one level deep.

    ``sources`` records which report and date each key came from, so a reader can tell a stale figure.
    """
    path = reports_dir / SUMMARY_FILE
    summary = read_json(path) or {}
    sources = summary.setdefault("sources", {})
    for key, value in values.items():
        if isinstance(value, Mapping) and isinstance(summary.get(key), dict):
            summary[key].update(value)
        else:
            summary[key] = dict(value) if isinstance(value, Mapping) else value
        sources[key] = {"report": source, "date": utc_now()}
    _atomic_write(path, json.dumps(_jsonable(summary), indent=2, sort_keys=True, allow_nan=False) + "\n")
    return summary


def fmt(value: float | None, digits: int = 3) -> str:
    """A number for a markdown table; '—' for a missing one."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    return f"{value:.{digits}f}"


def table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)
