"""BentoML 1.4: a ``@bentoml.service`` whose ``batchable`` API takes a list (its adaptive batching).

A client posts ``{"sequences": [one sequence]}``; BentoML merges concurrent requests' lists into one
call, up to ``max_batch_size`` items and within ``max_latency_ms``. Started with ``bentoml serve``.
"""

import bentoml
from peer_model import model_from_env, setting, to_b64


@bentoml.service(workers=1)
class Embedder:
    def __init__(self) -> None:
        self.model = model_from_env()

    @bentoml.api(
        batchable=True, max_batch_size=setting("max_batch_size"), max_latency_ms=setting("max_latency_ms")
    )
    def embed(self, sequences: list[str]) -> list[str]:
        return [to_b64(v) for v in self.model.embed(sequences)]
