"""Random requests against the real gRPC server, with the tokenizer as the oracle: what it accepts is
embedded (one vector per item, its normalized length), anything else is INVALID_ARGUMENT naming the
first bad item; never another status."""

from __future__ import annotations

from typing import Any

import grpc
import numpy as np
from hypothesis import event, given, settings
from hypothesis import strategies as st

from protembed import tokenizer
from protembed.errors import InvalidSequenceError
from protembed.proto import embedder_pb2 as pb
from protembed.proto import embedder_pb2_grpc as pb_grpc

# Residues in both cases, the accepted extras, and characters that must be refused: digits, gaps, an
# inner '*', other spaces, letters that str.upper() maps onto residues.
TEXT = st.text(alphabet=st.sampled_from(list("ACDKLMWYacdxuzob* -.1\t\u00a0ſﬀÄ")), max_size=40)
VALID = st.builds(
    lambda pad, seq, star: f"{pad}{seq}{star}{pad}",
    st.sampled_from(["", " ", "\n"]),
    st.text(alphabet=st.sampled_from(list(tokenizer.STANDARD_RESIDUES + "xuzob")), min_size=1, max_size=60),
    st.sampled_from(["", "*"]),
)


def _first_bad(sequences: list[str]) -> int | None:
    for i, s in enumerate(sequences):
        try:
            tokenizer.normalize(s, i)
        except InvalidSequenceError:
            return i
    return None


@settings(max_examples=150, deadline=None)
@given(
    sequences=st.lists(st.one_of(VALID, TEXT), max_size=6),
    output=st.sampled_from(["", "student", "alpha", "no-such-output"]),
    normalize=st.booleans(),
)
def test_random_requests_get_vectors_or_invalid_argument(
    server: Any, sequences: list[str], output: str, normalize: bool
) -> None:
    request = pb.EmbedRequest(
        sequences=[pb.Sequence(id=f"s{i}", sequence=s) for i, s in enumerate(sequences)],
        options=pb.EmbedOptions(output=output, normalize=normalize),
    )
    with grpc.insecure_channel(f"127.0.0.1:{server.settings.grpc_port}") as channel:
        try:
            response = pb_grpc.EmbedderStub(channel).Embed(request, timeout=30)
        except grpc.RpcError as err:
            event("refused")  # --hypothesis-show-statistics: how often each branch ran
            code, trailing = err.code(), dict(err.trailing_metadata() or ())  # type: ignore[attr-defined]
            assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, err.details())  # type: ignore[attr-defined]
            bad = _first_bad(sequences)
            assert not sequences or output == "no-such-output" or bad is not None
            if bad is not None and output != "no-such-output":
                assert trailing.get("protembed-error-index") == str(bad), trailing
            return
    event("embedded")
    assert sequences and output != "no-such-output" and _first_bad(sequences) is None
    assert [e.id for e in response.embeddings] == [f"s{i}" for i in range(len(sequences))]
    assert [e.length for e in response.embeddings] == [len(tokenizer.normalize(s)) for s in sequences]
    for e in response.embeddings:
        vector = np.frombuffer(e.vector, "<f4")
        assert vector.size == response.dim and np.isfinite(vector).all()
        if normalize:
            assert abs(float(np.linalg.norm(vector)) - 1.0) < 1e-4
