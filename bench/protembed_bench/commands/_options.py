"""Options that ``protembed evaluate`` and ``protembed bench model`` share (not a subcommand itself).

Both run the student against a set of teachers on the same footing, so the teacher selection and the
way each model is run are spelled, parsed and defaulted in one place.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def add_teacher_options(
    p: argparse.ArgumentParser, *, teachers_help: str, option_help: str, batch_grid: tuple[int, ...] = ()
) -> None:
    """``--teachers``, ``--teacher-option``, ``--crop``, ``--batch-tokens`` and ``--no-int8``. With
    ``batch_grid``, ``--batch-tokens`` takes several budgets (that grid by default) and each model is
    measured at each: the best batch shape differs between models and between CPUs."""
    p.add_argument("--teachers", nargs="*", default=None, metavar="TEACHER", help=teachers_help)
    p.add_argument(
        "--teacher-option", action="append", default=[], metavar="NAME.KEY=VALUE", help=option_help
    )
    p.add_argument("--crop", type=int, default=None, help="crop length (default: the model's max_length)")
    if batch_grid:
        p.add_argument(
            "--batch-tokens",
            type=int,
            nargs="+",
            default=list(batch_grid),
            metavar="N",
            help="padded-token budgets per batch to try; each model keeps its fastest (default: %(default)s)",
        )
    else:
        p.add_argument(
            "--batch-tokens",
            type=int,
            default=8192,
            help="padded tokens per batch of the student (default: %(default)s); each teacher batches at "
            "its own call size, which its loader sets for the device",
        )
    p.add_argument("--no-int8", action="store_true", help="skip the int8 variant")


def parse_teacher_options(items: list[str]) -> dict[str, dict[str, Any]]:
    """``--teacher-option`` values as ``{teacher: {key: value}}``; values read as TOML (``64`` is an int,
    ``true`` a bool), anything else as a string (``cuda``, a path)."""
    from protembed_distill.config import parse_override_value

    out: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        name, dot, opt = key.partition(".")
        if not (sep and dot and name and opt):
            raise ValueError(f"--teacher-option {item!r}: expected NAME.KEY=VALUE")
        out.setdefault(name, {})[opt] = parse_override_value(value)
    return out


def teacher_names(teachers: list[str] | None, model_dir: Path) -> list[str]:
    """``--teachers`` as given, else the teachers the model card says the student was distilled from."""
    if teachers is not None:
        return teachers
    from protembed.artifact import read_model_card

    return [t.name for t in read_model_card(model_dir).teachers]
