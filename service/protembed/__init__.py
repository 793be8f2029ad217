"""protembed: fast protein embeddings from a multi-teacher distilled student, served over REST and gRPC."""

__version__ = "0.1.0"
