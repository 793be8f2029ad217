"""NVIDIA PyTriton: Triton Inference Server with a Python ``@batch`` function and its dynamic batcher.

Requests use Triton's HTTP/REST protocol (KServe v2): one BYTES input ``sequence`` of shape [1, 1] in,
one FP32 output ``embedding`` [1, dim] out.
"""

import os

import numpy as np
from peer_model import model_from_env, setting
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig

model = model_from_env()


@batch
def infer(sequence: np.ndarray) -> dict:
    return {"embedding": model.embed([row[0].decode() for row in sequence])}


if __name__ == "__main__":
    port = int(os.environ["PROTEMBED_PEER_PORT"])
    config = TritonConfig(
        http_address="127.0.0.1",
        http_port=port,
        grpc_port=int(os.environ["PROTEMBED_PEER_PORT2"]),  # Triton opens these too; the harness picks them
        metrics_port=int(os.environ["PROTEMBED_PEER_PORT3"]),
    )
    with Triton(config=config) as triton:
        triton.bind(
            model_name="embedder",
            infer_func=infer,
            inputs=[Tensor(name="sequence", dtype=bytes, shape=(1,))],
            outputs=[Tensor(name="embedding", dtype=np.float32, shape=(-1,))],
            config=ModelConfig(
                max_batch_size=setting("max_batch_size"),
                batcher=DynamicBatcher(max_queue_delay_microseconds=setting("max_queue_delay_microseconds")),
            ),
        )
        triton.serve()
