"""uvicorn's HTTP protocol with a deadline for request headers.

uvicorn closes idle keep-alive connections but has no limit on how long a client may take to send a
request's headers: 200 sockets that dribble one header byte at a time stay open indefinitely (slowloris),
each holding a connection slot and a little memory. Here a connection must complete each request's
headers within ``header_timeout_s`` of opening (or of the previous response), or it is closed.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

log = logging.getLogger(__name__)


def with_header_timeout(timeout_s: float) -> type[asyncio.Protocol] | None:
    """uvicorn's httptools protocol class with the header deadline, or None where httptools is missing
    (uvicorn then picks its default protocol, without the deadline)."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:  # uvicorn without its [standard] extra
        log.warning("httptools is not installed: no request-header timeout")
        return None

    class HeaderDeadlineProtocol(HttpToolsProtocol):
        _header_timer: asyncio.TimerHandle | None = None

        def _arm(self) -> None:
            self._disarm()
            self._header_timer = self.loop.call_later(timeout_s, self._headers_too_slow)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _headers_too_slow(self) -> None:
            self._header_timer = None
            if not self.transport.is_closing():
                log.info("closing a connection whose request headers took over %.0f s", timeout_s)
                self.transport.close()

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._arm()

        def on_headers_complete(self) -> None:
            self._disarm()
            super().on_headers_complete()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm()  # the next request on this connection gets the same deadline

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

    return HeaderDeadlineProtocol
