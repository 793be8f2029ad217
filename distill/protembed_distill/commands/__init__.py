"""CLI subcommands of the offline package; each module exposes ``add_parser(subparsers)``."""
