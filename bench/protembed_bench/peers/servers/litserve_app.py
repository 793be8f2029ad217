"""LitServe: a ``LitAPI`` with ``max_batch_size`` / ``batch_timeout`` (its dynamic batching)."""

import os

import litserve as ls
from peer_model import model_from_env, setting, to_b64


class Embedder(ls.LitAPI):
    def setup(self, device):
        self.model = model_from_env()

    def decode_request(self, request):
        return request["sequence"]

    def predict(self, sequences):  # a list of decoded requests when max_batch_size > 1
        return list(self.model.embed(sequences))

    def encode_response(self, vector):
        return {"embedding": to_b64(vector)}


if __name__ == "__main__":
    api = Embedder(
        max_batch_size=setting("max_batch_size"), batch_timeout=setting("batch_timeout"), api_path="/embed"
    )
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=1, timeout=120)
    server.run(host="127.0.0.1", port=int(os.environ["PROTEMBED_PEER_PORT"]), generate_client_file=False)
