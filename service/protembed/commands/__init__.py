"""Subcommands of the ``protembed`` CLI; each module exposes ``add_parser(subparsers)``."""
