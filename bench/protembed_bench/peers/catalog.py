"""The servers compared: how each starts, its two batching settings, and its request/response format.

Nothing here imports a peer framework: the harness runs in protembed's environment and talks to every
server over HTTP. Settings are what each framework documents for dynamic batching (a batch size cap
and a wait bound); every server is run with both and the better one is kept.
"""

from __future__ import annotations

import base64
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

SERVERS_DIR = Path(__file__).resolve().parent / "servers"
REQUIREMENTS_DIR = Path(__file__).resolve().parent / "requirements"
PROTEMBED = "protembed"


def _b64(text: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype="<f4")


def _vector_field(body: bytes) -> np.ndarray:
    return _b64(json.loads(body)["embedding"])


def _bentoml_vector(body: bytes) -> np.ndarray:
    (item,) = json.loads(body)  # a batchable API answers a list, one item per item sent
    return _b64(item)


def _kserve_vector(body: bytes) -> np.ndarray:
    (out,) = (o for o in json.loads(body)["outputs"] if o["name"] == "embedding")
    return np.asarray(out["data"], dtype=np.float32)


def _protembed_vector(body: bytes) -> np.ndarray:
    (item,) = json.loads(body)["data"]
    return _b64(item["embedding"])


@dataclass(frozen=True)
class ServerSpec:
    """One server: ``command(python, port)`` starts it, ``payload``/``vector`` translate one sequence."""

    name: str
    title: str
    distributions: tuple[str, ...]  # whose versions the report lists
    settings: tuple[dict[str, Any], ...]
    path: str
    payload: Callable[[str], Any]
    vector: Callable[[bytes], np.ndarray]
    command: Callable[[Path, int], list[str]]
    note: str = ""

    @property
    def requirements(self) -> Path:
        return REQUIREMENTS_DIR / f"{self.name}.txt"


def _script(name: str) -> Callable[[Path, int], list[str]]:
    return lambda python, port: [str(python), str(SERVERS_DIR / name)]


SERVERS: dict[str, ServerSpec] = {
    s.name: s
    for s in (
        ServerSpec(
            name=PROTEMBED,
            title="protembed serve",
            distributions=("protembed", "fastapi", "uvicorn", "onnxruntime-gpu", "onnxruntime"),
            # Its two documented token budgets: the CPU default (0 = by provider: 2048 on the CPU, where
            # small batches run fastest on idle cores) and the GPU default, 16384 (fewer, larger runs).
            settings=(
                {"max_batch_tokens": 0, "max_wait_ms": 5.0},
                {"max_batch_tokens": 16384, "max_wait_ms": 5.0},
            ),
            path="/embed",
            payload=lambda seq: {"sequences": [seq], "encoding": "base64"},
            vector=_protembed_vector,
            command=lambda python, port: [sys.executable, "-m", "protembed", "serve"],
            note="cache off (cache_max_bytes=0), gRPC off; length-bucketed batches under a token budget",
        ),
        ServerSpec(
            name="litserve",
            title="LitServe",
            distributions=("litserve", "fastapi", "uvicorn", "onnxruntime"),
            settings=(
                {"max_batch_size": 16, "batch_timeout": 0.005},
                {"max_batch_size": 64, "batch_timeout": 0.01},
            ),
            path="/embed",
            payload=lambda seq: {"sequence": seq},
            vector=_vector_field,
            command=_script("litserve_app.py"),
            note="LitAPI(max_batch_size, batch_timeout), one worker",
        ),
        ServerSpec(
            name="mosec",
            title="mosec",
            distributions=("mosec", "onnxruntime"),
            settings=(
                {"max_batch_size": 32, "max_wait_time": 5},
                {"max_batch_size": 64, "max_wait_time": 10},
            ),
            path="/embed",
            payload=lambda seq: {"sequence": seq},
            vector=_vector_field,
            command=lambda python, port: [
                *_script("mosec_app.py")(python, port),
                *("--address", "127.0.0.1", "--port", str(port), "--log-level", "warning"),
                # Its service timeout (default 3 s) answers 408 once 64 queued requests wait longer than
                # that on a loaded CPU; the others' request timeouts are 30 s or more.
                *("--timeout", "120000"),
            ],
            note="append_worker(num=1, max_batch_size, max_wait_time in ms)",
        ),
        ServerSpec(
            name="bentoml",
            title="BentoML",
            distributions=("bentoml", "onnxruntime"),
            settings=(
                {"max_batch_size": 32, "max_latency_ms": 60000},
                {"max_batch_size": 64, "max_latency_ms": 60000},
            ),
            path="/embed",
            payload=lambda seq: {"sequences": [seq]},
            vector=_bentoml_vector,
            command=lambda python, port: [
                str(python),
                *("-m", "bentoml", "serve", "bentoml_app:Embedder"),
                *("--host", "127.0.0.1", "--port", str(port)),
            ],
            note="@bentoml.api(batchable=True, max_batch_size, max_latency_ms): adaptive batching; 1 worker",
        ),
        ServerSpec(
            name="rayserve",
            title="Ray Serve",
            distributions=("ray", "onnxruntime"),
            settings=(
                {"max_batch_size": 16, "batch_wait_timeout_s": 0.01},
                {"max_batch_size": 64, "batch_wait_timeout_s": 0.01},
            ),
            path="/embed",
            payload=lambda seq: {"sequence": seq},
            vector=_vector_field,
            command=_script("rayserve_app.py"),
            note="@serve.batch(max_batch_size, batch_wait_timeout_s), one replica, max_ongoing_requests=256",
        ),
        ServerSpec(
            name="pytriton",
            title="NVIDIA PyTriton (Triton Inference Server)",
            distributions=("nvidia-pytriton", "onnxruntime"),
            settings=(
                {"max_batch_size": 32, "max_queue_delay_microseconds": 5000},
                {"max_batch_size": 64, "max_queue_delay_microseconds": 10000},
            ),
            path="/v2/models/embedder/infer",
            payload=lambda seq: {
                "inputs": [{"name": "sequence", "shape": [1, 1], "datatype": "BYTES", "data": [seq]}]
            },
            vector=_kserve_vector,
            command=_script("pytriton_app.py"),
            note="@batch infer function, ModelConfig(max_batch_size, DynamicBatcher(max_queue_delay))",
        ),
    )
}
PEERS = tuple(name for name in SERVERS if name != PROTEMBED)


def setting_env(spec: ServerSpec, setting: dict[str, Any]) -> dict[str, str]:
    """A setting as environment variables: ``PROTEMBED_<NAME>`` for protembed's own settings,
    ``PROTEMBED_PEER_<NAME>`` (a JSON value) read by the peer wrappers (``peer_model.setting``)."""
    if spec.name == PROTEMBED:
        return {f"PROTEMBED_{k.upper()}": str(v) for k, v in setting.items()}
    return {f"PROTEMBED_PEER_{k.upper()}": json.dumps(v) for k, v in setting.items()}


def describe(setting: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in setting.items())
