"""``protembed embed INPUT.fasta -o OUT.h5``: bulk embedding of a FASTA file.

Vectors come from the model in this process (the same engine the server runs) or, with --server, from a
running server over REST (http://) or gRPC (grpc://). The FASTA file is read lazily and the output is
written incrementally in crash-safe checkpoints (OUT.parts/, merged into OUT at the end), so memory stays
bounded and an interrupted run resumes where it stopped: ids already in the output are skipped.

Bad records (an empty or duplicate id, characters that are not residues, a sequence the model refuses,
e.g. too long) are reported on stderr with their record number. With --on-error skip (default) the rest
of the file is embedded and the exit status is 3 when anything was skipped; with --on-error fail the run
stops at the first bad record with exit status 1 (what was embedded before it is kept, so a rerun after
fixing the file resumes).

Sequences longer than the model's window follow --long-sequences (locally the engine's setting, through a
server sent with every request): chunk (overlapping windows pooled into one vector), truncate (the first
max_length residues) or reject (reported and skipped). HDF5 and Parquet outputs keep, per record, the
number of windows its vector was pooled from and whether it was truncated.

With --shard I/N only the records of shard I (0 .. N-1) are embedded: a record's shard is a hash of its
id, so every machine given the same FASTA file and N agrees on the split, records added later never move
the others, and each shard resumes on its own. ``protembed merge OUT SHARD...`` joins the shards' outputs
into one file. A finished run always leaves OUT, even when its shard held no records.

Exit status: 0 every record is in the output; 3 finished, but some records were skipped (listed on
stderr); 1 stopped early (an error, or --on-error fail); 2 bad command-line arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from protembed.commands import run_alone

EXIT_OK, EXIT_FAILED, EXIT_SKIPPED = 0, 1, 3  # 2 is argparse's usage error

# Settings of the in-process engine that make sense for a bulk run (the rest are server-only).
_LOCAL_SETTINGS = [
    "model",
    "model_variant",
    "providers",
    "intra_op_threads",
    "inter_op_threads",
    "max_batch_tokens",
    "max_batch_size",
    "max_wait_ms",
    "long_sequences",
    "chunk_overlap",
]


def add_parser(subparsers: Any) -> None:
    from protembed.settings import add_settings_arguments

    parser: argparse.ArgumentParser = subparsers.add_parser(
        "embed",
        help="embed a FASTA file into HDF5 / Parquet / NPZ (locally or via a server)",
        description=(__doc__ or "").split("\n\n", 1)[1] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_arguments(parser)
    add_settings_arguments(parser, fields=_LOCAL_SETTINGS)
    parser.set_defaults(func=handler)


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", metavar="INPUT", help="FASTA file (.gz accepted; '-' reads stdin)")
    parser.add_argument(
        "-o",
        "--out",
        required=True,
        metavar="OUT",
        help="output file: .h5/.hdf5 (bio_embeddings layout), .parquet or .npz; an existing file is "
        "resumed (its ids are skipped)",
    )
    parser.add_argument(
        "--server",
        metavar="URL",
        help="use a running server (http://host:8000 or grpc://host:50051) instead of the local model",
    )
    parser.add_argument(
        "--api-key",
        default=os.environ.get("PROTEMBED_API_KEY"),
        help="API key for --server (default: $PROTEMBED_API_KEY)",
    )
    parser.add_argument(
        "--output-name",
        metavar="NAME",
        help="which model output (embedding space) to write: 'student' or a teacher the model card lists "
        "(default: the model's default output)",
    )
    parser.add_argument("--per-residue", action="store_true", help="per-residue [length, dim] vectors")
    parser.add_argument("--normalize", action="store_true", help="L2-normalize each vector")
    parser.add_argument(
        "--on-error",
        choices=("skip", "fail"),
        default="skip",
        help="bad records: report and skip them (exit status 3 at the end), or stop at the first "
        "(exit status 1) [default: skip]",
    )
    parser.add_argument("--batch-items", type=int, default=64, help="sequences per request [default: 64]")
    parser.add_argument(
        "--batch-residues", type=int, default=16384, help="residues per request at most [default: 16384]"
    )
    parser.add_argument("--concurrency", type=int, default=4, help="requests in flight at once [default: 4]")
    parser.add_argument(
        "--checkpoint-every",
        type=int,
        default=1000,
        metavar="N",
        help="write a crash-safe checkpoint every N records (also every 30 s and every 64 MiB) "
        "[default: 1000]",
    )
    parser.add_argument(
        "--shard",
        metavar="I/N",
        type=_shard_arg,
        help="embed only shard I of N (I from 0 to N-1), chosen by a hash of each record id; "
        "e.g. --shard $JOB_COMPLETION_INDEX/8 in a Kubernetes Indexed Job",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _shard_arg(spec: str) -> Any:
    from protembed.shards import Shard

    try:
        return Shard.parse(spec)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from err


# --- where vectors come from -------------------------------------------------------------------------


@dataclass(frozen=True)
class VectorOptions:
    """What every batch asks for, the same from the local engine and from a server."""

    output: str | None
    per_residue: bool
    normalize: bool
    long_sequences: str | None  # chunk, truncate or reject; None: the engine's / server's setting

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> VectorOptions:
        # --long-sequences is a settings flag (argparse.SUPPRESS when not given): locally it also sets
        # the engine's default; through a server it is sent with every request.
        long_sequences = getattr(args, "long_sequences", None)
        return cls(args.output_name, args.per_residue, args.normalize, long_sequences)


class LocalEmbedder:
    """The serving Engine in this process (no server, no cache)."""

    def __init__(self, engine: Any, options: VectorOptions) -> None:
        from protembed.core import EmbedOptions

        self.engine = engine
        self.options = EmbedOptions(
            output=options.output,
            per_residue=options.per_residue,
            normalize=options.normalize,
            long_sequences=options.long_sequences,
        )

    async def embed_batch(self, sequences: Sequence[str], ids: Sequence[str]) -> Any:
        from protembed.bulk import BatchEmbeddings, OutputMeta
        from protembed.core import EmbedInput

        response = await self.engine.embed(
            [EmbedInput(sequence=s, id=i) for s, i in zip(sequences, ids, strict=True)], self.options
        )
        results = response.results
        return BatchEmbeddings(
            OutputMeta.of(response),
            [r.embedding for r in results],
            windows=[r.windows for r in results],
            truncated=[r.truncated for r in results],
        )


class RemoteEmbedder:
    """A server, through :class:`protembed.client.AsyncClient` (chunking and retries included)."""

    def __init__(self, client: Any, options: VectorOptions) -> None:
        self.client = client
        self.options = options

    async def embed_batch(self, sequences: Sequence[str], ids: Sequence[str]) -> Any:
        from protembed.bulk import BatchEmbeddings, OutputMeta

        o = self.options
        # The one call that sends bulk traffic to a server: as priority=bulk, so this command, the
        # workflows/embed Snakemake workflow and the chart's bulk Job (which run it) let interactive
        # users of the same server go first.
        result = await self.client.embed_result(
            list(sequences),
            list(ids),
            o.output,
            o.per_residue,
            o.normalize,
            long_sequences=o.long_sequences,
            priority="bulk",
        )
        return BatchEmbeddings(
            OutputMeta.of(result), result.embeddings, windows=result.windows, truncated=result.truncated
        )


# --- the command -------------------------------------------------------------------------------------


def handler(args: argparse.Namespace) -> int:
    from protembed.bulk import BulkOutputError
    from protembed.errors import ProtembedError
    from protembed.fasta import FastaFormatError

    for name in ("batch_items", "batch_residues", "concurrency", "checkpoint_every"):
        if getattr(args, name) < 1:
            print(f"protembed embed: --{name.replace('_', '-')} must be at least 1", file=sys.stderr)
            return EXIT_FAILED
    if args.input != "-" and not os.path.isfile(args.input):
        print(f"protembed embed: {args.input}: no such file", file=sys.stderr)
        return EXIT_FAILED
    try:
        return asyncio.run(_run(args))
    except (BulkOutputError, FastaFormatError, ProtembedError) as err:
        print(f"protembed embed: {err}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("protembed embed: interrupted; rerun the same command to resume", file=sys.stderr)
        return EXIT_FAILED


async def _run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from protembed.bulk import BulkAborted, BulkWriter, embed_records
    from protembed.errors import ProtembedError
    from protembed.fasta import RecordProblem, count_records, read_fasta

    writer = BulkWriter(args.out, checkpoint_records=args.checkpoint_every)  # fails early on a bad suffix
    records = read_fasta(args.input)
    if args.shard is not None:
        # Before the record checks: every record of an id (duplicates, too) reaches one shard, which
        # reports it with its number in the whole file.
        records = (r for r in records if args.shard.holds(r.id))
    total = count_records(args.input) if args.shard is None else None  # a shard's size is unknown ahead
    bar = tqdm(total=total, unit="seq", dynamic_ncols=True, disable=True if args.no_progress else None)

    def report(problem: RecordProblem) -> None:
        bar.write(f"skipped {problem}", file=sys.stderr)

    embedder, close = await _open_embedder(args)
    batch_items, batch_residues = args.batch_items, args.batch_residues
    if args.server is None:  # stay within the local engine's per-request limits
        batch_items = min(batch_items, embedder.engine.settings.max_items_per_request)
        batch_residues = min(batch_residues, embedder.engine.settings.max_residues_per_request)
    status = EXIT_OK
    try:
        stats = await embed_records(
            records,
            embedder,
            writer,
            batch_items=batch_items,
            batch_residues=batch_residues,
            concurrency=args.concurrency,
            on_error=args.on_error,
            on_problem=report,
            on_progress=bar.update,
        )
    except BulkAborted as err:
        bar.close()
        print(f"protembed embed: stopped at {err.problem} (--on-error fail)", file=sys.stderr)
        status = EXIT_FAILED
    except ProtembedError as err:
        bar.close()
        print(f"protembed embed: {err.message}; rerun the same command to resume", file=sys.stderr)
        status = EXIT_FAILED
    else:
        bar.close()
        if writer.meta is None:  # nothing embedded, ever: still leave an (empty) output for merge
            writer.set_meta(await describe_output(embedder))
        shard = "" if args.shard is None else f"shard {args.shard}: "
        print(
            f"protembed embed: {shard}{stats.records} records: {stats.embedded} embedded, "
            f"{stats.already_done} already in {args.out}, {stats.skipped} skipped"
            + (f" ({stats.truncated} truncated to the model's window)" if stats.truncated else ""),
            file=sys.stderr,
        )
        if stats.skipped:
            status = EXIT_SKIPPED
    finally:
        await close()
        # Whatever happened, keep what was embedded: merge checkpoints into the output.
        writer.finish()
    return status


async def describe_output(embedder: Any) -> Any:
    """The OutputMeta of the vectors ``embedder`` produces, from one tiny request: the answer names them
    exactly as it names real ones (model, variant, output, level, dim), with no second source of truth."""
    return (await embedder.embed_batch(["M"], ["protembed-output-probe"])).meta


async def _open_embedder(args: argparse.Namespace) -> tuple[Any, Any]:
    """The embedder and an async close function."""
    if args.server:
        from protembed.client import AsyncClient

        client = AsyncClient(
            args.server,
            api_key=args.api_key,
            concurrency=1,  # embed_records already runs --concurrency batches at once
            max_items_per_request=args.batch_items,
            max_residues_per_request=args.batch_residues,
        )
        return RemoteEmbedder(client, VectorOptions.from_args(args)), client.close

    from protembed.core import Engine
    from protembed.settings import settings_from_args

    # A bulk run reads every sequence once: no cache; and it serves nobody: no ports.
    settings = settings_from_args(args).model_copy(
        update={"cache_max_bytes": 0, "redis_url": None, "grpc_port": 0}
    )
    engine = await asyncio.to_thread(Engine.from_settings, settings)
    await engine.start()
    return LocalEmbedder(engine, VectorOptions.from_args(args)), engine.stop


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m protembed.commands.embed`` (the same as ``protembed embed``)."""
    return run_alone("embed", add_parser, argv)


if __name__ == "__main__":
    raise SystemExit(main())
