"""FASTA reading and per-record checks: every problem names the record number."""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from pathlib import Path

import pytest

from protembed.fasta import (
    CheckedRecord,
    FastaFormatError,
    RecordChecker,
    RecordProblem,
    count_records,
    parse_fasta,
    read_fasta,
)

TEXT = """\
; a comment line
>sp|P1|ONE first protein
MKTAY
IAKQR

>P2
mkv*
>
MKV
>P1 again
MKW
>P4 bad
MK-V
>P5 empty
>P6
MKUZOB
"""


def test_records_are_numbered_with_header_lines_and_ids() -> None:
    records = list(parse_fasta(TEXT.splitlines(keepends=True)))
    assert [(r.number, r.line, r.id) for r in records] == [
        (1, 2, "sp|P1|ONE"),
        (2, 6, "P2"),
        (3, 8, ""),
        (4, 10, "P1"),
        (5, 12, "P4"),
        (6, 14, "P5"),
        (7, 15, "P6"),
    ]
    assert records[0].header == "sp|P1|ONE first protein"
    assert records[0].sequence == "MKTAYIAKQR"
    assert records[5].sequence == ""


def test_checker_reports_each_problem_with_its_record_and_keeps_the_rest() -> None:
    checker = RecordChecker()
    results = [checker.check(r) for r in parse_fasta(TEXT.splitlines())]
    good = [r for r in results if isinstance(r, CheckedRecord)]
    bad = [str(r) for r in results if isinstance(r, RecordProblem)]
    assert [(c.record.id, c.sequence) for c in good] == [
        ("sp|P1|ONE", "MKTAYIAKQR"),
        ("P2", "MKV"),
        ("P1", "MKW"),  # 'P1' differs from 'sp|P1|ONE': not a duplicate
        ("P6", "MKXXXX"),
    ]
    assert bad == [
        "record 3 (line 8): empty id (the header has no text after '>')",
        "record 5 (line 12, id 'P4'): invalid character '-' at position 3 (gaps are not residues)",
        "record 6 (line 14, id 'P5'): sequence is empty",
    ]


def test_duplicate_ids_name_the_first_record() -> None:
    checker = RecordChecker()
    results = [checker.check(r) for r in parse_fasta([">a\n", "MK\n", ">b\n", "MK\n", ">a x\n", "MW\n"])]
    assert str(results[2]) == "record 3 (line 5, id 'a'): duplicate id, first seen at record 1"


def test_sequence_before_any_header_is_not_fasta() -> None:
    with pytest.raises(FastaFormatError, match="line 2: sequence data before the first '>'"):
        list(parse_fasta(["\n", "MKV\n", ">a\n"]))


def test_files_gzip_and_record_counting(tmp_path: Path) -> None:
    plain = tmp_path / "x.fasta"
    plain.write_text(TEXT)
    packed = tmp_path / "x.fasta.gz"
    with gzip.open(packed, "wt") as handle:
        handle.write(TEXT)
    assert [r.id for r in read_fasta(plain)] == [r.id for r in read_fasta(packed)]
    assert count_records(plain) == 7
    assert count_records(packed) is None
    first_is_header = tmp_path / "y.fasta"
    first_is_header.write_text(">a\nMK\n>b\nMK")
    assert count_records(first_is_header) == 2


def test_reading_is_lazy() -> None:
    def lines() -> Iterator[str]:
        yield from [">a\n", "MKV\n", ">b\n"]
        raise AssertionError("read past what the first record needs")

    assert next(parse_fasta(lines())).sequence == "MKV"
