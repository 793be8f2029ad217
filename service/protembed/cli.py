"""The ``protembed`` command: subcommands registered from a fixed table of modules.

Each module exposes ``add_parser(subparsers) -> None`` and sets a ``func`` default that takes the parsed
namespace and returns an exit code. Modules are imported only to register their parser (they keep heavy
imports inside their handlers), and a module that is not there is skipped, so the online-only install
(no ``protembed_distill``, no torch) still has a working ``protembed serve``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence
from types import ModuleType

from protembed import __version__

COMMANDS: dict[str, str] = {
    "serve": "protembed.commands.serve",
    "embed": "protembed.commands.embed",
    "merge": "protembed.commands.merge",
    "split": "protembed.commands.split",
    "teachers": "protembed_distill.commands.teachers",
    "distill": "protembed_distill.commands.distill",
    "export": "protembed_distill.commands.export",
    "evaluate": "protembed_bench.commands.evaluate",
    "bench": "protembed_bench.commands.bench",
}

# Offline dependencies: when one of these is missing, a distill command says how to install it.
_DISTILL_DEPS = frozenset({"torch", "transformers", "onnx", "onnxscript", "yaml", "sklearn", "matplotlib"})
_INSTALL_HINT = "this command needs the offline extras: pip install 'protembed[distill]'"


def _missing_dependency(name: str, exc: ModuleNotFoundError) -> int:
    print(f"protembed {name}: {exc.name} is not installed; {_INSTALL_HINT}", file=sys.stderr)
    return 2


def _import(module_name: str) -> ModuleType | ModuleNotFoundError | None:
    """The module; the ModuleNotFoundError of a missing dependency; None if the module itself is absent."""
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        parts = module_name.split(".")
        own = {".".join(parts[: i + 1]) for i in range(len(parts))}
        if exc.name in own:  # package or module not installed / not written yet
            return None
        return exc


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="protembed", description="Protein embeddings: serve a distilled student, or distill your own."
    )
    parser.add_argument("--version", action="version", version=f"protembed {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        loaded = _import(module_name)
        if loaded is None:
            continue
        if isinstance(loaded, ModuleNotFoundError):
            err = loaded
            stub = sub.add_parser(
                name, help=f"(unavailable: {err.name} missing; pip install 'protembed[distill]')"
            )
            stub.set_defaults(func=lambda _args, n=name, e=err: _missing_dependency(n, e))
            continue
        loaded.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(func(args) or 0)
    except ModuleNotFoundError as exc:
        if exc.name is not None and exc.name.split(".")[0] in _DISTILL_DEPS:
            return _missing_dependency(args.command, exc)
        raise


if __name__ == "__main__":
    raise SystemExit(main())
