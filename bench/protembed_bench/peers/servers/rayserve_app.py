"""Ray Serve: a deployment whose ``@serve.batch`` method gathers concurrent calls into one list."""

import os
import signal
import sys

import ray
from peer_model import model_from_env, setting, to_b64
from ray import serve
from starlette.requests import Request


@serve.deployment(max_ongoing_requests=256)  # above 64 in flight, so that batches can fill
class Embedder:
    def __init__(self) -> None:
        self.model = model_from_env()

    @serve.batch(
        max_batch_size=setting("max_batch_size"), batch_wait_timeout_s=setting("batch_wait_timeout_s")
    )
    async def embed(self, sequences: list[str]) -> list[str]:
        return [to_b64(v) for v in self.model.embed(sequences)]

    async def __call__(self, request: Request) -> dict:
        return {"embedding": await self.embed((await request.json())["sequence"])}


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # stop the local cluster on the way out
    ray.init(num_cpus=2, include_dashboard=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": int(os.environ["PROTEMBED_PEER_PORT"])})
        app = Embedder.bind()  # type: ignore[attr-defined]  # added by @serve.deployment
        serve.run(app, route_prefix="/embed", blocking=True)
    finally:
        serve.shutdown()
        ray.shutdown()
