"""gRPC transport: ``protembed.v1.Embedder`` (service.py), its status mapping (errors.py) and its
server's lifecycle (server.py), mirroring ``protembed.http``."""
