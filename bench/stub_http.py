"""A minimal HTTP/1.1 server that answers every request 202 at once: the load generators'
ceiling is measured against it. Run: ``python -m bench.stub_http`` (prints ``READY <port>``)."""

from __future__ import annotations

import asyncio
from typing import Any

_RESPONSE = (b"HTTP/1.1 202 Accepted\r\ncontent-type: application/json\r\ncontent-length: 40\r\n"
             b"\r\n" + b'{"id":"0000000000000","status":"queued"}')


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.buffer = b""
        self.transport: Any = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # uvloop's transport is not an asyncio.Transport subclass

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        out = []
        while True:
            head_end = self.buffer.find(b"\r\n\r\n")
            if head_end < 0:
                break
            head = self.buffer[:head_end].lower()
            at = head.find(b"content-length:")
            length = int(head[at + 15:].split(b"\r\n", 1)[0]) if at >= 0 else 0
            if len(self.buffer) < head_end + 4 + length:
                break
            self.buffer = self.buffer[head_end + 4 + length:]
            out.append(_RESPONSE)
        if out and self.transport is not None:
            self.transport.write(b"".join(out))


async def serve() -> None:
    server = await asyncio.get_running_loop().create_server(_Protocol, "127.0.0.1", 0,
                                                            backlog=1024)
    print(f"READY {server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    import uvloop

    uvloop.run(serve())
