"""The committed generated code must match what grpcio-tools makes from the .proto today (version stamps
aside), and pyproject.toml's runtime floors must cover what that code demands at import."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import tomllib

pytest.importorskip("grpc_tools", reason="grpcio-tools (a dev dependency) regenerates the code")

from protembed.proto import generate as gen

REPO = Path(__file__).resolve().parents[2]


def test_committed_code_matches_proto(tmp_path: Path) -> None:
    fresh = gen.generate(out_dir=tmp_path)
    assert fresh, "the generator wrote nothing"
    stale = gen.stale_files(tmp_path)
    assert not stale, (
        f"generated gRPC code is stale or missing: {stale}; "
        "run `python service/protembed/proto/generate.py` and commit the result"
    )


def test_a_changed_proto_is_caught(tmp_path: Path) -> None:
    """The comparison sees a real drift: one new field in the .proto makes the committed code stale."""
    protos = tmp_path / "proto"
    shutil.copytree(gen.PROTO_ROOT, protos)
    path = protos / gen.PROTO_FILES[0]
    text = path.read_text()
    changed = re.sub(r"(message InfoRequest \{)", r"\1\n  string drift = 99;", text, count=1)
    assert changed != text, "the test's edit no longer applies to the .proto"
    path.write_text(changed)
    out = tmp_path / "out"
    out.mkdir()
    gen.generate(out_dir=out, proto_root=protos)
    assert gen.stale_files(out) == ["protembed/v1/embedder_pb2.py", "protembed/v1/embedder_pb2.pyi"]


def test_version_stamps_alone_are_not_drift() -> None:
    committed = (gen.OUT_DIR / "protembed/v1/embedder_pb2_grpc.py").read_text()
    bumped = re.sub(r"GRPC_GENERATED_VERSION = '[\d.]+'", "GRPC_GENERATED_VERSION = '9.99.9'", committed)
    assert bumped != committed
    assert gen.without_version_stamps(bumped) == gen.without_version_stamps(committed)
    pb2 = (gen.OUT_DIR / "protembed/v1/embedder_pb2.py").read_text()
    other_major = pb2.replace("\n    7,\n", "\n    8,\n")
    assert gen.without_version_stamps(other_major) == gen.without_version_stamps(pb2)
    # ...but anything else is
    assert gen.without_version_stamps(committed + "\n# x\n") != gen.without_version_stamps(committed)


def _floor(requirement: str) -> tuple[int, ...]:
    match = re.search(r">=\s*([\d.]+)", requirement)
    assert match, f"{requirement!r} has no >= floor"
    return tuple(int(p) for p in match.group(1).split("."))


def test_runtime_floors_cover_the_generated_code() -> None:
    """Generated code raises at import under a grpcio or protobuf older than its stamp, so pyproject must
    not admit one (a user with grpcio 1.70 would otherwise install us and crash at import)."""
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    needed = gen.generated_versions()
    assert set(needed) == {"grpcio", "protobuf"}
    for package, version in needed.items():
        requirement = next(d for d in deps if re.match(rf"{package}\s*[><=]", d))
        floor = _floor(requirement)
        assert floor >= version, (
            f"pyproject.toml says {requirement!r}, but the generated code needs {package}>="
            f"{'.'.join(map(str, version))}"
        )


def test_generated_code_imports_from_the_package() -> None:
    from protembed.proto import embedder_pb2, embedder_pb2_grpc

    assert embedder_pb2.DESCRIPTOR.package == "protembed.v1"
    service = embedder_pb2.DESCRIPTOR.services_by_name["Embedder"]
    assert [m.name for m in service.methods] == ["Embed", "EmbedStream", "Info"]
    stream = service.methods_by_name["EmbedStream"]
    assert stream.client_streaming and stream.server_streaming
    assert hasattr(embedder_pb2_grpc, "EmbedderStub")
