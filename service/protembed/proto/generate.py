"""Regenerate the committed gRPC code from ``proto/protembed/v1/embedder.proto``.

Run from anywhere (needs grpcio-tools, a dev dependency)::

    python service/protembed/proto/generate.py

protoc names generated modules after the proto's path, so ``protembed/v1/embedder.proto`` becomes
``protembed/v1/embedder_pb2.py`` here, i.e. the import path ``protembed.proto.protembed.v1.embedder_pb2``.
The gRPC plugin writes an absolute ``from protembed.v1 import embedder_pb2``, which would resolve
against our own top-level ``protembed`` package, so that one import is rewritten to the full path.
Generated files start with ``# ruff: noqa`` (protoc's style is not ours). The proto's file name
inside the descriptor stays ``protembed/v1/embedder.proto``, which is what reflection clients
(grpcurl) and other languages expect.

``tests/grpc/test_proto_generated.py`` runs :func:`generate` into a temporary folder and fails when
the committed files differ (:func:`stale_files`) in anything but the generators' version stamps, so a
patch release of grpcio-tools does not make a clean checkout red while a changed .proto still does.
The stamps of the committed files are the runtime floors (:func:`generated_versions`): the generated
code refuses to import under an older grpcio or protobuf, and pyproject.toml must not promise less.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parents[3] / "proto"
PROTO_FILES = ("protembed/v1/embedder.proto",)
OUT_DIR = Path(__file__).resolve().parent
# Package path of OUT_DIR; generated modules live below it.
OUT_PACKAGE = "protembed.proto"


def generate(out_dir: Path = OUT_DIR, proto_root: Path = PROTO_ROOT) -> list[Path]:
    """Compile the protos into ``out_dir`` and return the written files."""
    from grpc_tools import protoc  # dev-only dependency: imported here so the package never needs it

    include = Path(protoc.__file__).parent / "_proto"  # google/protobuf/*.proto shipped with grpcio-tools
    args = [
        "grpc_tools.protoc",
        f"-I{proto_root}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *PROTO_FILES,
    ]
    code = protoc.main(args)
    if code != 0:
        raise RuntimeError(f"protoc failed with exit code {code} for {', '.join(PROTO_FILES)}")

    written: list[Path] = []
    for proto in PROTO_FILES:
        stem = Path(proto).with_suffix("")
        package_dir = out_dir / stem.parent
        proto_module = ".".join(stem.parent.parts)  # e.g. protembed.v1
        for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py"):
            path = out_dir / f"{stem}{suffix}"
            text = path.read_text()
            text = text.replace(f"from {proto_module} import", f"from {OUT_PACKAGE}.{proto_module} import")
            # protoc's style is not ours; keep the linter off generated code wherever it is run from.
            path.write_text(f"# ruff: noqa\n{text}")
            written.append(path)
        # Make every folder between out_dir and the modules a package (empty __init__.py).
        folder = package_dir
        while folder != out_dir and out_dir in folder.parents:
            init = folder / "__init__.py"
            if not init.exists():
                init.write_text("")
            written.append(init)
            folder = folder.parent
    return written


# Where the generators stamp their own version into the code: grpcio-tools' plugin and protoc.
_STAMPS = (
    re.compile(r"^(GRPC_GENERATED_VERSION = ')(\d+\.\d+\.\d+)(')$", re.M),
    re.compile(r"^(# Protobuf Python Version: )(\d+\.\d+\.\d+)()$", re.M),
    re.compile(r"(ValidateProtobufRuntimeVersion\(\s*_runtime_version\.Domain\.PUBLIC,\s*)(\d+,\s*\d+,\s*\d+)(,)"),
)


def without_version_stamps(text: str) -> str:
    """``text`` with the generators' version stamps blanked, everything else kept."""
    for pattern in _STAMPS:
        text = pattern.sub(r"\1<version>\3", text)
    return text


def stale_files(fresh_dir: Path, committed_dir: Path = OUT_DIR) -> list[str]:
    """Files ``generate(fresh_dir)`` wrote that are missing from ``committed_dir`` or differ from the
    committed copy other than in version stamps (relative paths)."""
    stale = []
    for path in sorted(p for p in fresh_dir.rglob("*") if p.is_file()):
        committed = committed_dir / path.relative_to(fresh_dir)
        if not committed.exists() or without_version_stamps(committed.read_text()) != without_version_stamps(
            path.read_text()
        ):
            stale.append(str(path.relative_to(fresh_dir)))
    return stale


def generated_versions(out_dir: Path = OUT_DIR) -> dict[str, tuple[int, ...]]:
    """The grpcio and protobuf versions the committed generated code demands at import."""
    found: dict[str, tuple[int, ...]] = {}
    for path in out_dir.rglob("*_pb2*.py"):
        text = path.read_text()
        grpc_stamp = _STAMPS[0].search(text)
        if grpc_stamp:
            found["grpcio"] = max(found.get("grpcio", ()), _version(grpc_stamp.group(2)))
        pb_stamp = _STAMPS[2].search(text)
        if pb_stamp:
            found["protobuf"] = max(found.get("protobuf", ()), _version(pb_stamp.group(2)))
    return found


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--out", type=Path, default=OUT_DIR, help="output folder (default: next to this file)"
    )
    args = parser.parse_args(argv)
    for path in generate(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
