"""CLI subcommands of the offline package; each public module exposes ``add_parser(subparsers)``."""
