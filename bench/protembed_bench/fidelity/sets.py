"""The evaluation rows every model is measured on, and the order their teacher vectors are computed in.

One length bound for every model (:data:`LENGTH_BOUND`): a protein is cut to its first ``bound``
residues for the teachers and for the student alike; the student sees that whole stretch, as the server
serves it (overlapping windows past its 512-residue context, ``protembed.windows``). No row is dropped.

Teacher vectors cost ~2 CPU-hours per million residues (UniRep-1900 on one core), so
:func:`teacher_order` puts the rows in an order whose every prefix is a stratified sample of each set
and split: where the teachers cannot finish the full sets, the cached prefix is the documented subset.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import sys
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from protembed.errors import InvalidSequenceError
from protembed.tokenizer import normalize
from protembed_bench.fidelity.residues import BINDING, SECONDARY_STRUCTURE, ResidueTask

__all__ = [
    "LENGTH_BOUND",
    "PROTEIN_TASKS",
    "Chains",
    "ProteinSet",
    "load_binding_chains",
    "load_chains",
    "load_protein_sets",
    "residue_chains",
    "sequence_key",
    "teacher_order",
    "unknown_sets",
]

LENGTH_BOUND = 1000  # residues; the bound ("sequences up to 1,000 residues")
# FLIP's bind set, `from_publication` split (bindEmbed21's train and test proteins), as one TSV: id,
# sequence, binding (one 3-bit ligand code per residue), set, validation. See data/README.md.
BINDING_FILE = Path(__file__).parent / "data" / "flip_bind.tsv.gz"

# set name -> (folder, label column, rows labelled with these values are left out)
PROTEIN_TASKS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "deeploc": ("deeploc", "location", ()),
    "deeploc_membrane": ("deeploc", "membrane", ("U",)),
    "deepsol": ("deepsol", "soluble", ()),
    "capsid": ("capsid", "capsid", ()),
}

csv.field_size_limit(sys.maxsize)


def sequence_key(sequence: str) -> str:
    """sha256 hex of the normalized, bounded sequence: the teacher-cache key (as distillation's)."""
    return hashlib.sha256(sequence.encode("ascii")).hexdigest()


@dataclass(frozen=True)
class ProteinSet:
    """One per-protein task: bounded sequences and labels of its train and test split."""

    name: str
    folder: str
    label: str
    train: list[str]
    train_y: list[str]
    test: list[str]
    test_y: list[str]


@dataclass(frozen=True)
class Chains:
    """Labelled chains of a per-residue task: bounded sequences and one label letter per residue."""

    train: list[str]
    train_y: list[str]
    test: list[str]
    test_y: list[str]


def _read_rows(path: Path, columns: Sequence[str]) -> list[dict[str, str]]:
    if not path.is_file():
        raise FileNotFoundError(f"evaluation file {path} does not exist")
    raw = path.read_bytes()
    if path.suffix == ".gz":
        raw = gzip.decompress(raw)
    with io.StringIO(raw.decode("utf-8"), newline="") as fh:
        reader = csv.DictReader(fh, delimiter="\t")
        missing = [c for c in ("sequence", *columns) if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: no column(s) {', '.join(missing)}")
        rows = []
        for rowno, row in enumerate(reader, 2):
            try:
                row["sequence"] = normalize(row["sequence"], rowno)
            except InvalidSequenceError as err:
                raise ValueError(f"{path}:{rowno}: {err}") from None
            rows.append(row)
        return rows


def load_protein_sets(data_dir: Path, bound: int = LENGTH_BOUND) -> dict[str, ProteinSet]:
    """Every row of every per-protein task (full sets), sequences cut to ``bound`` residues."""
    out: dict[str, ProteinSet] = {}
    for name, (folder, label, excluded) in PROTEIN_TASKS.items():
        parts: dict[str, tuple[list[str], list[str]]] = {}
        for split in ("train", "test"):
            rows = _read_rows(data_dir / "eval" / folder / f"{split}.tsv", [label])
            kept = [r for r in rows if r[label] not in excluded]
            parts[split] = ([r["sequence"][:bound] for r in kept], [r[label] for r in kept])
        out[name] = ProteinSet(name, folder, label, *parts["train"], *parts["test"])
    return out


def load_chains(data_dir: Path, train_chains: int, seed: int, bound: int = LENGTH_BOUND) -> Chains:
    """All test chains and ``train_chains`` seeded training chains of the secondary-structure set.

    The test chains are held out of distillation (its data filter removes corpus sequences at >= 50%
    identity to them); the training chains are corpus sequences, used only to fit the probe.
    """
    rows = _labelled_rows(data_dir / "eval" / "secondary_structure" / "sampled.tsv", "dssp3")
    train = sorted((r for r in rows if r["set"] == "train"), key=lambda r: _rank(seed, r["sequence"]))
    return _chains(train[:train_chains], [r for r in rows if r["set"] == "test"], "dssp3", bound)


def load_binding_chains(path: Path = BINDING_FILE, bound: int = LENGTH_BOUND) -> Chains:
    """Every chain of the binding set: its train rows (validation ones included: the probe picks its
    strength by cross-validation) and its test rows, each cut to ``bound`` residues."""
    rows = _labelled_rows(path, "binding")
    train, test = ([r for r in rows if r["set"] == split] for split in ("train", "test"))
    return _chains(train, test, "binding", bound)


def _labelled_rows(path: Path, label: str) -> list[dict[str, str]]:
    """Rows of a per-residue set, each with one ``label`` letter per residue (checked)."""
    rows = _read_rows(path, [label, "set"])
    for r in rows:
        if len(r[label]) != len(r["sequence"]):
            raise ValueError(
                f"{path}: chain {r.get('id', '?')}: {len(r[label])} labels for {len(r['sequence'])} residues"
            )
    return rows


def _chains(train: list[dict[str, str]], test: list[dict[str, str]], label: str, bound: int) -> Chains:
    return Chains(
        [r["sequence"][:bound] for r in train],
        [r[label][:bound] for r in train],
        [r["sequence"][:bound] for r in test],
        [r[label][:bound] for r in test],
    )


def residue_chains(
    data_dir: Path, train_chains: int, seed: int, binding_file: Path = BINDING_FILE
) -> dict[ResidueTask, Chains]:
    """Every per-residue task's chains: secondary structure (``train_chains`` seeded training chains,
    every test chain) and ligand binding (every chain)."""
    return {
        SECONDARY_STRUCTURE: load_chains(data_dir, train_chains, seed),
        BINDING: load_binding_chains(binding_file),
    }


def _rank(seed: int, text: str) -> str:
    return hashlib.sha256(f"{seed}:{text}".encode()).hexdigest()


def _stratified(seqs: Sequence[str], labels: Sequence[str], seed: int) -> list[int]:
    """Row indices in an order whose every prefix holds each label in about its share of the split."""
    by_label: dict[str, list[int]] = defaultdict(list)
    for i in sorted(range(len(seqs)), key=lambda i: _rank(seed, f"{i}:{seqs[i]}")):
        by_label[labels[i]].append(i)
    # Row j of a label with n rows sits at (j + 0.5) / n of the way through: interleaving by that
    # fraction spreads every label evenly over the order.
    placed = [((j + 0.5) / len(idx), lab, i) for lab, idx in by_label.items() for j, i in enumerate(idx)]
    return [i for _, _, i in sorted(placed)]


def unknown_sets(sets: dict[str, ProteinSet], names: Sequence[str] | None) -> str:
    """The error for a ``--sets`` list naming sets that are not loaded ("" when all are known)."""
    unknown = sorted(set(names or ()) - set(sets))
    return f"--sets: unknown set(s) {', '.join(unknown)}; known: {', '.join(sets)}" if unknown else ""


def teacher_order(sets: dict[str, ProteinSet], seed: int = 0) -> list[tuple[str, str, int]]:
    """(set, split, row) for the unique sequences of all sets: round-robin over the (folder, split)
    streams, each stream stratified by its first task's label, so a prefix is a stratified subset of
    every split (deeploc's two tasks share one stream: the same sequences)."""
    streams: list[list[tuple[str, str, int]]] = []
    seen_folders: set[str] = set()
    for name, s in sets.items():
        if s.folder in seen_folders:
            continue
        seen_folders.add(s.folder)
        for split, seqs, ys in (("train", s.train, s.train_y), ("test", s.test, s.test_y)):
            streams.append([(name, split, i) for i in _stratified(seqs, ys, seed)])
    out: list[tuple[str, str, int]] = []
    for k in range(max(len(s) for s in streams)):
        out.extend(s[k] for s in streams if k < len(s))
    return out
