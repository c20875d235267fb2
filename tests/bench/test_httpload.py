"""bench.httpload's open-loop client against a server that closes idle keep-alive connections,
as uvicorn does after HTTP_KEEPALIVE_SECONDS."""

from __future__ import annotations

import asyncio

import pytest

from bench import httpload

IDLE_CLOSE = 0.3


async def _serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            try:
                await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), IDLE_CLOSE)
            except (TimeoutError, asyncio.IncompleteReadError):
                return  # idle too long, or the client left: close, as a server does
            writer.write(b"HTTP/1.1 202 Accepted\r\ncontent-length: 2\r\n\r\nok")
            await writer.drain()
    finally:
        writer.close()


async def _run(rate: float, duration: float) -> httpload.Results:
    server = await asyncio.start_server(_serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        return await httpload.open_loop("127.0.0.1", port, b"GET / HTTP/1.1\r\n\r\n",
                                        rate=rate, duration=duration)
    finally:
        server.close()
        await server.wait_closed()


def test_connections_the_server_closed_when_idle_are_not_reused(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(httpload, "STALE_SECONDS", IDLE_CLOSE / 2)
    # Two requests a second: every connection sits idle longer than the server keeps it.
    results = asyncio.run(_run(rate=2, duration=2))
    assert results.errors == 0
    assert [sample.status for sample in results.samples] == [202] * 4
