"""Model throughput: each teacher (PyTorch) and the student (PyTorch, ONNX Runtime fp32 / int8) on one set.

The set is a seeded sample of the training corpus (so its lengths follow the real distribution),
cropped to the student's maximum length so every model embeds exactly the same residues. Every model
runs in its own subprocess (``python -m protembed_bench.model worker SPEC OUT``) with the same
thread count and the same length-sorted token batches; the process's peak RSS (``VmHWM``) is then the
model's own, not that of whatever ran before it. Memory is RSS because PyTorch and ONNX Runtime allocate
natively, where ``tracemalloc`` sees nothing. Fast models repeat the pass until ``min_seconds`` so their
rate is not a timer artefact; a warm-up batch runs first for everyone.
"""

from __future__ import annotations

import importlib
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from protembed import tokenizer
from protembed.packing import Budget, pack_sorted


@dataclass(frozen=True)
class ModelSpec:
    """What one worker measures. ``kind``: a key of :data:`KINDS` (teacher | onnx | torch_student)."""

    name: str
    kind: str
    teacher: str | None = None  # registry name or NAME=package.module:factory
    options: dict[str, Any] = field(default_factory=dict)
    model_dir: str | None = None
    variant: str | None = None
    checkpoint: str | None = None


# Padded-token budgets each model is timed at. On a CPU a student runs faster in small batches (its
# attention scores stay in cache: 1.45x at 2,048 tokens against 8,192 on a Sapphire Rapids core pair),
# while the teachers' recurrences favour larger ones (UniRep-1900 2x from 2,048 to 8,192, and again
# 1.3-1.7x from 32k to 131k: hundreds of rows a batch, teachers/unirep.py); each keeps its own best, and
# the grid reaches past where either stops gaining (131k holds the default 256 sequences of 512 at once).
BATCH_TOKENS = (2048, 8192, 32768, 131072)


@dataclass
class BenchConfig:
    model_dir: Path
    teachers: list[str]
    corpus: Path
    checkpoint: Path | None = None
    sequences: int = 256
    seed: int = 0
    crop: int | None = None  # None = the model card's max_length
    threads: int = 2
    batch_tokens: tuple[int, ...] = BATCH_TOKENS  # budgets tried per model; the fastest is kept
    min_seconds: float = 5.0
    max_repeats: int = 20
    int8: bool = True
    timeout_s: float = 1800.0
    rounds: int = 1
    teacher_options: dict[str, dict[str, str]] = field(default_factory=dict)


def sample_sequences(corpus: Path, n: int, seed: int, crop: int) -> list[str]:
    """A seeded sample (without replacement) of corpus sequences, cropped to ``crop`` residues."""
    from protembed_distill.data.dataset import read_corpus

    records = read_corpus(corpus)
    if not records:
        raise ValueError(f"{corpus}: no sequences")
    pick = np.random.default_rng(seed).choice(len(records), size=min(n, len(records)), replace=False)
    return [records[i].sequence[:crop] for i in sorted(pick)]


def length_stats(sequences: Sequence[str]) -> dict[str, float]:
    lengths = [len(s) for s in sequences]
    return {
        "sequences": len(lengths),
        "residues": sum(lengths),
        "min": min(lengths),
        "median": statistics.median(lengths),
        "mean": round(statistics.fmean(lengths), 1),
        "max": max(lengths),
    }


def model_specs(cfg: BenchConfig, available_variants: Sequence[str]) -> list[ModelSpec]:
    from protembed_bench.evaluate import parse_teacher

    specs = []
    for text in cfg.teachers:
        t = parse_teacher(text)
        specs.append(
            ModelSpec(f"teacher:{t.name}", "teacher", text, dict(cfg.teacher_options.get(t.name, {})))
        )
    if cfg.checkpoint is not None:
        specs.append(ModelSpec("student:torch", "torch_student", checkpoint=str(cfg.checkpoint)))
    specs.append(ModelSpec("student", "onnx", model_dir=str(cfg.model_dir), variant="fp32"))
    if cfg.int8 and "int8" in available_variants:
        specs.append(ModelSpec("student:int8", "onnx", model_dir=str(cfg.model_dir), variant="int8"))
    return specs


# --- worker (runs in the subprocess) ----------------------------------------------------------------
def _status_mb(field_name: str) -> float:
    """A memory line of /proc/self/status (VmRSS now, VmHWM peak) in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1]) / 1024.0
    raise RuntimeError(f"/proc/self/status has no {field_name}")


class Embedder(Protocol):
    """A loaded model as the worker times it: one call embeds one batch of sequences."""

    def embed(self, sequences: list[str]) -> object: ...


class OnnxEmbedder:
    """The student through the service's model layer, computing what a default server request does."""

    def __init__(self, spec: ModelSpec, threads: int) -> None:
        from protembed_bench.onnx_student import OnnxStudent

        if spec.model_dir is None or spec.variant is None:
            raise ValueError(f"model {spec.name!r}: kind 'onnx' needs model_dir and variant")
        student = OnnxStudent(Path(spec.model_dir), spec.variant, threads)
        default = student.card.output(student.card.default_output)
        assert default is not None
        self._model = student.model
        self._outputs = [default.onnx_output]

    def embed(self, sequences: list[str]) -> object:
        return self._model.run(tokenizer.batch_encode(sequences), self._outputs)


class TeacherEmbedder:
    """A teacher (PyTorch) from the registry or NAME=package.module:factory, with its options."""

    def __init__(self, spec: ModelSpec, threads: int) -> None:
        import torch

        from protembed_bench.evaluate import parse_teacher

        if spec.teacher is None:
            raise ValueError(f"model {spec.name!r}: kind 'teacher' needs teacher")
        torch.set_num_threads(threads)
        self._teacher = replace(parse_teacher(spec.teacher), options=dict(spec.options)).load()

    def embed(self, sequences: list[str]) -> object:
        return self._teacher.embed(sequences)


class TorchStudentEmbedder:
    """The student as PyTorch from a distillation checkpoint, in inference mode."""

    def __init__(self, spec: ModelSpec, threads: int) -> None:
        import torch

        from protembed_distill.train.checkpoint import load_checkpoint, student_from_checkpoint

        if spec.checkpoint is None:
            raise ValueError(f"model {spec.name!r}: kind 'torch_student' needs checkpoint")
        torch.set_num_threads(threads)
        self._torch = torch
        self._model = student_from_checkpoint(load_checkpoint(spec.checkpoint)).eval()

    def embed(self, sequences: list[str]) -> object:
        batch = tokenizer.batch_encode(sequences)
        with self._torch.inference_mode():
            return self._model(
                self._torch.from_numpy(batch.input_ids), self._torch.from_numpy(batch.attention_mask)
            )


@dataclass(frozen=True)
class Kind:
    """How the worker handles one ``ModelSpec.kind``."""

    # Imported before the memory baseline, so the RSS delta is the model, not the library.
    runtime: str
    load: Callable[[ModelSpec, int], Embedder]


KINDS: dict[str, Kind] = {
    "onnx": Kind("onnxruntime", OnnxEmbedder),
    "teacher": Kind("torch", TeacherEmbedder),
    "torch_student": Kind("torch", TorchStudentEmbedder),
}


def kind_of(spec: ModelSpec) -> Kind:
    try:
        return KINDS[spec.kind]
    except KeyError:
        raise ValueError(
            f"model {spec.name!r}: unknown kind {spec.kind!r} (known: {', '.join(KINDS)})"
        ) from None


def worker(spec_path: Path, out_path: Path) -> None:
    job = json.loads(spec_path.read_text())
    spec = ModelSpec(**job["model"])
    sequences: list[str] = job["sequences"]
    threads = int(job["threads"])
    kind = kind_of(spec)
    importlib.import_module(kind.runtime)
    rss_baseline = _status_mb("VmRSS")
    start = time.perf_counter()
    embed = kind.load(spec, threads).embed
    load_seconds = time.perf_counter() - start
    rss_loaded = _status_mb("VmRSS")
    batches = [
        [sequences[i] for i in b]
        for b in pack_sorted([len(s) for s in sequences], Budget(job["batch_tokens"]))
    ]
    embed(batches[0])  # warm-up: lazy initialisation, allocator growth
    residues = sum(len(s) for s in sequences)
    passes = 0
    elapsed = 0.0
    while passes < 1 or (elapsed < job["min_seconds"] and passes < job["max_repeats"]):
        t0 = time.perf_counter()
        for b in batches:
            embed(b)
        elapsed += time.perf_counter() - t0
        passes += 1
    seconds = elapsed / passes
    peak = _status_mb("VmHWM")
    result = {
        "name": spec.name,
        "kind": spec.kind,
        "passes": passes,
        "seconds_per_pass": seconds,
        "sequences": len(sequences),
        "residues": residues,
        "batches": len(batches),
        "sequences_per_s": len(sequences) / seconds,
        "residues_per_s": residues / seconds,
        "load_seconds": load_seconds,
        "rss_baseline_mb": rss_baseline,
        "rss_after_load_mb": rss_loaded,
        "peak_rss_mb": peak,
        "peak_delta_mb": peak - rss_baseline,
    }
    out_path.write_text(json.dumps(result))


# --- parent -----------------------------------------------------------------------------------------
def _child_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    # The worker must import what this process imports (installed or from a source checkout).
    paths = [p for p in sys.path if p and Path(p).is_dir()]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys([*paths, *filter(None, [env.get("PYTHONPATH")])]))
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = str(threads)
    return env


def measure(
    spec: ModelSpec, sequences: list[str], cfg: BenchConfig, work: Path, batch_tokens: int
) -> dict[str, Any]:
    """Run one worker subprocess; its JSON result, or an error entry naming what failed."""
    spec_path = work / f"{spec.name.replace(':', '_')}.spec.json"
    out_path = spec_path.with_suffix("").with_suffix(".out.json")
    job = {
        "model": asdict(spec),
        "sequences": sequences,
        "threads": cfg.threads,
        "batch_tokens": batch_tokens,
        "min_seconds": cfg.min_seconds,
        "max_repeats": cfg.max_repeats,
    }
    spec_path.write_text(json.dumps(job))
    cmd = [sys.executable, "-m", "protembed_bench.model", "worker", str(spec_path), str(out_path)]
    try:
        proc = subprocess.run(
            cmd,
            env=_child_env(cfg.threads),
            capture_output=True,
            text=True,
            timeout=cfg.timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return {"name": spec.name, "kind": spec.kind, "error": f"timed out after {cfg.timeout_s:.0f}s"}
    if proc.returncode != 0 or not out_path.is_file():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        return {"name": spec.name, "kind": spec.kind, "error": f"exit {proc.returncode}: " + " | ".join(tail)}
    result: dict[str, Any] = json.loads(out_path.read_text())
    return {**result, "batch_tokens": batch_tokens}


def ratios(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Student rates over each teacher's and over the teachers' combined (time to run them all)."""
    teachers = {n: r for n, r in results.items() if n.startswith("teacher:") and "error" not in r}
    students = {n: r for n, r in results.items() if not n.startswith("teacher:") and "error" not in r}
    out: dict[str, Any] = {}
    combined = None
    if teachers:
        residues = next(iter(teachers.values()))["residues"]
        combined = residues / sum(r["seconds_per_pass"] for r in teachers.values())
        out["teachers_combined_residues_per_s"] = combined
    for s, r in students.items():
        entry = {t: r["residues_per_s"] / tr["residues_per_s"] for t, tr in teachers.items()}
        if combined:
            entry["teachers_combined"] = r["residues_per_s"] / combined
        out[s] = entry
    return out


def run_bench(cfg: BenchConfig, work: Path, log: Callable[[str], None] = print) -> dict[str, Any]:
    from protembed.artifact import read_model_card

    card = read_model_card(cfg.model_dir)
    crop = cfg.crop or card.max_length
    sequences = sample_sequences(cfg.corpus, cfg.sequences, cfg.seed, crop)
    specs = model_specs(cfg, [f.variant for f in card.files])
    results: dict[str, dict[str, Any]] = {}
    # Rounds interleave the models (A B C, A B C, ...) and keep each one's fastest round: on a shared
    # machine a burst of someone else's load then slows one round, not one model.
    for round_no in range(cfg.rounds):
        for spec, budget in ((s, b) for s in specs for b in cfg.batch_tokens):
            log(
                f"bench model: measuring {spec.name} at {budget} tokens per batch "
                f"(round {round_no + 1} of {cfg.rounds}) ..."
            )
            r = measure(spec, sequences, cfg, work, budget)
            if "error" in r:
                log(f"bench model: {spec.name} FAILED: {r['error']}")
                results[spec.name] = r
                continue
            log(
                f"bench model: {spec.name}: {r['residues_per_s']:.0f} residues/s, "
                f"peak RSS {r['peak_rss_mb']:.0f} MiB"
            )
            best = results.get(spec.name)
            rounds = (
                [*best.get("rounds_residues_per_s", []), r["residues_per_s"]]
                if best
                else [r["residues_per_s"]]
            )
            if best is None or "error" in best or r["residues_per_s"] > best["residues_per_s"]:
                best = r
            results[spec.name] = {**best, "rounds_residues_per_s": rounds}
    return {
        "model": {"folder": str(cfg.model_dir), "id": card.id, "version": card.version},
        "settings": {
            "corpus": str(cfg.corpus),
            "seed": cfg.seed,
            "crop": crop,
            "threads": cfg.threads,
            "batch_tokens": list(cfg.batch_tokens),
            "rounds": cfg.rounds,
            "min_seconds": cfg.min_seconds,
            "max_repeats": cfg.max_repeats,
            "batching": "length-sorted, (rows x longest) <= batch_tokens; one warm-up batch per model; "
            "each model timed at every batch_tokens budget, its fastest kept",
            "memory": "peak RSS (VmHWM) of a fresh subprocess per model; delta = peak - RSS after importing "
            "the runtime, before loading the model",
        },
        "set": length_stats(sequences),
        "results": results,
        "ratios": ratios(results),
    }


def render_markdown(report: dict[str, Any], head: str) -> str:
    from protembed_distill.reports import fmt, table

    s, st = report["settings"], report["set"]
    lines = [
        head,
        f"Model `{report['model']['id']}` {report['model']['version']}. Set: {st['sequences']} corpus "
        f"sequences (seed {s['seed']}, cropped to {s['crop']}), {st['residues']} residues, length min "
        f"{st['min']} / median {st['median']} / mean {st['mean']} / max {st['max']}. Threads: "
        f"{s['threads']} for every model; {s['rounds']} interleaved round(s), the fastest kept. "
        f"Batching: {s['batching']}. Memory: {s['memory']}.",
        "",
        "## Throughput",
        "",
    ]
    rows = []
    for name, r in report["results"].items():
        if "error" in r:
            rows.append([name, "failed: " + r["error"], "", "", "", "", "", ""])
            continue
        rows.append(
            [
                name,
                str(r.get("batch_tokens", "")),
                fmt(r["sequences_per_s"], 1),
                f"{r['residues_per_s']:.0f}",
                f"{r['peak_rss_mb']:.0f}",
                f"{r['peak_delta_mb']:.0f}",
                fmt(r["load_seconds"], 2),
                str(r["passes"]),
            ]
        )
    lines += [
        table(
            [
                "model",
                "batch tokens",
                "sequences/s",
                "residues/s",
                "peak RSS MiB",
                "model RSS delta MiB",
                "load s",
                "passes",
            ],
            rows,
        ),
        "",
    ]
    rat = report["ratios"]
    teachers = [
        n for n in report["results"] if n.startswith("teacher:") and "error" not in report["results"][n]
    ]
    students = [n for n in rat if n != "teachers_combined_residues_per_s"]
    if teachers and students:
        cols = [*teachers, "teachers_combined"]
        lines += ["## Speed-up (student residues/s over teacher residues/s)", ""]
        lines += [
            table(["student", *cols], [[s, *(fmt(rat[s].get(c), 1) + "x" for c in cols)] for s in students])
        ]
        lines += [
            "",
            f"Teachers combined: {fmt(rat.get('teachers_combined_residues_per_s'), 0)} residues/s "
            "(the set's residues over the summed time of every teacher).",
            "",
        ]
    return "\n".join(lines)


def summary_values(report: dict[str, Any]) -> dict[str, Any]:
    """The headline is the file the server runs on the CPU (``model_variant=auto``: int8 when the model
    has it, which is when this benchmark times it); fp32's figure is kept beside it."""
    ratios = report["ratios"]
    served = "student:int8" if "teachers_combined" in ratios.get("student:int8", {}) else "student"
    values: dict[str, Any] = {}
    rat = ratios.get(served, {})
    if "teachers_combined" in rat:
        values["speedup_vs_teachers"] = rat["teachers_combined"]
        values["speedup_vs_each_teacher"] = {
            k.split(":", 1)[1]: v for k, v in rat.items() if k.startswith("teacher:")
        }
        values["speedup_variant"] = "int8" if served == "student:int8" else "fp32"
    if "teachers_combined" in ratios.get("student", {}):
        values["speedup_vs_teachers_fp32"] = ratios["student"]["teachers_combined"]
    return values


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "worker":
        worker(Path(sys.argv[2]), Path(sys.argv[3]))
    else:
        print("usage: python -m protembed_bench.model worker SPEC.json OUT.json", file=sys.stderr)
        raise SystemExit(2)
