"""``protembed split INPUT.fasta --shards N -o DIR``: one pass that writes the N parts of a FASTA file.

Part I (``DIR/shard-I-of-N.fasta``) holds exactly the records ``protembed embed --shard I/N`` would embed
from the whole file, so many shard jobs each read their own part instead of scanning the whole file:
worth it when a file of tens of millions of records meets fast (GPU) shard jobs. Embed a part with
``--shard I/N`` as well (it keeps every record of the part, and refuses none). Record numbers in problem
reports then count within the part.

Exit status: 0 written; 1 failed (the reason on stderr); 2 bad command-line arguments.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

from protembed.commands import run_alone

EXIT_OK, EXIT_FAILED = 0, 1


def add_parser(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "split",
        help="write the N parts of a FASTA file that `protembed embed --shard I/N` would embed",
        description=(__doc__ or "").split("\n\n", 1)[1] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("input", metavar="INPUT", help="FASTA file (.gz accepted)")
    parser.add_argument("--shards", type=int, required=True, metavar="N", help="number of parts")
    parser.add_argument(
        "-o", "--out-dir", required=True, metavar="DIR", help="folder of the parts (shard-I-of-N.fasta)"
    )
    parser.set_defaults(func=handler)


def handler(args: argparse.Namespace) -> int:
    from protembed.fasta import FastaFormatError
    from protembed.shards import split_fasta

    if args.shards < 1:
        print("protembed split: --shards must be at least 1", file=sys.stderr)
        return EXIT_FAILED
    if not os.path.isfile(args.input):
        print(f"protembed split: {args.input}: no such file", file=sys.stderr)
        return EXIT_FAILED
    try:
        paths = split_fasta(args.input, args.shards, args.out_dir)
    except (FastaFormatError, OSError) as err:
        print(f"protembed split: {args.input}: {err}", file=sys.stderr)
        return EXIT_FAILED
    print(f"protembed split: {len(paths)} parts in {args.out_dir}", file=sys.stderr)
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m protembed.commands.split`` (the same as ``protembed split``)."""
    return run_alone("split", add_parser, argv)


if __name__ == "__main__":
    raise SystemExit(main())
