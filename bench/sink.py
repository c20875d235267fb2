"""A fast asyncio SMTP sink that records when each message arrives.

Speaks just enough ESMTP (with PIPELINING) for smtplib and the load tools. For every message it
writes one line ``<X-Email-Service-Id or -> <time.monotonic()>[ M]`` to stdout (``M`` when the
message contains the ``--marker`` text) when it answers 250
to the final dot, so a harness can compute accepted→delivered latency per message (monotonic
time is one clock for every process on the machine). Lines are flushed every few milliseconds.

Run: ``python -m bench.sink --port 2525`` (prints ``READY <port>`` first).
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import time
from typing import Any

_ID = re.compile(rb"^X-Email-Service-Id:[ \t]*(\S+)", re.IGNORECASE | re.MULTILINE)
_EHLO = (b"250-sink\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n"
         b"250 ENHANCEDSTATUSCODES\r\n")


class SinkProtocol(asyncio.Protocol):
    def __init__(self, out: list[bytes], marker: bytes | None = None) -> None:
        self.out = out
        self.marker = marker
        self.buffer = b""
        self.in_data = False
        self.transport: Any = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # uvloop's transport is not an asyncio.Transport subclass
        self.transport.write(b"220 sink ESMTP\r\n")

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        replies: list[bytes] = []
        while True:
            if self.in_data:
                end = self.buffer.find(b"\r\n.\r\n")
                if end < 0:
                    break
                body, self.buffer = self.buffer[: end + 2], self.buffer[end + 5 :]
                self.in_data = False
                header_end = body.find(b"\r\n\r\n")
                found = _ID.search(body, 0, header_end if header_end >= 0 else len(body))
                ident = found.group(1) if found else b"-"
                marked = b" M" if self.marker and self.marker in body else b""
                self.out.append(b"%s %.6f%s\n" % (ident, time.monotonic(), marked))
                replies.append(b"250 2.0.0 Ok: queued\r\n")
                continue
            line_end = self.buffer.find(b"\r\n")
            if line_end < 0:
                break
            line, self.buffer = self.buffer[:line_end], self.buffer[line_end + 2 :]
            verb = line[:4].upper()
            if verb == b"EHLO":
                replies.append(_EHLO)
            elif verb == b"DATA":
                self.in_data = True
                # A message body may start right after the DATA line; the terminator search
                # needs the CRLF that ended the command in front of it.
                self.buffer = b"\r\n" + self.buffer
                replies.append(b"354 End data with <CR><LF>.<CR><LF>\r\n")
            elif verb == b"QUIT":
                replies.append(b"221 2.0.0 Bye\r\n")
                assert self.transport is not None
                self.transport.write(b"".join(replies))
                self.transport.close()
                return
            elif verb == b"HELO":
                replies.append(b"250 sink\r\n")
            else:  # MAIL, RCPT, RSET, NOOP and anything else: accept
                replies.append(b"250 2.0.0 Ok\r\n")
        if replies and self.transport is not None:
            self.transport.write(b"".join(replies))


async def serve(host: str, port: int, marker: bytes | None = None) -> None:
    loop = asyncio.get_running_loop()
    out: list[bytes] = []
    server = await loop.create_server(lambda: SinkProtocol(out, marker), host, port,
                                      backlog=1024)
    bound = server.sockets[0].getsockname()[1]
    sys.stdout.buffer.write(b"READY %d\n" % bound)
    sys.stdout.buffer.flush()
    async with server:
        while True:
            await asyncio.sleep(0.005)
            if out:
                chunk = b"".join(out)
                out.clear()
                sys.stdout.buffer.write(chunk)
                sys.stdout.buffer.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--marker", help="flag messages containing this text (a trailing ' M')")
    args = parser.parse_args()
    marker = args.marker.encode() if args.marker else None
    try:
        import uvloop

        uvloop.run(serve(args.host, args.port, marker))
    except ImportError:  # pragma: no cover - uvloop ships with uvicorn[standard]
        asyncio.run(serve(args.host, args.port, marker))


if __name__ == "__main__":
    main()
