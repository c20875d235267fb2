"""The ingress's framework with nothing behind it: the ceiling of one ingress process here.

A Starlette route that reads the JSON body and answers 202, served by uvicorn exactly as
``email-service api`` serves ours (uvloop, httptools, no access log). Whatever the door does
beyond this (token, validation, the Redis round trip) is our cost; this part is not.

Run: ``python -m bench.bare_app`` (prints ``READY <port>``).
"""

from __future__ import annotations

import socket

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


async def accept(request: Request) -> Response:
    body = orjson.loads(await request.body())
    return Response(orjson.dumps({"id": "0" * 36, "status": "queued", "template": body.get(
        "template")}), status_code=202, media_type="application/json")


def main() -> None:
    app = Starlette(routes=[Route("/v1/messages", accept, methods=["POST"])])
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1024)  # connections wait in the backlog until uvicorn accepts them
    print(f"READY {listener.getsockname()[1]}", flush=True)
    config = uvicorn.Config(app, log_config=None, access_log=False, server_header=False,
                            backlog=1024)
    uvicorn.Server(config).run(sockets=[listener])


if __name__ == "__main__":
    main()
