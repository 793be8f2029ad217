"""One API-key check for both transports: the same headers give the same answer over REST and gRPC."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
import httpx
import pytest

from protembed.auth import ApiKey, presented_key
from protembed.errors import UnauthenticatedError
from protembed.proto import embedder_pb2 as pb
from protembed.proto import embedder_pb2_grpc as pb_grpc
from protembed.settings import Settings
from protembed.testing import free_port

KEY = "s3cret"
# (headers, accepted): whitespace is ignored; a Bearer header wins over x-api-key; other schemes and
# empty values are no key at all.
CASES = [
    ({"authorization": f"Bearer {KEY}"}, True),
    ({"authorization": f"bearer   {KEY}  "}, True),
    ({"x-api-key": f" {KEY}\t"}, True),
    ({"authorization": f"Bearer {KEY}", "x-api-key": "wrong"}, True),
    ({"authorization": "Bearer wrong", "x-api-key": KEY}, False),
    ({"authorization": f"Basic {KEY}", "x-api-key": KEY}, True),  # not a Bearer header: x-api-key counts
    ({"authorization": f"Basic {KEY}"}, False),
    ({"authorization": "Bearer "}, False),
    ({}, False),
]


@pytest.mark.parametrize(("headers", "accepted"), CASES)
def test_the_check(headers: dict[str, str], accepted: bool) -> None:
    key = ApiKey(KEY)
    if accepted:
        key.check(headers.get("authorization"), headers.get("x-api-key"))
    else:
        with pytest.raises(UnauthenticatedError):
            key.check(headers.get("authorization"), headers.get("x-api-key"))
    assert presented_key(None, None) is None
    ApiKey(None).check(None, None)  # no key configured: everything passes


def test_rest_and_grpc_agree(
    make_settings: Callable[..., Settings], start_thread_server: Callable[[Settings], Any]
) -> None:
    port = free_port()
    handle = start_thread_server(make_settings(api_key=KEY, grpc_port=port))
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.EmbedderStub(channel)
        for headers, accepted in CASES:
            # HTTP strips whitespace around header values and gRPC clients refuse tabs in metadata, so
            # the wire carries them trimmed (the check's own whitespace handling is tested above)
            wire = {k: v.strip() for k, v in headers.items()}
            rest = httpx.post(handle.url + "/embed", json={"sequences": ["MKTAYIAK"]}, headers=wire)
            try:
                stub.Embed(
                    pb.EmbedRequest(sequences=[pb.Sequence(sequence="MKTAYIAK")]),
                    metadata=tuple(wire.items()),
                    timeout=10,
                )
                grpc_ok = True
            except grpc.RpcError as err:
                assert err.code() == grpc.StatusCode.UNAUTHENTICATED
                grpc_ok = False
            assert (rest.status_code == 200, grpc_ok) == (accepted, accepted), headers
            if not accepted:
                assert rest.status_code == 401
