"""CLI subcommands of the evaluation and benchmark package (``protembed evaluate``, ``protembed bench``);
each public module exposes ``add_parser(subparsers)``."""
