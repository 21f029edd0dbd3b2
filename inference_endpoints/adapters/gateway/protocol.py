"""uvicorn's HTTP protocols with a header read timeout, which uvicorn lacks.

A connection that opens and then sends its request headers slowly, or never
finishes them, is closed `header_timeout_s` after it opened (or, on a kept-alive
connection, after the next request's first byte). One timer per request, armed
and cancelled in the protocol's own callbacks: nothing on the ASGI path.
uvicorn's keep-alive timeout still covers an idle connection between requests.
"""

from __future__ import annotations

import asyncio
import importlib.util
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol


class _HeaderDeadline:
    """The timer shared by both protocol classes; `header_timeout_s` is set per subclass."""

    header_timeout_s: float = 10.0
    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport
    _header_timer: asyncio.TimerHandle | None = None

    def _arm_headers(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_late)

    def _headers_done(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_late(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            self.transport.close()


class H11HeaderTimeout(_HeaderDeadline, H11Protocol):
    """h11: headers are complete once the client's state leaves IDLE."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_headers()

    def data_received(self, data: bytes) -> None:
        if self.conn.their_state is h11.IDLE:
            self._arm_headers()
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:
            self._headers_done()

    def connection_lost(self, exc: Exception | None) -> None:
        self._headers_done()
        super().connection_lost(exc)


def _httptools_class() -> type[Any] | None:
    if importlib.util.find_spec("httptools") is None:
        return None
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class HttpToolsHeaderTimeout(_HeaderDeadline, HttpToolsProtocol):
        """httptools: from connection_made / on_message_begin to on_headers_complete."""

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm_headers()

        def on_message_begin(self) -> None:
            self._arm_headers()
            super().on_message_begin()

        def on_headers_complete(self) -> None:
            self._headers_done()
            super().on_headers_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._headers_done()
            super().connection_lost(exc)

    return HttpToolsHeaderTimeout


HTTPTOOLS = _httptools_class()


def protocol_class(header_timeout_s: float, parser: str = "auto") -> type[Any]:
    """A protocol class for `uvicorn.Config(http=...)`: httptools when installed, else h11."""
    base: type[Any] = H11HeaderTimeout
    if parser in ("auto", "httptools") and HTTPTOOLS is not None:
        base = HTTPTOOLS
    elif parser == "httptools":
        raise RuntimeError("httptools is not installed")
    return type(base.__name__, (base,), {"header_timeout_s": header_timeout_s})
