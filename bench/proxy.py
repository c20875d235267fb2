"""A TCP proxy that delays every byte by a fixed time in each direction.

Stands in for a relay ``2 x delay`` away (this kernel has no netem). Data keeps its order and the
delay does not limit throughput: each chunk is stamped when read and written once it is due.

Run: ``python -m bench.proxy --upstream 127.0.0.1:2525 --delay 0.010`` (prints ``READY <port>``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def deliver() -> None:
        while True:
            due, chunk = await queue.get()
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if not chunk:
                with contextlib.suppress(OSError):
                    writer.write_eof()
                return
            writer.write(chunk)
            await writer.drain()

    sender = asyncio.create_task(deliver())
    try:
        while True:
            chunk = await reader.read(65536)
            queue.put_nowait((loop.time() + delay, chunk))
            if not chunk:
                break
        await sender
    except (ConnectionError, OSError):
        sender.cancel()
    finally:
        with contextlib.suppress(Exception):
            writer.close()


async def serve(port: int, upstream: tuple[str, int], delay: float) -> None:
    async def handle(c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        try:
            u_reader, u_writer = await asyncio.open_connection(*upstream)
        except OSError:
            c_writer.close()
            return
        await asyncio.gather(_pump(c_reader, u_writer, delay), _pump(u_reader, c_writer, delay),
                             return_exceptions=True)

    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=1024)
    print(f"READY {server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--upstream", required=True, help="host:port")
    parser.add_argument("--delay", type=float, default=0.010, help="seconds, each direction")
    args = parser.parse_args()
    host, _, port = args.upstream.rpartition(":")
    try:
        import uvloop

        uvloop.run(serve(args.port, (host, int(port)), args.delay))
    except ImportError:  # pragma: no cover
        asyncio.run(serve(args.port, (host, int(port)), args.delay))
    sys.exit(0)


if __name__ == "__main__":
    main()
