"""The HTTP server's protocol with bounds uvicorn lacks: how long a client may take to send
its request head, and how large that head may be.

Uvicorn arms no timer until a first response is sent and none while a request head arrives,
so a client trickling one header byte at a time holds a connection (and its memory) for as long
as it likes. This protocol gives each request head a deadline, starting when the connection is
made or the previous response is complete, and a size limit, answered with 431.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

_TOO_LARGE = (b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json"
              b"\r\nconnection: close\r\ncontent-length: %d\r\n\r\n%b")
_BODY = (b'{"error":"headers_too_large","message":"the request head exceeds %d bytes",'
         b'"details":[]}')


class _HeadTooLarge(Exception):
    """Stops the parser on a request head over the limit."""


class GuardedProtocol(HttpToolsProtocol):
    """Uvicorn's httptools protocol with a deadline and a size limit on each request head.

    Parameters (class attributes, set by :func:`guarded_protocol`):
      header_timeout: seconds from connection (or the end of the previous response) to the
        end of the next request's headers.
      max_header_bytes: bytes a request head may take.
    """

    header_timeout: float = 10.0
    max_header_bytes: int = 16 * 1024

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_timer: asyncio.TimerHandle | None = None
        #: Bytes received while a head is incomplete, and the size of the parsed head.
        self._head_bytes = 0
        self._head_size = 0
        self._in_head = False
        self._head_too_large = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._await_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._in_head:
            self._head_bytes += len(data)
        super().data_received(data)
        # Still no complete head after this much: refuse before buffering any more of it.
        if self._in_head and self._head_bytes > self.max_header_bytes:
            self._refuse_head()

    def on_url(self, url: bytes) -> None:
        self._head_size += len(url)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_size += len(name) + len(value) + 4
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._stop_head_timer()
        if self._head_size > self.max_header_bytes:
            # A head that arrived in one piece: stop parsing; uvicorn then calls
            # send_400_response, answered below with 431.
            self._head_too_large = True
            raise _HeadTooLarge
        super().on_headers_complete()

    def send_400_response(self, msg: str) -> None:
        if self._head_too_large:
            self._refuse_head()
            return
        super().send_400_response(msg)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._await_head()

    def _await_head(self) -> None:
        self._in_head = True
        self._head_bytes = 0
        self._head_size = 0
        self._stop_head_timer()
        self._head_timer = self.loop.call_later(self.header_timeout, self._head_timed_out)

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._in_head and not self.transport.is_closing():
            self.transport.close()

    def _refuse_head(self) -> None:
        self._in_head = False
        self._stop_head_timer()
        if not self.transport.is_closing():
            body = _BODY % self.max_header_bytes
            self.transport.write(_TOO_LARGE % (len(body), body))
            self.transport.close()


def guarded_protocol(header_timeout: float, max_header_bytes: int) -> type[GuardedProtocol]:
    """The protocol class for ``uvicorn.run(http=...)`` with these bounds."""
    return type("GuardedProtocol", (GuardedProtocol,), {
        "header_timeout": header_timeout, "max_header_bytes": max_header_bytes})
