"""Evaluation and benchmarks of protembed: against the teachers, raw ONNX Runtime and peer servers."""
