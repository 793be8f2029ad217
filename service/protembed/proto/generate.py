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
the committed files differ.
"""

from __future__ import annotations

import argparse
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
