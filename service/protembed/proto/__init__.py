"""Generated protobuf/gRPC code for ``proto/protembed/v1/embedder.proto`` (regenerate with
``python service/protembed/proto/generate.py``; a test fails when the committed code is stale)."""

from protembed.proto.protembed.v1 import embedder_pb2, embedder_pb2_grpc

__all__ = ["embedder_pb2", "embedder_pb2_grpc"]
