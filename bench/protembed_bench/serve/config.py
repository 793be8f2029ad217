"""What one ``protembed bench serve`` run does: levels, transports, clients, bounds, server settings."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class ServeBenchConfig:
    model_dir: Path
    corpus: Path
    variant: str = "auto"  # as the server: int8 on the CPU when the card has it
    threads: int = 2
    levels: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16, 32, 64])
    transports: list[str] = field(default_factory=lambda: ["http", "grpc"])
    requests_per_level: int = 256  # at least; a level also sends 8 x concurrency
    seconds_per_level: float = 30.0
    warmup_requests: int = 8
    cache_sequences: int = 40
    # Rounds of (raw ONNX Runtime, then the server at the top level), each on a fresh stream: the
    # headline ratio is the median of the rounds' ratios (see run_serve_bench).
    paired_rounds: int = 3
    cache_repeats: int = 10
    raw_min_seconds: float = 5.0
    raw_min_passes: int = 1  # per measurement; it is measured before each transport and after the run
    seed: int = 0
    http_encoding: str = "base64"
    http_client: str = "raw"  # raw (RawHttpClient) | httpx
    startup_timeout_s: float = 120.0
    server_env: dict[str, str] = field(default_factory=dict)  # extra PROTEMBED_* settings
