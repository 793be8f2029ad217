"""``protembed serve``: REST (uvicorn) and gRPC in one process, sharing one engine and event loop."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from protembed.settings import add_settings_arguments, settings_from_args


def add_parser(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "serve",
        help="serve the model over HTTP (REST) and gRPC",
        description="Serve embeddings over HTTP and gRPC. Every flag can also be set as an environment "
        "variable PROTEMBED_<NAME> (REDIS_URL works too); flags win.",
    )
    add_settings_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import logging

    from pydantic import ValidationError

    from protembed import server

    try:
        settings = settings_from_args(args)
    except ValidationError as exc:
        print(f"protembed serve: invalid settings:\n{exc}", file=sys.stderr)
        return 2
    logging.getLogger().setLevel(settings.log_level.upper())
    return server.run(settings)
