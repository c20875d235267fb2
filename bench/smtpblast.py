"""An asyncio SMTP client that pushes messages as fast as a sink will take them.

Used to measure each sink's own ceiling: K connections, each sending MAIL/RCPT/DATA pipelined
(one round trip for the envelope, one for the body), so the client does little per message.
"""

from __future__ import annotations

import asyncio
import time


async def _read_reply(reader: asyncio.StreamReader) -> bytes:
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionError("sink closed the connection")
        if line[3:4] != b"-":
            return line


async def _session(host: str, port: int, count: int, body: bytes) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    await _read_reply(reader)
    writer.write(b"EHLO blaster\r\n")
    await _read_reply(reader)
    envelope = b"MAIL FROM:<noreply@shop.example.com>\r\nRCPT TO:<a@example.com>\r\nDATA\r\n"
    for _ in range(count):
        writer.write(envelope)
        for _ in range(3):
            await _read_reply(reader)
        writer.write(body)
        reply = await _read_reply(reader)
        if not reply.startswith(b"250"):
            raise ConnectionError(f"sink refused: {reply!r}")
    writer.write(b"QUIT\r\n")
    await _read_reply(reader)
    writer.close()


def message_body(size: int = 4000) -> bytes:
    """A message of roughly ``size`` bytes (about what a rendered reset email weighs)."""
    line = b"x" * 76 + b"\r\n"
    filler = line * max(1, size // len(line))
    return (b"From: noreply@shop.example.com\r\nTo: a@example.com\r\nSubject: blast\r\n"
            b"X-Email-Service-Id: blast\r\n\r\n" + filler + b".\r\n")


async def blast(host: str, port: int, *, total: int, connections: int = 8) -> float:
    """Send ``total`` messages; returns messages per second."""
    body = message_body()
    per = total // connections
    started = time.perf_counter()
    await asyncio.gather(*(_session(host, port, per, body) for _ in range(connections)))
    return per * connections / (time.perf_counter() - started)
