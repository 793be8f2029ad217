"""Quality retention: linear probes on the labelled sets for every teacher, the student and its heads.

For each labelled set (``<data>/eval/<set>/{train,test}.tsv``, see the data README) this embeds the same
deterministic subset with

* ``composition``        — 20 amino-acid frequencies + log length (what any embedding must beat),
* ``teacher:<name>``     — each teacher, from the distillation teacher cache when there, else computed
                           (and written to that cache, so a second run is free),
* ``student``            — the student's own embedding (ONNX Runtime on the model folder, fp32),
* ``head:<name>``        — each teacher-space head of the student,
* ``student:int8`` ...   — the same outputs from the int8 variant,

fits a linear probe per (set, model) (:mod:`protembed_bench.probes`) and reports test scores with
bootstrap intervals and retention = student score / best teacher score (paired bootstrap interval).
Every model sees the same residues: sequences are cropped to the student's maximum length (which is
also the distillation crop, so cache keys match).
"""

from __future__ import annotations

import contextlib
import csv
import importlib
import logging
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from protembed import tokenizer
from protembed.settings import default_model_dir
from protembed_bench.onnx_student import OnnxStudent

if TYPE_CHECKING:  # scikit-learn is imported only when probes run, so the CLI parser stays light
    from protembed_bench.probes import Interval, ProbeResult, TaskKind

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
# The shared data folder sits beside the repository (CI clones next to it); $PROTEMBED_DATA_DIR points
# elsewhere, e.g. for a clone made somewhere else. Tests read their corpus sequences from here too.
DEFAULT_DATA_DIR = Path(os.environ.get("PROTEMBED_DATA_DIR") or REPO.parent / "shared" / "data").expanduser()
# The server's own default, so evaluation and benchmarks always look at the model `protembed serve` loads.
DEFAULT_MODEL_DIR = default_model_dir()
DEFAULT_CACHE_DIR = Path("~/.cache/protembed/teacher-cache")
# Defaults sized for a 2-core CPU: UniRep-1900 embeds ~2k residues/s, so 400 train + 300 test sequences
# per set (3 sets, ~0.8 M residues after cropping) cost ~7 min for it; the rest of the run ~5 min.
DEFAULT_MAX_TRAIN = 400
DEFAULT_MAX_TEST = 300
csv.field_size_limit(sys.maxsize)


@dataclass(frozen=True)
class TaskSpec:
    """One probe task: which file folder and label column, and how it is scored."""

    name: str
    folder: str
    label: str
    kind: TaskKind
    metrics: tuple[str, ...]  # the first one is primary: it selects the strength and defines retention
    exclude: tuple[str, ...] = ()  # label values whose rows are left out (DeepLoc membrane: U = unknown)


TASKS: dict[str, TaskSpec] = {
    "deeploc": TaskSpec("deeploc", "deeploc", "location", "classification", ("accuracy",)),
    "deeploc_membrane": TaskSpec(
        "deeploc_membrane", "deeploc", "membrane", "classification", ("accuracy",), exclude=("U",)
    ),
    "deepsol": TaskSpec("deepsol", "deepsol", "soluble", "classification", ("accuracy",)),
    "capsid": TaskSpec("capsid", "capsid", "capsid", "classification", ("mcc", "accuracy")),
}


@dataclass(frozen=True)
class Split:
    sequences: list[str]  # normalized and cropped
    labels: list[str]


@dataclass(frozen=True)
class TaskData:
    spec: TaskSpec
    train: Split
    test: Split
    sizes: dict[str, int]


@dataclass(frozen=True)
class TeacherSpec:
    """A teacher by registry name, or ``name=package.module:factory`` for a teacher class of your own."""

    name: str
    factory: str | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def load(self) -> Any:
        if self.factory is None:
            from protembed_distill.teachers.registry import load_teacher

            return load_teacher(self.name, **self.options)
        module_name, _, attr = self.factory.partition(":")
        try:
            make = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise ValueError(f"teacher {self.name!r}: cannot import {self.factory!r}: {exc}") from exc
        teacher = make(**self.options)
        if teacher.name != self.name:
            raise ValueError(f"teacher {self.factory!r} calls itself {teacher.name!r}, not {self.name!r}")
        return teacher


def parse_teacher(text: str) -> TeacherSpec:
    name, sep, factory = text.partition("=")
    if not name:
        raise ValueError(f"teacher {text!r}: empty name")
    if sep and ":" not in factory:
        raise ValueError(f"teacher {text!r}: expected NAME=package.module:factory")
    return TeacherSpec(name, factory if sep else None)


@dataclass
class EvalConfig:
    model_dir: Path
    teachers: list[TeacherSpec]
    data_dir: Path = DEFAULT_DATA_DIR
    tasks: list[str] = field(default_factory=lambda: list(TASKS))
    max_train: int = DEFAULT_MAX_TRAIN  # 0 = the whole split
    max_test: int = DEFAULT_MAX_TEST
    crop: int | None = None  # None = the model card's max_length
    seed: int = 0
    folds: int = 5
    resamples: int = 1000
    threads: int = 2
    batch_tokens: int = 8192  # the student's; each teacher batches at its own call size
    cache_dir: Path = DEFAULT_CACHE_DIR
    int8: bool = True
    secondary_structure: bool = True
    ss_train_chains: int = 300
    ss_test_chains: int = 200
    ss_max_train_residues: int = 40000
    progress: bool = True


# --- data -------------------------------------------------------------------------------------------
def read_tsv(path: Path, columns: Sequence[str], crop: int) -> tuple[list[str], dict[str, list[str]]]:
    """Normalized, cropped sequences and the requested label columns of one TSV (errors name the row)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: labelled set not found (see the data README)")
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh, delimiter="\t")
        missing = [c for c in ("sequence", *columns) if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: missing column(s) {missing}; header is {reader.fieldnames}")
        seqs: list[str] = []
        labels: dict[str, list[str]] = {c: [] for c in columns}
        for row_no, row in enumerate(reader, start=2):
            try:
                seq = tokenizer.normalize(row["sequence"] or "")
            except Exception as exc:
                raise ValueError(f"{path}:{row_no}: bad sequence: {exc}") from exc
            seqs.append(seq[:crop])
            for c in columns:
                value = (row[c] or "").strip()
                if not value:
                    raise ValueError(f"{path}:{row_no}: empty {c!r} label")
                labels[c].append(value)
    if not seqs:
        raise ValueError(f"{path}: no rows")
    return seqs, labels


def subsample(n: int, k: int, seed: int) -> np.ndarray:
    """Sorted indices of a seeded random subset of size k (all when k is 0 or >= n)."""
    if k <= 0 or k >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).permutation(n)[:k])


def load_tasks(
    data_dir: Path, names: Sequence[str], max_train: int, max_test: int, crop: int, seed: int
) -> dict[str, TaskData]:
    """Each task's train/test subsets. Tasks sharing a folder share the subset (one embedding pass)."""
    unknown = [n for n in names if n not in TASKS]
    if unknown:
        raise ValueError(f"unknown task(s) {unknown}; known: {', '.join(TASKS)}")
    out: dict[str, TaskData] = {}
    folders = dict.fromkeys(TASKS[n].folder for n in names)
    for folder in folders:
        specs = [TASKS[n] for n in names if TASKS[n].folder == folder]
        columns = [s.label for s in specs]
        splits = {}
        for split, k in (("train", max_train), ("test", max_test)):
            seqs, labels = read_tsv(data_dir / "eval" / folder / f"{split}.tsv", columns, crop)
            keep = subsample(len(seqs), k, seed)
            splits[split] = (
                len(seqs),
                [seqs[i] for i in keep],
                {c: [v[i] for i in keep] for c, v in labels.items()},
            )
        for spec in specs:
            parts: dict[str, Split] = {}
            sizes: dict[str, int] = {}
            for split, (total, seqs, labels) in splits.items():
                rows = [i for i, y in enumerate(labels[spec.label]) if y not in spec.exclude]
                parts[split] = Split([seqs[i] for i in rows], [labels[spec.label][i] for i in rows])
                sizes[f"{split}_available"] = total
                sizes[f"{split}_used"] = len(rows)
            out[spec.name] = TaskData(spec, parts["train"], parts["test"], sizes)
    return out


# --- embeddings -------------------------------------------------------------------------------------
@dataclass
class FeatureSet:
    """One model's per-protein features for the evaluation's unique sequences (rows in that order)."""

    name: str
    group: str  # baseline | teacher | student | head
    matrix: np.ndarray
    seconds: float
    note: str = ""


def student_features(
    folder: Path, variant: str, sequences: Sequence[str], threads: int, batch_tokens: int
) -> list[FeatureSet]:
    """The student's own embedding and every teacher-space head, from one pass of one variant."""
    student = OnnxStudent(folder, variant, threads)
    outputs = student.per_protein_outputs()
    start = time.perf_counter()
    values = student.embed(sequences, list(outputs.values()), batch_tokens)
    seconds = time.perf_counter() - start
    suffix = "" if variant == "fp32" else f":{variant}"
    sets = []
    for name, onnx_name in outputs.items():
        spec = student.card.output(name)
        assert spec is not None
        is_head = spec.space.startswith("teacher:")
        label = (f"head:{spec.space.split(':', 1)[1]}" if is_head else "student") + suffix
        matrix = values[onnx_name]
        assert isinstance(matrix, np.ndarray)
        sets.append(
            FeatureSet(label, "head" if is_head else "student", matrix, seconds, f"ONNX Runtime {variant}")
        )
    return sets


def _lookup_cached(paths: Sequence[Path], keys: Sequence[str]) -> dict[str, np.ndarray]:
    from protembed_distill.teacher_cache import EmbeddingStore

    found: dict[str, np.ndarray] = {}
    for path in paths:
        if not path.is_file():
            continue
        try:
            with EmbeddingStore(path, mode="r") as store:
                if not store.initialized:
                    continue
                index = store.index()
                want = [k for k in dict.fromkeys(keys) if k in index and k not in found]
                if want:
                    found.update(zip(want, store.per_protein(want), strict=True))
        except OSError as exc:  # h5py: locked by a running writer, or not an HDF5 file
            raise RuntimeError(f"teacher cache {path} cannot be read: {exc}") from exc
    return found


def teacher_features(
    spec: TeacherSpec,
    sequences: Sequence[str],
    cache_dir: Path,
    batch_tokens: int | None = None,
    progress: bool = True,
) -> FeatureSet:
    """Per-protein vectors from the distillation cache; missing ones computed and written to the cache,
    ``batch_tokens`` padded tokens a call (None: the teacher's own call size, ``Teacher.call_tokens``).

    The distillation cache file may also hold per-residue states (for teachers distilled per residue);
    evaluation sequences are then written to a per-protein-only sibling ``<file>.eval.h5`` instead, so
    evaluation never fills the training cache with residue arrays it does not need.
    """
    from protembed_distill.config import TeacherConfig
    from protembed_distill.data.dataset import Item, sequence_key
    from protembed_distill.teacher_cache import EmbeddingStore, cache_path, embed_into

    keys = [sequence_key(s) for s in sequences]
    main = cache_path(cache_dir, TeacherConfig(name=spec.name, options=spec.options))
    side = main.with_name(main.stem + ".eval.h5")
    start = time.perf_counter()
    found = _lookup_cached([main, side], keys)
    hits = sum(k in found for k in keys)
    missing = [
        Item(f"eval|{k[:16]}", "eval", s, k) for s, k in zip(sequences, keys, strict=True) if k not in found
    ]
    missing = list({it.key: it for it in missing}.values())
    if missing:
        target = main
        if main.is_file():
            with EmbeddingStore(main, mode="r") as store:
                if store.initialized and store.has_residues:
                    target = side
        log.info(
            "%s: %d of %d sequences cached; embedding %d -> %s",
            spec.name,
            hits,
            len(keys),
            len(missing),
            target,
        )
        teacher = spec.load()
        with EmbeddingStore(target) as store:
            embed_into(
                teacher, missing, store, per_residue=False, batch_tokens=batch_tokens, progress=progress
            )
        found.update(_lookup_cached([target], [it.key for it in missing]))
    matrix = np.stack([found[k] for k in keys]).astype(np.float32)
    note = f"{hits} of {len(keys)} from cache ({main.parent})"
    return FeatureSet(f"teacher:{spec.name}", "teacher", matrix, time.perf_counter() - start, note)


# --- probes and retention ---------------------------------------------------------------------------
@dataclass
class TaskOutcome:
    data: TaskData
    results: dict[str, ProbeResult]
    retention: dict[str, dict[str, Any]]
    best_teacher: str | None


def _retention(
    data: TaskData, y_test: np.ndarray, results: dict[str, ProbeResult], boot_idx: np.ndarray
) -> tuple[str | None, dict[str, dict[str, Any]]]:
    """Every non-teacher model against the best teacher, and each head against its own teacher."""
    from protembed_bench import probes

    primary = data.spec.metrics[0]
    teachers = {n: r for n, r in results.items() if n.startswith("teacher:")}
    if not teachers:
        return None, {}
    best = max(teachers, key=lambda n: teachers[n].metrics[primary].point)
    out: dict[str, dict[str, Any]] = {}
    for name, res in results.items():
        if name.startswith("teacher:"):
            continue
        try:
            vs_best = probes.paired_ratio_interval(
                y_test, res.predictions, teachers[best].predictions, primary, boot_idx
            )
        except ValueError:  # the best teacher scored <= 0 (e.g. MCC on a tiny smoke subset)
            continue
        entry: dict[str, Any] = {"vs": best, "metric": primary, **vs_best.to_dict()}
        if name.startswith("head:"):
            own = "teacher:" + name.split(":")[1]
            if own in teachers:
                with contextlib.suppress(ValueError):  # that teacher scored <= 0
                    entry["vs_own_teacher"] = {
                        "teacher": own,
                        **probes.paired_ratio_interval(
                            y_test, res.predictions, teachers[own].predictions, primary, boot_idx
                        ).to_dict(),
                    }
        out[name] = entry
    return best, out


def probe_task(
    data: TaskData, features: Sequence[FeatureSet], row_of: dict[str, int], cfg: EvalConfig
) -> TaskOutcome:
    from protembed_bench import probes

    y_train, y_test, _ = probes.encode_labels(data.train.labels, data.test.labels)
    train_rows = np.array([row_of[s] for s in data.train.sequences])
    test_rows = np.array([row_of[s] for s in data.test.sequences])
    # Seeded per task so every model of this task is scored on the same resamples (paired comparisons).
    boot_idx = probes.bootstrap_indices(len(y_test), cfg.resamples, cfg.seed)
    results: dict[str, ProbeResult] = {}
    for fs in features:
        start = time.perf_counter()
        results[fs.name] = probes.run_probe(
            fs.matrix[train_rows],
            y_train,
            fs.matrix[test_rows],
            y_test,
            data.spec.kind,
            metrics=data.spec.metrics,
            boot_idx=boot_idx,
            folds=cfg.folds,
            seed=cfg.seed,
        )
        point = results[fs.name].metrics[data.spec.metrics[0]].point
        log.info(
            "%s / %s: %s %.3f (%.1fs)",
            data.spec.name,
            fs.name,
            data.spec.metrics[0],
            point,
            time.perf_counter() - start,
        )
    best, retention = _retention(data, y_test, results, boot_idx)
    return TaskOutcome(data, results, retention, best)


# --- per-residue secondary structure ----------------------------------------------------------------
def _window_onehot(seq: str, half: int) -> np.ndarray:
    """One-hot residues in a +-half window around each position [L, (2*half+1)*VOCAB]: the baseline."""
    ids = tokenizer.encode(seq)
    padded = np.concatenate([np.zeros(half, np.int64), ids, np.zeros(half, np.int64)])
    out = np.zeros((len(seq), 2 * half + 1, tokenizer.VOCAB_SIZE), dtype=np.float32)
    rows = np.arange(len(seq))
    for off in range(2 * half + 1):
        out[rows, off, padded[rows + off]] = 1.0
    return out.reshape(len(seq), -1)


def _chain_bootstrap(
    correct: np.ndarray, chain: np.ndarray, n_chains: int, resamples: int, seed: int
) -> Interval:
    """Q3 with a bootstrap over chains (residues of one chain are not independent)."""
    from protembed_bench import probes

    hits = np.bincount(chain, weights=correct.astype(np.float64), minlength=n_chains)
    sizes = np.bincount(chain, minlength=n_chains).astype(np.float64)
    idx = probes.bootstrap_indices(n_chains, resamples, seed)
    samples = hits[idx].sum(axis=1) / sizes[idx].sum(axis=1)
    return probes.percentile_interval(float(hits.sum() / sizes.sum()), samples)


def secondary_structure(cfg: EvalConfig, crop: int) -> dict[str, Any]:
    """Per-residue Q3 of a linear probe on the student's residue states, against a one-hot window."""
    from protembed_bench import probes

    path = cfg.data_dir / "eval" / "secondary_structure" / "sampled.tsv"
    seqs, cols = read_tsv(path, ["dssp3", "set"], crop)
    labels = [lab[:crop] for lab in cols["dssp3"]]
    for i, (s, lab) in enumerate(zip(seqs, labels, strict=True)):
        if len(lab) != len(s):
            raise ValueError(f"{path}: row {i + 2}: dssp3 has {len(lab)} states for {len(s)} residues")
    pools = {split: [i for i, v in enumerate(cols["set"]) if v == split] for split in ("train", "test")}
    chosen = {
        "train": [pools["train"][i] for i in subsample(len(pools["train"]), cfg.ss_train_chains, cfg.seed)],
        "test": [pools["test"][i] for i in subsample(len(pools["test"]), cfg.ss_test_chains, cfg.seed)],
    }
    student = OnnxStudent(cfg.model_dir, "fp32", cfg.threads)
    rs_spec = student.card.per_residue_output("student")
    if rs_spec is None:
        raise ValueError(f"{cfg.model_dir}: the model card lists no per-residue output in the student space")
    classes = "CEH"
    feats: dict[str, dict[str, np.ndarray]] = {"student:residues": {}, "window_onehot": {}}
    ys: dict[str, np.ndarray] = {}
    chains: dict[str, np.ndarray] = {}
    for split, rows in chosen.items():
        split_seqs = [seqs[i] for i in rows]
        states = student.embed(split_seqs, [rs_spec.onnx_output], cfg.batch_tokens)[rs_spec.onnx_output]
        assert isinstance(states, list)
        feats["student:residues"][split] = np.concatenate(states)
        feats["window_onehot"][split] = np.concatenate([_window_onehot(s, 7) for s in split_seqs])
        ys[split] = np.array([classes.index(c) for i in rows for c in labels[i]], dtype=np.int64)
        chains[split] = np.concatenate([np.full(len(seqs[i]), j) for j, i in enumerate(rows)])
    keep = subsample(len(ys["train"]), cfg.ss_max_train_residues, cfg.seed)
    dummy_idx = probes.bootstrap_indices(len(ys["test"]), 1, cfg.seed)  # intervals come from chains below
    results: dict[str, Any] = {}
    for name, f in feats.items():
        res = probes.run_probe(
            f["train"][keep],
            ys["train"][keep],
            f["test"],
            ys["test"],
            "classification",
            metrics=("accuracy",),
            boot_idx=dummy_idx,
            folds=min(cfg.folds, 3),
            seed=cfg.seed,
        )
        q3 = _chain_bootstrap(
            res.predictions == ys["test"], chains["test"], len(chosen["test"]), cfg.resamples, cfg.seed
        )
        res = replace(res, metrics={"q3": q3})
        results[name] = res.to_dict()
    return {
        "metric": "q3 (per-residue accuracy; 95% interval from a bootstrap over chains)",
        "chains": {k: len(v) for k, v in chosen.items()},
        "residues": {"train_used": len(keep), "train_available": len(ys["train"]), "test": len(ys["test"])},
        "results": results,
        "note": "these chains are in the distillation corpus (source flip_ss): a check of per-residue "
        "output, not a retention claim",
    }


# --- the whole run ----------------------------------------------------------------------------------
def _evaluation_sequences(cfg: EvalConfig) -> tuple[Any, int, dict[str, TaskData], list[str]]:
    """(model card, crop, tasks, unique sequences in first-seen order) for an evaluation config."""
    from protembed.artifact import read_model_card

    card = read_model_card(cfg.model_dir)
    crop = cfg.crop or card.max_length
    if crop > card.max_length:
        raise ValueError(f"crop {crop} exceeds the model's max_length {card.max_length}")
    tasks = load_tasks(cfg.data_dir, cfg.tasks, cfg.max_train, cfg.max_test, crop, cfg.seed)
    unique = list(dict.fromkeys(s for t in tasks.values() for s in (*t.train.sequences, *t.test.sequences)))
    return card, crop, tasks, unique


def embed_teachers_only(cfg: EvalConfig) -> dict[str, str]:
    """Fill the teacher caches for exactly the sequences an evaluation with ``cfg`` will probe, and stop:
    the slow half of an evaluation, run where the teachers are fast (a GPU box); the probes then run
    anywhere that has the cache files. Returns teacher -> what was cached and what was computed."""
    _, _, _, unique = _evaluation_sequences(cfg)
    notes: dict[str, str] = {}
    for spec in cfg.teachers:
        fs = teacher_features(spec, unique, cfg.cache_dir.expanduser(), progress=cfg.progress)
        notes[spec.name] = f"{fs.matrix.shape[0]} sequences, {fs.note}, {fs.seconds:.1f}s"
    return notes


def run_evaluation(cfg: EvalConfig) -> dict[str, Any]:
    """Embed, probe and compare; returns the report body (without command/machine, added by the caller)."""
    from protembed_bench import probes

    card, crop, tasks, unique = _evaluation_sequences(cfg)
    row_of = {s: i for i, s in enumerate(unique)}
    residues = sum(len(s) for s in unique)
    log.info(
        "evaluation: %d tasks, %d unique sequences, %d residues (crop %d)",
        len(tasks),
        len(unique),
        residues,
        crop,
    )

    features: list[FeatureSet] = []
    start = time.perf_counter()
    features.append(
        FeatureSet(
            "composition",
            "baseline",
            probes.composition_features(unique),
            time.perf_counter() - start,
            "20 amino-acid frequencies + log length",
        )
    )
    variants = ["fp32"] + (["int8"] if cfg.int8 and card.file("int8") is not None else [])
    for variant in variants:
        features.extend(student_features(cfg.model_dir, variant, unique, cfg.threads, cfg.batch_tokens))
    for spec in cfg.teachers:
        fs = teacher_features(spec, unique, cfg.cache_dir.expanduser(), progress=cfg.progress)
        log.info("%s: %s in %.1fs", fs.name, fs.note, fs.seconds)
        features.append(fs)

    outcomes = {name: probe_task(data, features, row_of, cfg) for name, data in tasks.items()}
    report: dict[str, Any] = {
        "model": {"folder": str(cfg.model_dir), "id": card.id, "version": card.version, "variants": variants},
        "settings": {
            "tasks": list(tasks),
            "max_train": cfg.max_train,
            "max_test": cfg.max_test,
            "crop": crop,
            "seed": cfg.seed,
            "cv_folds": cfg.folds,
            "bootstrap_resamples": cfg.resamples,
            "threads": cfg.threads,
            "teachers": [t.name for t in cfg.teachers],
            "teacher_cache_dir": str(cfg.cache_dir),
            "probe": "StandardScaler + LogisticRegression(lbfgs), C by stratified K-fold CV on train; "
            f"grid {list(probes.DEFAULT_C_GRID)}",
        },
        "unique_sequences": len(unique),
        "unique_residues": residues,
        "models": {
            fs.name: {
                "group": fs.group,
                "dim": int(fs.matrix.shape[1]),
                "seconds": round(fs.seconds, 3),
                "note": fs.note,
            }
            for fs in features
        },
        "tasks": {
            name: {
                "metric": o.data.spec.metrics[0],
                "metrics": list(o.data.spec.metrics),
                "label": o.data.spec.label,
                "excluded_labels": list(o.data.spec.exclude),
                "sizes": o.data.sizes,
                "classes": len(set(o.data.train.labels) | set(o.data.test.labels)),
                "results": {m: r.to_dict() for m, r in o.results.items()},
                "best_teacher": o.best_teacher,
                "retention": o.retention,
            }
            for name, o in outcomes.items()
        },
    }
    report["retention"] = {
        name: o.retention["student"]["point"] for name, o in outcomes.items() if "student" in o.retention
    }
    report["retention_int8"] = {
        name: o.retention["student:int8"]["point"]
        for name, o in outcomes.items()
        if "student:int8" in o.retention
    }
    if cfg.secondary_structure:
        report["secondary_structure"] = secondary_structure(cfg, crop)
    return report


def render_markdown(report: dict[str, Any], head: str) -> str:
    from protembed_distill.reports import fmt, table

    s = report["settings"]
    lines = [head]
    m = report["model"]
    lines += [
        f"Model `{m['id']}` {m['version']} ({m['folder']}), variants {', '.join(m['variants'])}. "
        f"Teachers: {', '.join(s['teachers']) or 'none'}.",
        "",
        f"Linear probes: {s['probe']}; {s['cv_folds']}-fold CV; test scores with 95% bootstrap intervals "
        f"({s['bootstrap_resamples']} resamples, seed {s['seed']}). Sequences cropped to {s['crop']} "
        f"residues for every model. Subsets: at most {s['max_train'] or 'all'} train / "
        f"{s['max_test'] or 'all'} test sequences per set (seeded, the same for every model); "
        f"{report['unique_sequences']} unique sequences, {report['unique_residues']} residues.",
        "",
        "## Retention (student score / best teacher score, paired bootstrap interval)",
        "",
    ]
    rows = []
    for name, t in report["tasks"].items():
        for model in ("student", "student:int8"):
            r = t["retention"].get(model)
            if r:
                rows.append(
                    [
                        name,
                        model,
                        t["metric"],
                        t["best_teacher"] or "—",
                        f"{fmt(r['point'])} [{fmt(r['low'])}, {fmt(r['high'])}]",
                    ]
                )
    lines += [
        table(["set", "model", "metric", "best teacher", "retention"], rows) if rows else "No teachers.",
        "",
    ]
    for name, t in report["tasks"].items():
        sz = t["sizes"]
        lines += [
            f"## {name} (`{t['label']}`, {t['classes']} classes; train {sz['train_used']} of "
            f"{sz['train_available']}, test {sz['test_used']} of {sz['test_available']}"
            + (f"; rows labelled {t['excluded_labels']} excluded" if t["excluded_labels"] else "")
            + ")",
            "",
        ]
        rows = []
        for model, r in t["results"].items():
            cells = [model]
            for metric in t["metrics"]:
                m = r["metrics"][metric]
                cells.append(f"{fmt(m['point'])} [{fmt(m['low'])}, {fmt(m['high'])}]")
            ret = t["retention"].get(model)
            cells.append(fmt(ret["point"]) if ret else "—")
            cells.append(
                f"{r['regularisation']:g}" + (" (grid edge)" if r["regularisation_at_grid_edge"] else "")
            )
            rows.append(cells)
        lines += [table(["model", *t["metrics"], "vs best teacher", "C"], rows), ""]
    ss = report.get("secondary_structure")
    if ss:
        lines += [
            "## Secondary structure (per residue)",
            "",
            f"{ss['metric']}; chains {ss['chains']}, residues {ss['residues']}. {ss['note']}.",
            "",
            table(
                ["features", "Q3"],
                [
                    [
                        n,
                        f"{fmt(r['metrics']['q3']['point'])} [{fmt(r['metrics']['q3']['low'])}, "
                        f"{fmt(r['metrics']['q3']['high'])}]",
                    ]
                    for n, r in ss["results"].items()
                ],
            ),
            "",
        ]
    lines += [
        "## Models",
        "",
        table(
            ["model", "dim", "embedding seconds", "source"],
            [[n, str(m["dim"]), fmt(m["seconds"], 1), m["note"]] for n, m in report["models"].items()],
        ),
        "",
    ]
    return "\n".join(lines)
