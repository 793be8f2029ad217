"""Print the serving image's pip requirements from pyproject.toml, one per line.

pyproject.toml stays the one list of runtime dependencies; the images only choose which ONNX Runtime
build backs the ``onnxruntime`` module. The project's markers pick onnxruntime-gpu on every Linux
x86_64 machine, which would put a several-hundred-MB CUDA build into the CPU image, so both ONNX
Runtime lines are replaced by one unconditional line naming the build the image wants (same version
range). Optional extras (``distill``: torch) are never read: they must not reach the serving image.

With ``--lock requirements/lock.txt`` (the versions the tests run against) the chosen build is pinned
to the ONNX Runtime version the lock holds: the lock is frozen on a machine that installs the other
build, and both builds are released under one version number, so ``pip install -c lock.txt`` alone
would leave the image's build unpinned. Every other package is pinned by ``-c lock.txt`` itself.

Usage (in a Dockerfile build stage, standard library only):
    python runtime_requirements.py pyproject.toml --onnxruntime onnxruntime --lock lock.txt > requirements.txt
    pip install -r requirements.txt -c lock.txt
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import tomllib

ORT_BUILDS = ("onnxruntime", "onnxruntime-gpu")
_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def split_requirement(line: str) -> tuple[str, str, str]:
    """(canonical name, extras + version specifier, marker) of a PEP 508 requirement string."""
    spec, _, marker = line.partition(";")
    match = _NAME.match(spec)
    if match is None:
        raise ValueError(f"dependency {line!r}: cannot read a package name")
    return _canonical(match.group(1)), spec[match.end() :].strip(), marker.strip()


def locked_versions(lock: Path) -> dict[str, str]:
    """{canonical name: version} of the ``name==version`` lines of a pip freeze / constraints file."""
    versions: dict[str, str] = {}
    for number, raw in enumerate(lock.read_text().splitlines(), start=1):
        line = raw.split("#", 1)[0].split(";", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        if not sep or not name.strip() or not version.strip():
            raise ValueError(f"{lock}:{number}: {raw.strip()!r} is not a name==version pin")
        versions[_canonical(name.strip())] = version.strip()
    return versions


def runtime_requirements(pyproject: Path, onnxruntime: str, lock: Path | None = None) -> list[str]:
    """The project's runtime dependencies with the ONNX Runtime lines replaced by ``onnxruntime``
    (pinned to the lock's ONNX Runtime version when ``lock`` is given)."""
    if onnxruntime not in ORT_BUILDS:
        raise ValueError(f"--onnxruntime {onnxruntime!r}: expected one of {', '.join(ORT_BUILDS)}")
    with pyproject.open("rb") as handle:
        project = tomllib.load(handle).get("project", {})
    dependencies = project.get("dependencies")
    if not isinstance(dependencies, list) or not dependencies:
        raise ValueError(f"{pyproject}: [project].dependencies is missing or empty")

    kept: list[str] = []
    ort_specifier: str | None = None
    for line in dependencies:
        name, specifier, _marker = split_requirement(line)
        if name in ORT_BUILDS:
            # Both builds carry the same range in pyproject; the first one seen is used.
            ort_specifier = specifier if ort_specifier is None else ort_specifier
            continue
        kept.append(line)
    if ort_specifier is None:
        raise ValueError(f"{pyproject}: no onnxruntime or onnxruntime-gpu dependency to choose a build for")
    if lock is not None:
        pinned = locked_versions(lock)
        found = [pinned[build] for build in (onnxruntime, *ORT_BUILDS) if build in pinned]
        if not found:
            raise ValueError(f"{lock}: pins neither onnxruntime nor onnxruntime-gpu")
        ort_specifier = f"=={found[0]}"
    return [*kept, f"{onnxruntime}{ort_specifier}"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("pyproject", type=Path)
    parser.add_argument(
        "--onnxruntime",
        default="onnxruntime",
        choices=ORT_BUILDS,
        help="ONNX Runtime build for the image (onnxruntime = CPU only)",
    )
    parser.add_argument(
        "--lock", type=Path, default=None, help="pin the build to this lock file's ONNX Runtime version"
    )
    args = parser.parse_args(argv)
    try:
        lines = runtime_requirements(args.pyproject, args.onnxruntime, args.lock)
    except (OSError, ValueError, tomllib.TOMLDecodeError) as error:
        print(f"runtime_requirements: {error}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
