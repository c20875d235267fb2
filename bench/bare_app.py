"""The ingress's framework with nothing behind it: the ceiling of one ingress process here.

A Starlette route that reads the JSON body and answers 202, served by uvicorn exactly as
``email-service api`` serves ours (uvloop, httptools, no access log). Whatever the door does
beyond this (token, validation, the accept script) is our cost; this part is not. With
``--redis URL`` each request also makes one Redis round trip (a PING, the cheapest there is,
through the same asyncio client): the ceiling of any door that records what it accepts.

Run: ``python -m bench.bare_app [--redis URL]`` (prints ``READY <port>``).
"""

from __future__ import annotations

import argparse
import socket
from typing import Any

import orjson
import redis.asyncio as aioredis
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


def make_app(redis_url: str | None) -> Starlette:
    client: Any = aioredis.Redis.from_url(redis_url) if redis_url else None

    async def accept(request: Request) -> Response:
        body = orjson.loads(await request.body())
        if client is not None:
            await client.ping()
        return Response(orjson.dumps({"id": "0" * 36, "status": "queued",
                                      "template": body.get("template")}),
                        status_code=202, media_type="application/json")

    return Starlette(routes=[Route("/v1/messages", accept, methods=["POST"])])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--redis", help="make one Redis round trip per request")
    args = parser.parse_args()
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1024)  # connections wait in the backlog until uvicorn accepts them
    print(f"READY {listener.getsockname()[1]}", flush=True)
    config = uvicorn.Config(make_app(args.redis), log_config=None, access_log=False,
                            server_header=False, backlog=1024)
    uvicorn.Server(config).run(sockets=[listener])


if __name__ == "__main__":
    main()
