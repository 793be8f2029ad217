"""``protembed merge OUT SHARD...``: join the outputs of ``protembed embed --shard I/N`` runs into one file.

OUT's suffix picks its format (.h5/.hdf5, .parquet, .npz), whatever the shards' formats. The merge is
refused, before anything is written, when a shard is unfinished (its OUT.parts/ checkpoints are still
there), when the shards hold vectors of different models, variants or outputs, or when an id is in two
shards; each error names the file and, for a duplicate, the id. OUT is replaced in one step.

Exit status: 0 merged; 1 refused or failed (the reason on stderr); 2 bad command-line arguments.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from protembed.commands import run_alone

EXIT_OK, EXIT_FAILED = 0, 1


def add_parser(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "merge",
        help="merge the outputs of sharded `protembed embed --shard I/N` runs into one file",
        description=(__doc__ or "").split("\n\n", 1)[1] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("out", metavar="OUT", help="merged file: .h5/.hdf5, .parquet or .npz")
    parser.add_argument("shards", metavar="SHARD", nargs="+", help="outputs of protembed embed --shard")
    parser.set_defaults(func=handler)


def handler(args: argparse.Namespace) -> int:
    from protembed.bulk import BulkOutputError
    from protembed.merge import merge_shards

    try:
        stats = merge_shards(args.out, args.shards)
    except BulkOutputError as err:
        print(f"protembed merge: {err}", file=sys.stderr)
        return EXIT_FAILED
    print(
        f"protembed merge: {stats.records} records from {stats.shards} shards into {args.out} "
        f"({stats.meta.describe()})",
        file=sys.stderr,
    )
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m protembed.commands.merge`` (the same as ``protembed merge``)."""
    return run_alone("merge", add_parser, argv)


if __name__ == "__main__":
    raise SystemExit(main())
