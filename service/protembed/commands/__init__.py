"""Subcommands of the ``protembed`` CLI; each module exposes ``add_parser(subparsers)``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any


def run_alone(name: str, add_parser: Callable[[Any], None], argv: Sequence[str] | None = None) -> int:
    """``python -m protembed.commands.NAME``: that one subcommand, parsed and run as ``protembed NAME`` runs
    it (without importing the other commands)."""
    parser = argparse.ArgumentParser(prog="protembed")  # usage then reads "protembed NAME ..."
    sub = parser.add_subparsers(dest="command", required=True)
    add_parser(sub)
    args = parser.parse_args([name, *(sys.argv[1:] if argv is None else argv)])
    return int(args.func(args))
