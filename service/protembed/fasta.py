"""Lazy FASTA reading and per-record checks for bulk embedding.

Records are read one at a time (a million-sequence file never sits in memory) and numbered from 1 in
file order, so every problem can be reported as "record 1234 (line 5678, id 'P12345'): ..." — the
number a user needs to find the record with ``sed``/``awk`` or an editor.

The id of a record is the first whitespace-separated word of its header, as in Biopython, the ESM
extract script and bio_embeddings; the whole header is kept too (bio_embeddings stores it as the
``original_id`` attribute).
"""

from __future__ import annotations

import gzip
import io
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from protembed import tokenizer
from protembed.errors import InvalidSequenceError


class FastaFormatError(ValueError):
    """The file is not FASTA at all (e.g. sequence lines before the first header)."""


@dataclass(frozen=True)
class FastaRecord:
    number: int  # 1-based position of the record in the file
    line: int  # 1-based line number of its header
    id: str  # first word of the header ('' when the header is blank)
    header: str  # the header line without '>' and surrounding whitespace
    sequence: str  # the sequence lines joined, as written (not yet normalized)

    def where(self) -> str:
        """How problems name this record."""
        who = f"record {self.number} (line {self.line}"
        return who + (f", id {self.id!r})" if self.id else ")")


@dataclass(frozen=True)
class RecordProblem:
    """A record that cannot be embedded; the rest of the file goes on without it."""

    record: FastaRecord
    problem: str

    def __str__(self) -> str:
        return f"{self.record.where()}: {self.problem}"


def open_text(path: str | Path) -> IO[str]:
    """Open a FASTA file for reading; ``.gz`` files are decompressed on the fly, ``-`` is stdin."""
    if str(path) == "-":
        import sys

        return io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8", errors="replace")
    p = Path(path)
    if p.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(p, "rb"), encoding="utf-8", errors="replace")
    # errors="replace": a stray non-UTF-8 byte becomes U+FFFD, which the tokenizer then reports with the
    # record number, instead of a UnicodeDecodeError that names no record.
    return open(p, encoding="utf-8", errors="replace")


def parse_fasta(lines: Iterable[str]) -> Iterator[FastaRecord]:
    """Yield the records of FASTA text lazily. Blank lines and ';' comment lines are ignored."""
    number = 0
    header: str | None = None
    header_line = 0
    chunks: list[str] = []
    for line_no, raw in enumerate(lines, start=1):
        line = raw.strip(tokenizer.WHITESPACE)  # the tokenizer's rule: other spaces are reported, not lost
        if not line or line.startswith(";"):
            continue
        if line.startswith(">"):
            if header is not None:
                yield FastaRecord(number, header_line, _id_of(header), header, "".join(chunks))
            number += 1
            header, header_line, chunks = line[1:].strip(), line_no, []
        elif header is None:
            raise FastaFormatError(
                f"line {line_no}: sequence data before the first '>' header; is this a FASTA file?"
            )
        else:
            chunks.append(line)
    if header is not None:
        yield FastaRecord(number, header_line, _id_of(header), header, "".join(chunks))


def read_fasta(path: str | Path) -> Iterator[FastaRecord]:
    """Yield the records of a FASTA file (optionally gzipped) lazily; the file closes when done."""
    with open_text(path) as handle:
        yield from parse_fasta(handle)


def count_records(path: str | Path) -> int | None:
    """Number of records of a plain FASTA file (for a progress bar), scanning bytes in bounded memory;
    None for stdin and gzipped files, where a second pass is not possible or not cheap."""
    if str(path) == "-" or Path(path).suffix == ".gz":
        return None
    count = 0
    previous = b"\n"
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            count += block.count(b"\n>") + (1 if previous == b"\n" and block.startswith(b">") else 0)
            previous = block[-1:]
    return count


def _id_of(header: str) -> str:
    parts = header.split(maxsplit=1)
    return parts[0] if parts else ""


@dataclass(frozen=True)
class CheckedRecord:
    record: FastaRecord
    sequence: str  # normalized by protembed.tokenizer


class RecordChecker:
    """Checks records in file order: empty ids, duplicate ids and bad residues.

    Remembers every id seen (ids only, not sequences) to find duplicates; the first occurrence of an id
    wins and later ones are problems that name the record where it first appeared.
    """

    def __init__(self) -> None:
        self._first_seen: dict[str, int] = {}

    def check(self, record: FastaRecord) -> CheckedRecord | RecordProblem:
        if not record.id:
            return RecordProblem(record, "empty id (the header has no text after '>')")
        first = self._first_seen.get(record.id)
        if first is not None:
            return RecordProblem(record, f"duplicate id, first seen at record {first}")
        self._first_seen[record.id] = record.number
        try:
            sequence = tokenizer.normalize(record.sequence)
        except InvalidSequenceError as err:
            return RecordProblem(record, err.problem)
        return CheckedRecord(record, sequence)
