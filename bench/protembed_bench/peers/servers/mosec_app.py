"""mosec: a ``Worker`` whose ``forward`` takes a list when ``max_batch_size`` > 1 (its dynamic batching)."""

from mosec import Server, Worker
from peer_model import model_from_env, setting, to_b64


class Embedder(Worker):
    def __init__(self):
        super().__init__()
        self.model = model_from_env()

    def forward(self, data: list) -> list:  # JSON requests in, JSON-serialisable answers out
        vectors = self.model.embed([request["sequence"] for request in data])
        return [{"embedding": to_b64(v)} for v in vectors]


if __name__ == "__main__":
    server = Server()
    server.append_worker(
        Embedder,
        num=1,
        max_batch_size=setting("max_batch_size"),
        max_wait_time=setting("max_wait_time"),
        route="/embed",
    )
    server.run()  # --address / --port come from the command line
