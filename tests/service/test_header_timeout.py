"""A client that dribbles its request headers is disconnected after header_timeout_s; a normal client on
a kept-alive connection is not."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Any

import httpx


def test_slow_headers_are_cut_off_and_keep_alive_still_works(
    start_server_process: Callable[..., Any],
) -> None:
    server = start_server_process(PROTEMBED_HEADER_TIMEOUT_S="1")
    host, port = server.url.removeprefix("http://").split(":")
    slow = socket.create_connection((host, int(port)), timeout=5)
    slow.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # headers never finish
    start = time.monotonic()
    closed_after = None
    while time.monotonic() - start < 5:
        try:
            slow.sendall(b"X")  # one byte a while, as a slowloris client does
            if slow.recv(1, socket.MSG_DONTWAIT) == b"":
                closed_after = time.monotonic() - start
                break
        except BlockingIOError:
            pass
        except OSError:
            closed_after = time.monotonic() - start
            break
        time.sleep(0.2)
    slow.close()
    assert closed_after is not None and 0.8 <= closed_after < 3.0, closed_after
    with httpx.Client(base_url=server.url) as client:  # requests on one connection, past the deadline
        for _ in range(3):
            assert client.get("/healthz").status_code == 200
            time.sleep(0.6)
