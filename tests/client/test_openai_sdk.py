"""The official `openai` Python SDK against a real server's /v1/embeddings: what "existing embedding clients
work unchanged" promises. The SDK asks for base64 unless told otherwise and decodes it itself, so both
encodings are checked on the wire and against the vectors of the project's own client."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from protembed_testing import make_settings, running_server

from protembed.client import Client

openai = pytest.importorskip("openai", reason="the openai SDK is a dev dependency (pip install openai)")

# The SDK sends the text as written; the server normalizes it (case, surrounding whitespace).
SEQUENCES = ["MKTAYIAKQRQISFVKSHFSRQ", "MSDNELKK", " mkvlaa\n"]


def _sdk(url: str, api_key: str = "unused") -> Any:
    # max_retries=0: a refused request must fail here, not be retried into a timeout.
    return openai.OpenAI(base_url=f"{url}/v1", api_key=api_key, max_retries=0, timeout=30)


@pytest.fixture(scope="module")
def own_vectors(server: Any) -> dict[str, np.ndarray]:
    with Client(server.http_url) as client:
        return {
            "student": client.embed(SEQUENCES),
            "beta": client.embed(SEQUENCES, output="beta"),
        }


def test_default_call_sends_base64_and_the_sdk_decodes_it(server: Any, own_vectors: dict[str, Any]) -> None:
    sdk = _sdk(server.http_url)
    raw = sdk.embeddings.with_raw_response.create(model="protembed-tiny", input=SEQUENCES)
    assert json.loads(raw.http_request.content)["encoding_format"] == "base64"
    wire = raw.http_response.json()
    assert all(isinstance(d["embedding"], str) for d in wire["data"])
    response = raw.parse()
    assert response.model == "protembed-tiny" and response.object == "list"
    assert [d.index for d in response.data] == [0, 1, 2]
    got = np.array([d.embedding for d in response.data], dtype=np.float32)
    np.testing.assert_array_equal(got, own_vectors["student"])  # base64 is exact: no rounding
    assert response.usage.prompt_tokens == response.usage.total_tokens == sum(
        len(s.strip()) for s in SEQUENCES
    )


def test_float_and_explicit_base64(server: Any, own_vectors: dict[str, Any]) -> None:
    sdk = _sdk(server.http_url)
    floats = sdk.embeddings.create(model="protembed-tiny", input=SEQUENCES, encoding_format="float")
    assert all(isinstance(v, float) for v in floats.data[0].embedding)
    np.testing.assert_allclose(
        np.array([d.embedding for d in floats.data], dtype=np.float32), own_vectors["student"], atol=1e-6
    )
    # Asked for explicitly, base64 reaches the caller undecoded, as the SDK documents.
    b64 = sdk.embeddings.create(model="protembed-tiny/beta", input=SEQUENCES[0], encoding_format="base64")
    assert b64.model == "protembed-tiny/beta"
    vector = np.frombuffer(base64.b64decode(str(b64.data[0].embedding)), "<f4")
    np.testing.assert_array_equal(vector, own_vectors["beta"][0])
    assert sdk.embeddings.create(model="protembed-tiny", input="MK", dimensions=8).data[0].embedding


def test_refusals_arrive_as_the_sdk_error_types(server: Any) -> None:
    sdk = _sdk(server.http_url)
    with pytest.raises(openai.UnprocessableEntityError, match="unknown model 'text-embedding-3-small'"):
        sdk.embeddings.create(model="text-embedding-3-small", input=["MK"])
    with pytest.raises(openai.UnprocessableEntityError, match="dimensions=1024"):
        sdk.embeddings.create(model="protembed-tiny", input=["MK"], dimensions=1024)
    with pytest.raises(openai.UnprocessableEntityError, match="item 1") as refused:
        sdk.embeddings.create(model="protembed-tiny", input=["MK", "MK1"])
    assert refused.value.status_code == 422


@pytest.fixture(scope="module")
def keyed_server(tiny_model_dir: Path) -> Iterator[Any]:
    yield from running_server(make_settings(tiny_model_dir, api_key="team-key", grpc_port=0))


def test_the_sdk_api_key_is_the_servers_bearer_key(keyed_server: Any) -> None:
    response = _sdk(keyed_server.http_url, "team-key").embeddings.create(model="protembed-tiny", input="MKV")
    assert len(response.data[0].embedding) == 8
    with pytest.raises(openai.AuthenticationError, match="wrong API key"):
        _sdk(keyed_server.http_url, "other").embeddings.create(model="protembed-tiny", input="MKV")
