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

    import uvicorn  # heavy imports only when serving
    from pydantic import ValidationError

    from protembed.http.app import create_app

    try:
        settings = settings_from_args(args)
    except ValidationError as exc:
        print(f"protembed serve: invalid settings:\n{exc}", file=sys.stderr)
        return 2
    logging.getLogger().setLevel(settings.log_level.upper())
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        lifespan="on",
        timeout_graceful_shutdown=10,
        access_log=settings.log_level == "debug",
    )
    server = uvicorn.Server(config)
    server.run()
    # uvicorn returns normally when startup fails (e.g. a corrupt model): report that as a failure
    return 0 if server.started else 1
