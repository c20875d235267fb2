"""HTTP endpoints: probes, the native ``/v1`` API and the two original contracts."""

from __future__ import annotations

import atexit
import re
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import anyio
import anyio.to_thread
from pydantic import ValidationError
from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from mailcore.config import Settings
from mailcore.deadletters import DeadLetters
from mailcore.errors import EmailServiceError, InvalidData, InvalidRequest
from mailcore.idempotency import Idempotency
from mailcore.jsonlimits import check_json
from mailcore.locales import negotiate, parse_accept_language
from mailcore.message import SendRequest, error_details
from mailcore.owners import owns
from mailcore.rendering import RenderedEmail, TemplateError
from mailcore.sandbox_process import ProcessLimits, TemplateSandbox
from mailcore.status import SANDBOXED, content_key, decode_status, status_key, timeline_key
from mailcore.streams import TRANSACTIONAL
from mailcore.template_history import get_version, list_versions
from mailcore.timestamps import rfc3339_from_iso
from mailcore.validation import Validator

from . import legacy
from .auth import authenticate
from .body import decode_json_object, read_body, read_json_object
from .errors import ApiError, JSONResponse, http_error
from .offload import OFFLOAD_BYTES, off_loop
from .openapi import PreviewRequest, openapi_document
from .query import bounded_int
from .sending import BatchResponder, SendService

_VERSION = re.compile(r"[0-9a-f]{16}")
_MESSAGE_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _service(request: Request) -> SendService:
    service: SendService = request.app.state.send_service
    return service


async def health(request: Request) -> JSONResponse:
    return JSONResponse({"status": "healthy", "service": "email-service"})


async def ready(request: Request) -> JSONResponse:
    try:
        await request.app.state.redis.ping()
    except (RedisError, OSError) as exc:
        return _unready(f"redis: {exc}")
    listener = request.app.state.event_listener
    if listener is not None:
        task = request.app.state.event_listener_task
        if task is None or task.done():
            return _unready("the password-reset event listener has stopped")
        if not listener.ready:
            return _unready("the password-reset event listener is not subscribed")
    return JSONResponse({"status": "ready", "service": "email-service"})


def _unready(reason: str) -> JSONResponse:
    return JSONResponse({"status": "unavailable", "service": "email-service", "reason": reason},
                        status_code=503)


#: Reads the checked messages of a decoded request body.
Parser = Callable[[Validator, dict[str, Any]], list[SendRequest]]


async def _send(request: Request, parse: Parser, *, source: str, respond: BatchResponder,
                invalid_status: int = 422, batch: bool = False,
                accept_language: bool = False) -> JSONResponse:
    """Authenticate (with the sending scope), refuse a throttled caller at once, read and
    validate the body, then queue it. ``accept_language``: a message without ``locale`` takes
    the preferred valid tag of the ``Accept-Language`` header (the legacy endpoints).

    Every request is charged to the caller's rate limit: a refused one here (one token), an
    accepted one inside the accept step (one Redis round trip for the whole acceptance)."""
    service = _service(request)
    settings = service.settings
    caller = await authenticate(request, scope=settings.auth.required_scope)
    try:
        service.refuse_if_throttled(caller)  # before any work on the body
        try:
            raw = await read_body(request, settings.http.max_body_bytes,
                                  settings.http.body_timeout_seconds)

            def parse_all() -> tuple[list[SendRequest], Idempotency | None]:
                body = decode_json_object(raw)
                if batch:
                    messages = body.get("messages")
                    service.check_batch_size(
                        caller, len(messages) if isinstance(messages, list) else 1)
                parsed = parse(service.validator, body)
                if accept_language:
                    _locale_from_header(service, parsed, request.headers.get("accept-language"))
                key = request.headers.get("idempotency-key")
                # request.url builds a URL object: only for a request that has a key.
                return parsed, Idempotency.from_request(
                    key, caller.owner, request.url.path if key is not None else "", body)

            # A named template_version may be read from Redis: never on the event loop.
            if len(raw) > OFFLOAD_BYTES or b"template_version" in raw:
                messages, idempotency = await off_loop(parse_all)
            else:
                messages, idempotency = parse_all()
        except (ApiError, EmailServiceError):
            await service.limit_caller(caller)  # a flood of bad requests is limited too
            raise
        status_code, answer, replay = await service.submit_many(
            messages, owner=caller.owner, source=source, respond=respond,
            idempotency=idempotency, caller=caller)
    except EmailServiceError as exc:
        raise http_error(exc, invalid_status=invalid_status) from None
    headers = {"Idempotent-Replayed": "true"} if replay else {}
    return JSONResponse(answer, status_code=status_code, headers=headers)


def _locale_from_header(service: SendService, messages: list[SendRequest],
                        header: str | None) -> None:
    """Messages without a ``locale`` take the header's preferred tag their template has."""
    preferred = parse_accept_language(header)
    for message in messages:
        # A message with its own content has no template, and no locale to choose.
        if message.locale is None and preferred and message.template is not None:
            template = service.registry.get(message.template)
            message.locale = negotiate(
                preferred, template.has_locale if template else lambda _: False)


def _parse_message(validator: Validator, body: dict[str, Any]) -> list[SendRequest]:
    return [validator.parse(body)]


def _parse_batch(validator: Validator, body: dict[str, Any]) -> list[SendRequest]:
    return validator.parse_batch(body)


def _parse_reset(validator: Validator, body: dict[str, Any]) -> list[SendRequest]:
    send = legacy.parse_reset(body, validator.settings.templates.reset_template)
    validator.check(send)
    return [send]


def _parse_order(validator: Validator, body: dict[str, Any]) -> list[SendRequest]:
    send = legacy.parse_order(body, validator.settings.templates.order_template)
    validator.check(send)
    return [send]


async def send_message(request: Request) -> JSONResponse:
    return await _send(request, _parse_message, source="api",
                       respond=lambda ids, statuses: (202, {"id": ids[0],
                                                             "status": statuses[0]}))


async def send_batch(request: Request) -> JSONResponse:
    return await _send(request, _parse_batch, source="api", batch=True,
                       respond=lambda ids, statuses: (202, {"messages": [
                           {"id": mid, "status": status}
                           for mid, status in zip(ids, statuses, strict=True)]}))


async def send_reset_code(request: Request) -> JSONResponse:
    return await _send(request, _parse_reset, source="reset-code", invalid_status=400,
                       accept_language=True,
                       respond=lambda _, __: (200, {"message":
                                                "Password reset code sent successfully"}))


async def order_confirmation(request: Request) -> JSONResponse:
    return await _send(request, _parse_order, source="order-confirmation", accept_language=True,
                       respond=lambda _, __: (200, {"status": "success",
                                                "message": "Order confirmation email sent"}))


async def get_message(request: Request) -> JSONResponse:
    """A message's status; callers only see messages sent under their own JWT subject."""
    caller = await authenticate(request)
    service = _service(request)
    message_id = request.path_params["id"]
    if not _MESSAGE_ID.fullmatch(message_id):  # ids are UUIDs; anything else names nothing
        raise ApiError(404, "not_found", "no such message for this caller")
    prefix = service.settings.redis.key_prefix
    async with service.client.pipeline(transaction=False) as pipe:
        pipe.hgetall(status_key(prefix, message_id))
        pipe.lrange(timeline_key(prefix, message_id), 0, -1)
        fields, timeline = await pipe.execute()
    stored = fields.get(b"owner", b"").decode("utf-8", "replace") if fields else ""
    if not fields or not owns(stored, caller.owner, caller.subject):
        raise ApiError(404, "not_found", f"no message {message_id!r} for this caller")
    return JSONResponse(decode_status(fields, timeline))


async def get_message_content(request: Request) -> JSONResponse:
    """What a sandboxed message would have been: subject, html, text (its caller only)."""
    caller = await authenticate(request)
    service = _service(request)
    message_id = request.path_params["id"]
    if not _MESSAGE_ID.fullmatch(message_id):
        raise ApiError(404, "not_found", "no such message for this caller")
    prefix = service.settings.redis.key_prefix
    async with service.client.pipeline(transaction=False) as pipe:
        pipe.hmget(status_key(prefix, message_id), ["owner", "status"])
        pipe.hgetall(content_key(prefix, message_id))
        (owner, status), content = await pipe.execute()
    stored = owner.decode("utf-8", "replace") if owner else ""
    if not owner or not owns(stored, caller.owner, caller.subject):
        raise ApiError(404, "not_found", f"no message {message_id!r} for this caller")
    if status != SANDBOXED.encode() or not content:
        raise ApiError(404, "not_found", "content is kept for sandboxed messages only (and "
                       "once the worker has rendered them)")
    return JSONResponse({key.decode(): value.decode() for key, value in content.items()})


def _describe(service: SendService, name: str) -> dict[str, Any] | None:
    template = service.registry.get(name)
    if template is None:
        return None
    origin = service.registry.origin(name)
    if origin is not None and "updated_at" in origin:  # the store keeps ISO text
        origin["updated_at"] = rfc3339_from_iso(str(origin["updated_at"]))
    return {"name": name, "version": template.version, "source": origin,
            "locales": template.locales, "variables": template.source.variables}


def _listed_names(service: SendService) -> list[str]:
    """Each template once: ``ns/x`` is left out when the bare ``x`` resolves to the same
    template (the name callers use; ``source.namespace`` says where it lives)."""
    registry = service.registry
    names = registry.names()
    listed = []
    for name in names:
        _, slash, bare = name.partition("/")
        if slash and bare in names and registry.source(bare) is registry.source(name):
            continue
        listed.append(name)
    return listed


async def list_templates(request: Request) -> JSONResponse:
    await authenticate(request)
    service = _service(request)
    items = [item for name in _listed_names(service)
             if (item := _describe(service, name)) is not None]
    return JSONResponse({"templates": items})


async def get_template(request: Request) -> JSONResponse:
    await authenticate(request)
    service = _service(request)
    name = request.path_params["name"]
    described = _describe(service, name)
    if described is None:
        raise ApiError(404, "unknown_template", f"no template named {name!r}")
    template = service.registry.get(name)
    assert template is not None
    return JSONResponse({**described, "subject": template.source.subject,
                         "sample_data": dict(template.source.sample_data)})


def _versions_key(service: SendService, name: str) -> tuple[str | None, str]:
    """The store key ``name`` resolves to (``None`` for a built-in) and its serving version."""
    resolved = service.registry.resolve(name)
    if resolved is None:
        raise ApiError(404, "unknown_template", f"no template named {name!r}")
    if resolved.pin is None:
        return None, resolved.template.version
    return resolved.pin.key, resolved.pin.version


async def list_template_versions(request: Request) -> JSONResponse:
    """The kept versions of a template, newest first, with who/what stored each and when."""
    await authenticate(request)
    service = _service(request)
    name = request.path_params["name"]
    key, serving = _versions_key(service, name)
    if key is None:
        return JSONResponse({"template": name, "serving": serving, "versions": [
            {"version": serving, "serving": True, "origin": {"kind": "builtin"}}]})
    versions = await list_versions(service.client, service.settings.redis.key_prefix, key)
    return JSONResponse({"template": name, "key": key, "serving": serving,
                         "versions": versions})


async def get_template_version(request: Request) -> JSONResponse:
    """One kept version of a template, with its source."""
    await authenticate(request)
    service = _service(request)
    name = request.path_params["name"]
    version = request.path_params["version"]
    if not _VERSION.fullmatch(version):
        raise ApiError(404, "unknown_template_version",
                       "a version is 16 hexadecimal digits (see .../versions)")
    key, _ = _versions_key(service, name)
    found = (await get_version(service.client, service.settings.redis.key_prefix, key, version)
             if key is not None else None)
    if found is None:
        raise ApiError(404, "unknown_template_version",
                       f"template {name!r} has no kept version {version!r}")
    return JSONResponse({"template": name, "key": key, **found})


#: Previews render in a child process (a template and the caller's data are untrusted: a
#: runaway there is killed, not left running in this one), one at a time, waiting in the loop.
_RENDER_LIMITER = anyio.CapacityLimiter(1)
_preview_sandboxes: dict[ProcessLimits, TemplateSandbox] = {}


def _sandbox(settings: Settings) -> TemplateSandbox:
    limits = ProcessLimits.from_settings(settings,
                                         settings.templates.render_time_budget_seconds + 1.0)
    sandbox = _preview_sandboxes.get(limits)
    if sandbox is None:
        sandbox = _preview_sandboxes[limits] = TemplateSandbox(limits)
        atexit.register(sandbox.close)
    return sandbox


async def render_template(request: Request) -> JSONResponse:
    """Render a template with the given data (or its sample data) without sending anything."""
    await authenticate(request)
    service = _service(request)
    name = request.path_params["name"]
    template = service.registry.get(name)
    if template is None:
        raise ApiError(404, "unknown_template", f"no template named {name!r}")
    body = await read_json_object(request, service.settings.http.max_body_bytes,
                                  service.settings.http.body_timeout_seconds)
    try:
        check_json(body)
        preview = PreviewRequest.model_validate(body)
    except InvalidRequest as exc:
        raise http_error(exc) from None
    except ValidationError as exc:
        details = error_details(exc)
        raise ApiError(422, "invalid_request", f"{details[0]['field']}: {details[0]['message']}",
                       details=details) from None
    data = template.source.sample_data if preview.data is None else preview.data
    sandbox = _sandbox(service.settings)

    def render() -> RenderedEmail:
        return sandbox.render(template.source, data, brand=asdict(service.settings.brand),
                              locale=preview.locale)

    timeout = sandbox.limits.timeout + 0.5  # the child is killed by then; this bounds the wait
    try:
        with anyio.fail_after(timeout):
            rendered = await anyio.to_thread.run_sync(render, limiter=_RENDER_LIMITER,
                                                      abandon_on_cancel=True)
    except TimeoutError:
        raise ApiError(422, "render_timeout", f"rendering took longer than {timeout:g} s"
                       ) from None
    except TemplateError as exc:
        details = [{"field": f"data.{field}" if field else "data", "message": message}
                   for field, message in exc.violations or [("", exc.message)]]
        # Data that does not match the variables schema is the send path's `invalid_data`
        # too; `render_error` is kept for a template that fails on data the schema admits.
        code = InvalidData.code if exc.reason == "InvalidData" else "render_error"
        raise ApiError(422, code, exc.message, details=details) from None
    return JSONResponse({"template": name, "version": template.version, **asdict(rendered)})


# --- dead letters (admin scope) ---------------------------------------------------------------

async def _dead_letters(request: Request) -> DeadLetters:
    """The dead letters of the stream ``?stream=`` names (default: transactional)."""
    service = _service(request)
    await authenticate(request, scope=service.settings.auth.admin_scope)
    by_stream: dict[str, DeadLetters] = request.app.state.dead_letters
    stream = request.query_params.get("stream", TRANSACTIONAL)
    if stream not in by_stream:
        raise ApiError(422, "invalid_request", f"stream must be one of {', '.join(by_stream)}",
                       details=[{"field": "stream", "message": "unknown stream"}])
    return by_stream[stream]


async def list_dead_letters(request: Request) -> JSONResponse:
    dead = await _dead_letters(request)
    limit = bounded_int(request.query_params.get("limit", "100"), 1, 1000)
    if limit is None:
        raise ApiError(422, "invalid_request", "limit must be an integer from 1 to 1000",
                       details=[{"field": "limit", "message": "1..1000"}])
    letters = await anyio.to_thread.run_sync(dead.list, limit)
    return JSONResponse({"dead_letters": [letter.as_dict() for letter in letters]})


async def show_dead_letter(request: Request) -> JSONResponse:
    dead = await _dead_letters(request)
    if not _MESSAGE_ID.fullmatch(request.path_params["id"]):
        raise ApiError(404, "not_found", "no such dead letter")
    found = await anyio.to_thread.run_sync(dead.show, request.path_params["id"])
    if found is None:
        raise ApiError(404, "not_found", "no such dead letter")
    return JSONResponse(found)


async def retry_dead_letter(request: Request) -> JSONResponse:
    dead = await _dead_letters(request)
    message_id = request.path_params["id"]
    if not _MESSAGE_ID.fullmatch(message_id) or not await anyio.to_thread.run_sync(
            dead.retry, message_id):
        raise ApiError(404, "not_found", "no such dead letter")
    return JSONResponse({"id": message_id, "status": "queued"}, status_code=202)


async def retry_all_dead_letters(request: Request) -> JSONResponse:
    dead = await _dead_letters(request)
    return JSONResponse({"retried": await anyio.to_thread.run_sync(dead.retry_all)},
                        status_code=202)


async def purge_dead_letters(request: Request) -> JSONResponse:
    dead = await _dead_letters(request)
    return JSONResponse({"purged": await anyio.to_thread.run_sync(dead.purge)})


async def openapi(request: Request) -> Response:
    return JSONResponse(openapi_document())


# Starlette tries routes in order, so the send paths come first: every request to them skips
# the regex matches of the routes before it.
routes = [
    Route("/v1/messages", send_message, methods=["POST"]),
    Route("/v1/messages/batch", send_batch, methods=["POST"]),
    Route("/health", health, methods=["GET"]),
    Route("/ready", ready, methods=["GET"]),
    Route("/openapi.json", openapi, methods=["GET"]),
    Route("/v1/messages/{id}", get_message, methods=["GET"]),
    Route("/v1/messages/{id}/content", get_message_content, methods=["GET"]),
    Route("/v1/templates", list_templates, methods=["GET"]),
    Route("/v1/templates/{name:path}/render", render_template, methods=["POST"]),
    Route("/v1/templates/{name:path}/versions/{version}", get_template_version,
          methods=["GET"]),
    Route("/v1/templates/{name:path}/versions", list_template_versions, methods=["GET"]),
    Route("/v1/templates/{name:path}", get_template, methods=["GET"]),
    Route("/v1/dead-letters", list_dead_letters, methods=["GET"]),
    Route("/v1/dead-letters", purge_dead_letters, methods=["DELETE"]),
    Route("/v1/dead-letters/retry", retry_all_dead_letters, methods=["POST"]),
    Route("/v1/dead-letters/{id}", show_dead_letter, methods=["GET"]),
    Route("/v1/dead-letters/{id}/retry", retry_dead_letter, methods=["POST"]),
    Route("/email-service/send-reset-code", send_reset_code, methods=["POST"]),
    Route("/api/order-confirmation", order_confirmation, methods=["POST"]),
]
