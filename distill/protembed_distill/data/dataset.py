"""Training data: read the corpus, drop what resembles the evaluation sets, pick a subset, split it.

Order of operations and why:
1. Normalize every corpus sequence with the shared tokenizer (one alphabet everywhere).
2. MMseqs2 ``easy-search`` of the corpus against all evaluation sequences; a corpus sequence with a hit
   at >= ``identity_threshold`` identity covering >= ``coverage`` of either sequence is removed
   (either side: a corpus protein that contains most of an eval protein leaks it, and so does a
   fragment that is mostly an eval protein). This is the slow step, so its result is cached under the
   run dir keyed by the hashes of the inputs and parameters.
3. Deterministic subset (order by a seeded hash, so growing ``max_sequences`` keeps the smaller subset)
   and a hash-based train/validation split.
4. Crop to ``max_length`` (N-terminal) once, here, so teachers and student see the very same residues.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from protembed.errors import InvalidSequenceError
from protembed.fasta import FastaFormatError, read_fasta
from protembed.tokenizer import normalize
from protembed_distill.config import DataConfig, EvalSetConfig

__all__ = [
    "CorpusRecord",
    "DataError",
    "Dataset",
    "Item",
    "find_eval_overlap",
    "prepare_dataset",
    "read_corpus",
    "read_eval_sequences",
    "sequence_key",
]

DEDUPE_FORMAT = 1  # bump when the overlap rule changes, so old caches are not reused


class DataError(RuntimeError):
    """Unusable input data or a missing tool; the message names the file/record and the problem."""


@dataclass(frozen=True)
class CorpusRecord:
    source: str
    id: str
    sequence: str  # normalized, not cropped


@dataclass(frozen=True)
class Item:
    """One training example: the cropped sequence is what teachers and student both see."""

    id: str  # "source|id"
    source: str
    sequence: str
    key: str  # sequence_key(sequence)


@dataclass(frozen=True)
class Dataset:
    train: list[Item]
    val: list[Item]
    stats: dict[str, object]
    ranked: list[Item]  # train + val in subset-rank order: embed in this order so a partial cache is a prefix


csv.field_size_limit(sys.maxsize)


def sequence_key(sequence: str) -> str:
    """sha256 hex of the normalized (and cropped) sequence: the teacher-cache key."""
    return hashlib.sha256(sequence.encode("ascii")).hexdigest()


def read_corpus(path: Path) -> list[CorpusRecord]:
    """The corpus's ``>source|id`` records (a header without ``|`` gets source ``unknown``), normalized
    by the shared tokenizer; read with the one FASTA reader, :func:`protembed.fasta.read_fasta`."""
    if not path.is_file():
        raise DataError(f"FASTA file {path} does not exist")
    records: list[CorpusRecord] = []
    try:
        for rec in read_fasta(path):
            source, _, ident = rec.header.partition("|")
            if not ident:
                source, ident = "unknown", rec.header
            try:
                seq = normalize(rec.sequence, len(records))
            except InvalidSequenceError as err:
                raise DataError(f"{path}: record {rec.header!r}: {err}") from None
            records.append(CorpusRecord(source, ident, seq))
    except FastaFormatError as err:
        raise DataError(f"{path}: {err}") from None
    return records


def _eval_files(spec: EvalSetConfig) -> list[Path]:
    if spec.path.is_dir():
        files = sorted(spec.path.glob("*.tsv"))
        if not files:
            raise DataError(f"eval folder {spec.path} has no *.tsv files")
        return files
    if spec.path.is_file():
        return [spec.path]
    raise DataError(f"eval set {spec.path} does not exist")


def read_eval_sequences(specs: Sequence[EvalSetConfig]) -> list[tuple[str, str]]:
    """(label, normalized sequence) for every selected row of every eval TSV; label = file path."""
    out: list[tuple[str, str]] = []
    for spec in specs:
        for file in _eval_files(spec):
            # gzipped TSVs too (the ligand-binding chains ship as flip_bind.tsv.gz)
            opener = gzip.open if file.suffix == ".gz" else open
            with opener(file, "rt", newline="", encoding="utf-8") as fh:
                reader = csv.DictReader(fh, delimiter="\t")
                cols = reader.fieldnames or []
                if "sequence" not in cols:
                    raise DataError(f"{file}: no 'sequence' column (columns: {', '.join(cols)})")
                missing = [k for k in spec.where if k not in cols]
                if missing:
                    raise DataError(f"{file}: 'where' names unknown column(s) {', '.join(missing)}")
                for rowno, row in enumerate(reader, 2):
                    if any(row[k] != v for k, v in spec.where.items()):
                        continue
                    try:
                        out.append((str(file), normalize(row["sequence"], rowno)))
                    except InvalidSequenceError as err:
                        raise DataError(f"{file}:{rowno}: {err}") from None
    return out


def _write_fasta(path: Path, seqs: Iterable[str]) -> None:
    with path.open("w", encoding="ascii") as fh:
        for i, s in enumerate(seqs):
            fh.write(f">{i}\n{s}\n")


def mmseqs_binary() -> str:
    exe = shutil.which("mmseqs")
    if exe is None:
        raise DataError("mmseqs (MMseqs2) is not installed: `apt-get install -y mmseqs2`")
    return exe


def find_eval_overlap(
    corpus: Sequence[str],
    eval_seqs: Sequence[str],
    *,
    identity: float,
    coverage: float,
    threads: int = 1,
    workdir: Path | None = None,
) -> dict[int, tuple[int, float]]:
    """Corpus indices with an eval hit -> (eval index, identity) of their best qualifying hit."""
    if not corpus or not eval_seqs:
        return {}
    exe = mmseqs_binary()
    with tempfile.TemporaryDirectory(dir=workdir, prefix="mmseqs-") as tmp:
        t = Path(tmp)
        _write_fasta(t / "query.fasta", corpus)
        _write_fasta(t / "target.fasta", eval_seqs)
        cmd = [
            exe,
            "easy-search",
            str(t / "query.fasta"),
            str(t / "target.fasta"),
            str(t / "hits.m8"),
            str(t / "work"),
            "--min-seq-id",
            str(identity),
            "-c",
            "0",
            "--threads",
            str(max(1, threads)),
            "--format-output",
            "query,target,fident,qcov,tcov",
            "-v",
            "1",
        ]
        res = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if res.returncode != 0:
            raise DataError(
                f"mmseqs easy-search failed (exit {res.returncode}): {res.stderr.strip()[-2000:]}"
            )
        hits: dict[int, tuple[int, float]] = {}
        for line in (t / "hits.m8").read_text().splitlines():
            q, tgt, fident, qcov, tcov = line.split("\t")
            ident = float(fident)
            if ident >= identity and max(float(qcov), float(tcov)) >= coverage:
                qi = int(q)
                if qi not in hits or ident > hits[qi][1]:
                    hits[qi] = (int(tgt), ident)
        return hits


def _file_sha(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _dedupe_key(cfg: DataConfig) -> str:
    parts: dict[str, object] = {
        "format": DEDUPE_FORMAT,
        "corpus": _file_sha(cfg.corpus),
        "eval": [{"file": _file_sha(f), "where": spec.where} for spec in cfg.eval for f in _eval_files(spec)],
        "identity": cfg.identity_threshold,
        "coverage": cfg.coverage,
        "min_length": cfg.min_length,
        "sources": sorted(cfg.sources),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def _kept_records(
    cfg: DataConfig, run_dir: Path, threads: int, log: bool, shared_cache: Path | None
) -> tuple[list[CorpusRecord], dict]:
    """Corpus records that survive length/source filters and the eval-overlap filter (cached)."""
    records = read_corpus(cfg.corpus)
    if not records:
        raise DataError(f"{cfg.corpus}: no sequences")
    if cfg.sources:
        unknown = sorted(set(cfg.sources) - {r.source for r in records})
        if unknown:
            raise DataError(f"data.sources: {', '.join(unknown)} not found in {cfg.corpus}")
        records = [r for r in records if r.source in cfg.sources]
    records = [r for r in records if len(r.sequence) >= cfg.min_length]

    cache_dir = run_dir / "data"
    cache_file = cache_dir / f"dedupe-{_dedupe_key(cfg)}.json"
    shared_file = shared_cache / cache_file.name if shared_cache is not None else None
    if not cache_file.is_file() and shared_file is not None and shared_file.is_file():
        cache_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shared_file, cache_file)  # same inputs, same answer: reuse another run's search
    if cache_file.is_file():
        cached = json.loads(cache_file.read_text())
        removed_ids = set(cached["removed_ids"])
        if log:
            print(f"data: eval-overlap result reused from {cache_file}", file=sys.stderr)
    else:
        eval_rows = read_eval_sequences(cfg.eval)
        if log:
            print(
                f"data: mmseqs search of {len(records)} corpus vs {len(eval_rows)} eval sequences "
                f"(identity>={cfg.identity_threshold}, coverage>={cfg.coverage})...",
                file=sys.stderr,
            )
        cache_dir.mkdir(parents=True, exist_ok=True)
        hits = find_eval_overlap(
            [r.sequence for r in records],
            [s for _, s in eval_rows],
            identity=cfg.identity_threshold,
            coverage=cfg.coverage,
            threads=threads,
            workdir=cache_dir,
        )
        removed_ids = {f"{records[i].source}|{records[i].id}" for i in hits}
        by_eval = Counter(eval_rows[t][0] for t, _ in hits.values())
        cached = {
            "removed_ids": sorted(removed_ids),
            "eval_sequences": len(eval_rows),
            "removed_by_best_eval_file": dict(sorted(by_eval.items())),
        }
        tmp = cache_file.with_suffix(".part")
        tmp.write_text(json.dumps(cached, indent=1))
        tmp.replace(cache_file)
        if shared_file is not None:
            shared_file.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(cache_file, shared_file)
    kept = [r for r in records if f"{r.source}|{r.id}" not in removed_ids]
    removed_by_source = Counter(r.source for r in records if f"{r.source}|{r.id}" in removed_ids)
    stats = {
        "corpus": str(cfg.corpus),
        "corpus_sequences": len(records),
        "eval_sequences": cached["eval_sequences"],
        "removed_by_eval_overlap": len(removed_ids),
        "removed_by_source": dict(sorted(removed_by_source.items())),
        "removed_by_best_eval_file": cached["removed_by_best_eval_file"],
        "identity_threshold": cfg.identity_threshold,
        "coverage": cfg.coverage,
        "dedupe_cache": str(cache_file),
    }
    return kept, stats


def _rank(seed: int, text: str) -> str:
    return hashlib.sha256(f"{seed}:{text}".encode()).hexdigest()


def prepare_dataset(
    cfg: DataConfig, run_dir: Path, threads: int = 1, log: bool = True, shared_cache: Path | None = None
) -> Dataset:
    """Filtered, subset, cropped and split data; deterministic for a given config. The overlap search
    result is cached in ``run_dir/data`` and, if given, in ``shared_cache`` for other run dirs."""
    kept, stats = _kept_records(cfg, run_dir, threads, log, shared_cache)
    kept.sort(key=lambda r: _rank(cfg.seed, r.sequence))
    if cfg.max_sequences:
        kept = kept[: cfg.max_sequences]
    items: list[Item] = []
    seen: set[str] = set()
    for r in kept:
        seq = r.sequence[: cfg.max_length]
        key = sequence_key(seq)
        if key in seen:  # two records identical after cropping: one example, not two
            continue
        seen.add(key)
        items.append(Item(f"{r.source}|{r.id}", r.source, seq, key))
    # Validation membership by a second hash, so it does not depend on max_sequences.
    cut = int(cfg.validation_fraction * 2**32)
    val = [it for it in items if int(_rank(cfg.seed + 1, it.key)[:8], 16) < cut]
    train = [it for it in items if int(_rank(cfg.seed + 1, it.key)[:8], 16) >= cut]
    if not train or not val:
        raise DataError(
            f"data: split left {len(train)} train / {len(val)} validation sequences; "
            "raise data.max_sequences or data.validation_fraction"
        )
    stats.update(
        {
            "sequences": len(items),
            "train_sequences": len(train),
            "val_sequences": len(val),
            "train_residues": sum(len(i.sequence) for i in train),
            "val_residues": sum(len(i.sequence) for i in val),
            "max_length": cfg.max_length,
            "cropped": sum(1 for r in kept if len(r.sequence) > cfg.max_length),
            "train_by_source": dict(sorted(Counter(i.source for i in train).items())),
        }
    )
    return Dataset(train, val, stats, items)


def dataset_summary(ds: Dataset) -> str:
    return json.dumps(ds.stats, indent=1)


def items_to_jsonable(items: Sequence[Item]) -> list[dict[str, str]]:
    return [asdict(i) for i in items]
