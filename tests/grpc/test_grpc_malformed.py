"""Messages that are not valid protobuf, or hold invalid UTF-8 in a string field, are INVALID_ARGUMENT
with the parser's reason, not UNKNOWN with a traceback in the server log."""

from __future__ import annotations

import logging
from typing import Any

import grpc
import pytest

CORRUPT = b"\x0a\xff\xff\xff"  # field 1 declares a length far past the end of the message
# EmbedRequest{sequences: [Sequence{sequence: b"\xff\xfe"}]}: a string field that is not UTF-8
BAD_UTF8 = b"\x0a\x04\x12\x02\xff\xfe"


@pytest.mark.parametrize("payload", [CORRUPT, BAD_UTF8], ids=["corrupt", "invalid-utf8"])
@pytest.mark.parametrize("method", ["Embed", "EmbedStream"])
async def test_malformed_messages_are_invalid_argument(
    server: Any, payload: bytes, method: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.settings.grpc_port}") as channel:
        path = f"/protembed.v1.Embedder/{method}"
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            if method == "Embed":
                await channel.unary_unary(path)(payload, timeout=10)
            else:
                call = channel.stream_stream(path)(iter([payload]), timeout=10)
                async for _ in call:
                    pass
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "malformed Embed" in (exc.value.details() or "")
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
