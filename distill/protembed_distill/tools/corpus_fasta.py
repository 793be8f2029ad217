"""The corpus reader the ``make_*_reference.py`` fixture generators share.

Standard library only, and imported as a sibling module (``from corpus_fasta import read_fasta``):
the generators run as scripts, some in a throwaway environment where neither the project nor its
dependencies are installed. They keep their own reader rather than ``protembed_distill.data``'s so
that the committed fixtures' sequence picks stay reproducible.
"""

from __future__ import annotations

from pathlib import Path


def read_fasta(path: Path) -> list[tuple[str, str]]:
    """``(name, sequence)`` for every record, in file order; sequence lines joined, blanks skipped."""
    records: list[tuple[str, str]] = []
    name: str | None = None
    chunks: list[str] = []
    for line in path.read_text().splitlines():
        if line.startswith(">"):
            if name is not None:
                records.append((name, "".join(chunks)))
            name, chunks = line[1:].strip(), []
        elif line.strip():
            chunks.append(line.strip())
    if name is not None:
        records.append((name, "".join(chunks)))
    return records
