"""Accepting a send: validate against its template, apply limits, then record and queue it
atomically (status, idempotency record and Dramatiq message in one Redis step)."""

from __future__ import annotations

import hashlib
import logging
import re
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
import redis.asyncio as aioredis
from opentelemetry import trace
from pydantic import ValidationError

from mailcore.addresses import mailbox_key
from mailcore.config import Settings
from mailcore.message import BatchRequest, SendRequest, error_details
from mailcore.queue import Acceptor, Charge, Entry, send_job
from mailcore.ratelimit import RateLimiter, retry_after
from mailcore.rendering import TemplateError
from mailcore.status import QUEUED, event, initial_fields
from mailcore.telemetry import detail_span, inject_context, tracer
from mailcore.templates import TemplateRegistry
from mailcore.tokens import Caller

from .errors import ApiError
from .metrics import IngressMetrics

log = logging.getLogger("email_service.ingress")

_IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")

#: Builds the endpoint's success answer from the new message id: (status code, body).
Responder = Callable[[str], tuple[int, dict[str, Any]]]
#: The same from the ids of all the messages a request queued.
BatchResponder = Callable[[list[str]], tuple[int, dict[str, Any]]]


@dataclass(frozen=True)
class Idempotency:
    """A caller's ``Idempotency-Key`` and the fingerprint of what it was sent with."""

    key: str
    fingerprint: str

    @classmethod
    def from_request(cls, header: str | None, owner: str, path: str, body: dict[str, Any]
                     ) -> Idempotency | None:
        if header is None:
            return None
        if not _IDEMPOTENCY_KEY.match(header):
            raise ApiError(400, "invalid_idempotency_key",
                           "Idempotency-Key must be 1-255 printable ASCII characters")
        canonical = orjson.dumps(body, option=orjson.OPT_SORT_KEYS)
        fingerprint = hashlib.sha256(path.encode() + b"\n" + canonical).hexdigest()
        scoped = hashlib.sha256(f"{owner}\0{header}".encode()).hexdigest()
        return cls(key=scoped, fingerprint=fingerprint)


class SendService:
    """Validates send requests, applies limits, records and queues them.

    Parameters:
      settings: the service configuration.
      registry: templates by name (unknown names are refused at the door).
      client: the asyncio Redis client used for queueing, limits and statuses.
      metrics: where accepted messages and enqueue failures are counted.
    """

    def __init__(self, settings: Settings, registry: TemplateRegistry,
                 client: aioredis.Redis, *, metrics: IngressMetrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics
        self.registry = registry
        self.client = client
        self.acceptor = Acceptor(
            client, queue_name=settings.queue_name, prefix=settings.key_prefix,
            retention_seconds=settings.status_retention_seconds,
            max_queue_depth=settings.max_queue_depth,
        )
        self.limiter = RateLimiter(client, settings.key_prefix)

    def parse(self, body: dict[str, Any], *, status: int = 422) -> SendRequest:
        with detail_span("validate"):
            try:
                request = SendRequest.model_validate(body)
            except ValidationError as exc:
                details = error_details(exc)
                raise ApiError(status, "invalid_request", _summary(details),
                               details=details) from None
            self.check(request, status=status)
            return request

    def parse_batch(self, body: dict[str, Any]) -> list[SendRequest]:
        """``{"messages": [...]}``: every message valid, or 422 naming ``messages.N.field``."""
        with detail_span("validate"):
            try:
                batch = BatchRequest.model_validate(body)
            except ValidationError as exc:
                details = error_details(exc)
                raise ApiError(422, "invalid_request", _summary(details),
                               details=details) from None
            for index, request in enumerate(batch.messages):
                try:
                    self.check(request)
                except ApiError as exc:
                    exc.details = [{**detail, "field": f"messages.{index}.{detail['field']}"}
                                   for detail in exc.details]
                    exc.message = f"messages.{index}: {exc.message}"
                    raise
            return batch.messages

    def check(self, request: SendRequest, *, status: int = 422) -> None:
        """Template exists, data matches its variables, ``from`` is an allowed sender."""
        template = self.registry.get(request.template)
        if template is None:
            raise ApiError(status, "unknown_template", f"no template named {request.template!r}",
                           details=[{"field": "template", "message": "unknown template"}])
        try:
            template.validate_data(request.data)
        except TemplateError as exc:
            details = [{"field": f"data.{field}" if field else "data", "message": message}
                       for field, message in exc.violations or [(exc.field or "", exc.message)]]
            raise ApiError(status, "invalid_data", f"data does not match template "
                           f"{request.template!r}: {exc.message}", details=details) from None
        if request.sender is not None and not self.settings.sender_domain_allowed(
            request.sender.email
        ):
            raise ApiError(status, "sender_not_allowed",
                           f"'from' must use the domain of {self.settings.sender_email} "
                           "or one in ALLOWED_SENDER_DOMAINS",
                           details=[{"field": "from.email", "message": "domain not allowed"}])

    async def limit_caller(self, caller: Caller) -> None:
        """Charge a refused request to the caller's bucket: 429 (``Retry-After``) when it is
        empty. Accepted requests are charged inside the accept step instead."""
        rate = self.settings.rate_for(caller.subject)
        if rate is None:
            return
        wait = await self.limiter.take(f"caller:{caller.subject}", rate)
        if wait:
            raise _caller_limited(caller.subject, wait)

    def _recipient_charges(self, requests: list[SendRequest]) -> tuple[Charge, ...]:
        rate = self.settings.reset_limit_per_recipient
        if rate is None:
            return ()
        # One token per message per address (an address named twice in a message counts once).
        digests = Counter(
            digest for request in requests if request.template == self.settings.reset_template
            for digest in {hashlib.sha256(mailbox_key(recipient.email).encode()).hexdigest()[:32]
                           for recipient in [*request.to, *request.cc, *request.bcc]})
        return tuple(Charge(self.limiter.key(f"reset:{digest}"), rate, tokens)
                     for digest, tokens in digests.items())

    async def submit(
        self, request: SendRequest, *, owner: str, source: str, respond: Responder,
        idempotency: Idempotency | None = None, message_id: str | None = None,
        limit_owner: bool = False,
    ) -> tuple[int, dict[str, Any], bool]:
        """Record and queue ``request``; once this returns, the message is in Redis.

        ``limit_owner`` charges the request to the owner's rate limit (API callers; events
        have none). Returns the answer (status code, body) and whether it is a replay of an
        earlier request with the same idempotency key.
        """
        return await self.submit_many(
            [request], owner=owner, source=source, respond=lambda ids: respond(ids[0]),
            idempotency=idempotency, message_ids=[message_id] if message_id else None,
            limit_owner=limit_owner)

    async def submit_many(
        self, requests: list[SendRequest], *, owner: str, source: str,
        respond: BatchResponder, idempotency: Idempotency | None = None,
        message_ids: list[str] | None = None, limit_owner: bool = False,
    ) -> tuple[int, dict[str, Any], bool]:
        """Record and queue all of ``requests`` or none of them (one token each from the
        owner's limit); otherwise like :meth:`submit`."""
        ids = message_ids or [str(uuid.uuid4()) for _ in requests]
        status_code, body = respond(ids)
        with tracer().start_as_current_span(
            "enqueue", kind=trace.SpanKind.PRODUCER,
            attributes={"email.message_id": ids[0] if len(ids) == 1 else ids,
                        "email.template": requests[0].template if len(requests) == 1
                        else sorted({r.template for r in requests})},
        ):
            carrier = inject_context()  # the worker continues this trace
            entries = []
            for message_id, request in zip(ids, requests, strict=True):
                job = send_job(message_id, request.model_dump(
                    mode="json", by_alias=True, exclude_defaults=True), source=source)
                job["trace"] = carrier
                recipients = [r.email for r in [*request.to, *request.cc, *request.bcc]]
                fields = initial_fields(message_id=message_id, owner=owner,
                                        template=request.template, recipients=recipients,
                                        source=source)
                entries.append(Entry(job, fields, event(QUEUED, f"accepted via {source}")))
            replay = await self._accept(entries, requests, owner=owner, idempotency=idempotency,
                                        status_code=status_code, body=body,
                                        limit_owner=limit_owner)
        if replay is not None:
            return (*replay, True)
        if self.metrics is not None:
            self.metrics.accepted.labels(source).inc(len(entries))
        for entry, request in zip(entries, requests, strict=True):
            log.info("queued", extra={"message_id": entry.job["id"],
                                      "template": request.template, "source": source})
        return status_code, body, False

    async def _accept(
        self, entries: list[Entry], requests: list[SendRequest], *, owner: str,
        idempotency: Idempotency | None, status_code: int, body: dict[str, Any],
        limit_owner: bool,
    ) -> tuple[int, dict[str, Any]] | None:
        """Queue the entries; returns the stored answer instead when this is a replay."""
        owner_rate = self.settings.rate_for(owner) if limit_owner else None
        if owner_rate is not None and owner_rate.count < len(entries):
            raise ApiError(422, "batch_too_large",
                           f"{len(entries)} messages exceed the {owner_rate.count}-message "
                           f"burst of {owner!r}'s rate limit; send smaller batches")
        result = await self.acceptor.accept(
            entries,
            idempotency_key=self._idem_key(idempotency) if idempotency else None,
            idempotency_record=orjson.dumps({
                "fingerprint": idempotency.fingerprint if idempotency else "",
                "status": status_code, "body": body}),
            idempotency_ttl=self.settings.idempotency_ttl_seconds,
            caller=(Charge(self.limiter.key(f"caller:{owner}"), owner_rate, len(entries))
                    if owner_rate else None),
            recipients=self._recipient_charges(requests),
        )
        if result.outcome == "rate_limited":
            raise _caller_limited(owner, result.wait)
        if result.outcome == "recipient_limited":
            raise ApiError(429, "recipient_rate_limited",
                           "too many password-reset emails to this recipient; retry later",
                           headers={"Retry-After": retry_after(result.wait)})
        if result.outcome == "full":
            if self.metrics is not None:
                self.metrics.enqueue_failures.labels("queue_full").inc()
            raise ApiError(503, "queue_full", "the send queue is full; retry later",
                           headers={"Retry-After": "10"})
        if result.outcome == "existing":
            assert idempotency is not None
            return self._replay(result.stored, idempotency)
        return None

    def _idem_key(self, idempotency: Idempotency) -> str:
        return f"{self.settings.key_prefix}:idem:{idempotency.key}"

    @staticmethod
    def _replay(stored: bytes, idempotency: Idempotency) -> tuple[int, dict[str, Any]]:
        record = orjson.loads(stored)
        if record["fingerprint"] != idempotency.fingerprint:
            raise ApiError(409, "idempotency_conflict",
                           "this Idempotency-Key was used with a different request body")
        return int(record["status"]), dict(record["body"])


def _caller_limited(subject: str, wait: float) -> ApiError:
    return ApiError(429, "rate_limited", f"too many requests for {subject!r}; retry later",
                    headers={"Retry-After": retry_after(wait)})


def _summary(details: list[dict[str, Any]]) -> str:
    first = details[0]
    more = f" (and {len(details) - 1} more)" if len(details) > 1 else ""
    return f"{first['field']}: {first['message']}{more}"
