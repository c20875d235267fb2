"""A local stand-in for Mailtrap's Email Sending API: a Starlette app served by uvicorn.

It speaks the documented contract (``POST /api/send``, ``POST /api/send/{inbox_id}`` on the
sandbox host; ``Authorization: Bearer <token>``; JSON body from/to/cc/bcc/reply_to/subject/
text/html/headers/attachments/category/custom_variables; ``200 {"success": true,
"message_ids": [...]}``; errors ``{"success": false, "errors": [...]}``), checks every request's
shape, and can be told how to answer a given recipient: ``200``, ``400``, ``401``, ``429``,
``500``, ``slow`` (answers after ``slow_seconds``) or ``drop`` (reads the request, then breaks the
connection without an answer). A request whose shape is wrong is answered 400 *and* kept in
``violations`` so a test fails on it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import threading
import uuid
from dataclasses import dataclass, field
from typing import Any

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .ports import free_port
from .waiting import wait_for

#: Top-level fields of the documented body.
DOCUMENTED = {"from", "to", "cc", "bcc", "reply_to", "subject", "text", "html", "headers",
              "attachments", "category", "custom_variables", "template_uuid",
              "template_variables"}


@dataclass
class SentRequest:
    """One request the stand-in answered (or dropped)."""

    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    answer: str

    def recipients(self) -> list[str]:
        return [r["email"] for key in ("to", "cc", "bcc") for r in self.body.get(key, [])]


@dataclass
class MailtrapStandIn:
    """The stand-in; ``plan[address]`` lists answers for successive requests naming
    ``address`` (then 200).

    Parameters:
      token: the API token it accepts.
      slow_seconds: how long a ``slow`` answer takes.
    """

    token: str = "test-mailtrap-token"  # noqa: S105 - the stand-in's own test token
    slow_seconds: float = 5.0
    plan: dict[str, list[str]] = field(default_factory=dict)
    requests: list[SentRequest] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    port: int = field(default_factory=free_port)
    _server: uvicorn.Server | None = None
    _thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def delivered(self, address: str) -> list[SentRequest]:
        """Requests for ``address`` answered 200 (what Mailtrap would deliver)."""
        with self.lock:
            return [r for r in self.requests if r.answer == "200" and address in r.recipients()]

    def seen(self, address: str) -> list[SentRequest]:
        with self.lock:
            return [r for r in self.requests if address in r.recipients()]

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/api/send", self._send, methods=["POST"]),
                                 Route("/api/send/{inbox_id:int}", self._send, methods=["POST"])])

    async def _send(self, request: Request) -> Response:
        raw = await request.body()
        if request.headers.get("authorization") != f"Bearer {self.token}":
            return _errors(401, ["Unauthorized"])
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return self._violation("body is not JSON")
        problems = shape_problems(body, request.headers.get("content-type", ""))
        if problems:
            return self._violation("; ".join(problems))
        answer = "200"
        with self.lock:
            recipients = [r["email"] for key in ("to", "cc", "bcc") for r in body.get(key, [])]
            for address in recipients:
                if self.plan.get(address):
                    answer = self.plan[address].pop(0)
                    break
            self.requests.append(SentRequest(request.url.path, dict(request.headers), body,
                                             answer))
        return await _answer(answer, self.slow_seconds)

    def _violation(self, problem: str) -> Response:
        with self.lock:
            self.violations.append(problem)
        return _errors(400, [problem])

    def start(self) -> MailtrapStandIn:
        config = uvicorn.Config(self.app(), host="127.0.0.1", port=self.port, log_level="error",
                                lifespan="off", timeout_graceful_shutdown=1)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True,
                                        name="mailtrap-stand-in")
        self._thread.start()
        server = self._server
        wait_for(lambda: server.started, timeout=10, message="the Mailtrap stand-in")
        return self

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=10)
            self._server = self._thread = None


async def _answer(answer: str, slow_seconds: float) -> Response:
    if answer == "200":
        return JSONResponse({"success": True, "message_ids": [str(uuid.uuid4())]})
    if answer == "400":
        return _errors(400, ["'to' address is invalid"])
    if answer == "422":
        return _errors(422, ["subject is too long"])
    if answer == "401":
        return _errors(401, ["Unauthorized"])
    if answer == "403":
        return _errors(403, ["Sending domain not verified"])
    if answer == "429":
        return JSONResponse({"success": False, "errors": ["Too many requests"]}, status_code=429,
                            headers={"Retry-After": "1"})
    if answer == "500":
        return _errors(500, ["Internal Server Error"])
    if answer == "slow":
        await asyncio.sleep(slow_seconds)
        return JSONResponse({"success": True, "message_ids": [str(uuid.uuid4())]})
    if answer == "drop":
        return _Dropped()
    raise AssertionError(f"unknown planned answer {answer!r}")


class _Dropped(Response):
    """Starts a response and breaks the connection before finishing it: the client sent its
    whole request and gets no usable answer."""

    def __init__(self) -> None:
        super().__init__(b"", status_code=200)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", b"1000")]})
        raise ConnectionAbortedError("stand-in: connection dropped on purpose")


def _errors(status: int, errors: list[str]) -> Response:
    return JSONResponse({"success": False, "errors": errors}, status_code=status)


def _address_problems(value: Any, where: str) -> list[str]:
    if not isinstance(value, dict) or not isinstance(value.get("email"), str):
        return [f"{where}: must be an object with an email"]
    extra = set(value) - {"email", "name"}
    if extra or not isinstance(value.get("name", ""), str):
        return [f"{where}: only email and a string name are documented"]
    return []


def shape_problems(body: Any, content_type: str) -> list[str]:
    """What in a request departs from the documented contract."""
    if not content_type.startswith("application/json"):
        return [f"Content-Type is {content_type!r}, not application/json"]
    if not isinstance(body, dict):
        return ["body must be an object"]
    problems = [f"undocumented field {key!r}" for key in sorted(set(body) - DOCUMENTED)]
    problems += _address_problems(body.get("from"), "from")
    for key in ("to", "cc", "bcc"):
        if key in body:
            value = body[key]
            if not isinstance(value, list) or not value or len(value) > 1000:
                problems.append(f"{key}: must be a non-empty list")
                continue
            for index, item in enumerate(value):
                problems += _address_problems(item, f"{key}.{index}")
    if "to" not in body:
        problems.append("to: required")
    if "reply_to" in body:
        problems += _address_problems(body["reply_to"], "reply_to")
    if not isinstance(body.get("subject"), str) or not body["subject"]:
        problems.append("subject: required string")
    if not (isinstance(body.get("text"), str) or isinstance(body.get("html"), str)):
        problems.append("text or html: required")
    for key in ("headers", "custom_variables"):
        value = body.get(key, {})
        if not isinstance(value, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
            problems.append(f"{key}: must map strings to strings")
    if "category" in body and (not isinstance(body["category"], str)
                               or len(body["category"]) > 255):
        problems.append("category: a string of at most 255 characters")
    for index, attachment in enumerate(body.get("attachments", [])):
        problems += _attachment_problems(attachment, f"attachments.{index}")
    return problems


def _attachment_problems(value: Any, where: str) -> list[str]:
    if not isinstance(value, dict):
        return [f"{where}: must be an object"]
    problems = [f"{where}: undocumented field {k!r}" for k in
                sorted(set(value) - {"content", "filename", "type", "disposition", "content_id"})]
    if not isinstance(value.get("filename"), str) or not value["filename"]:
        problems.append(f"{where}.filename: required")
    try:
        base64.b64decode(value.get("content", ""), validate=True)
    except (binascii.Error, TypeError, ValueError):
        problems.append(f"{where}.content: must be base64")
    if value.get("disposition", "attachment") not in {"attachment", "inline"}:
        problems.append(f"{where}.disposition: attachment or inline")
    return problems
