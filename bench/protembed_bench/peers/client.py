"""The one HTTP client every server is driven with: ``bench serve``'s raw keep-alive client, plus
chunked response bodies (Ray Serve's proxy streams its answers; the others send a Content-Length)."""

from __future__ import annotations

import asyncio
import json

from protembed_bench.serve.clients import RawHttpClient


class PeerHttpClient(RawHttpClient):
    """:class:`RawHttpClient` (one keep-alive connection per request in flight) that also reads
    ``Transfer-Encoding: chunked`` bodies."""

    async def post_json(self, path: str, payload: object) -> tuple[int, bytes]:
        conn = self._idle.pop() if self._idle else await asyncio.open_connection(self.host, self.port)
        reader, writer = conn
        try:
            body = json.dumps(payload).encode()
            writer.write(
                f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n".encode("ascii")
                + body
            )
            await writer.drain()
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            status = int(head[0].split()[1])
            headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in head[1:] if h)}
            if "content-length" in headers:
                data = await reader.readexactly(int(headers["content-length"]))
            elif headers.get("transfer-encoding", "").lower() == "chunked":
                data = await read_chunked(reader)
            else:
                raise RuntimeError(f"HTTP {status} response with neither Content-Length nor chunked body")
        except BaseException:
            writer.close()
            raise
        if headers.get("connection", "").lower() == "close":
            writer.close()
        else:
            self._idle.append(conn)
        return status, data


async def read_chunked(reader: asyncio.StreamReader) -> bytes:
    """A chunked body (RFC 9112 section 7.1): hex size lines, each chunk, a zero chunk, trailers."""
    parts: list[bytes] = []
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        if size == 0:
            while await reader.readuntil(b"\r\n") != b"\r\n":  # trailer fields, then the blank line
                pass
            return b"".join(parts)
        parts.append(await reader.readexactly(size))
        await reader.readexactly(2)  # the CRLF after each chunk
