"""The committed generated code must match what grpcio-tools makes from the .proto today."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("grpc_tools", reason="grpcio-tools (a dev dependency) regenerates the code")

from protembed.proto import generate as gen


def test_committed_code_matches_proto(tmp_path: Path) -> None:
    fresh = gen.generate(out_dir=tmp_path)
    assert fresh, "the generator wrote nothing"
    stale = []
    for path in fresh:
        committed = gen.OUT_DIR / path.relative_to(tmp_path)
        if not committed.exists() or committed.read_bytes() != path.read_bytes():
            stale.append(str(committed.relative_to(gen.OUT_DIR)))
    assert not stale, (
        f"generated gRPC code is stale or missing: {stale}; "
        "run `python service/protembed/proto/generate.py` and commit the result"
    )


def test_generated_code_imports_from_the_package() -> None:
    from protembed.proto import embedder_pb2, embedder_pb2_grpc

    assert embedder_pb2.DESCRIPTOR.package == "protembed.v1"
    service = embedder_pb2.DESCRIPTOR.services_by_name["Embedder"]
    assert [m.name for m in service.methods] == ["Embed", "EmbedStream", "Info"]
    stream = service.methods_by_name["EmbedStream"]
    assert stream.client_streaming and stream.server_streaming
    assert hasattr(embedder_pb2_grpc, "EmbedderStub")
