"""Accepting a send: rate limits, then record and queue it atomically (status, idempotency
record and Dramatiq message in one Redis step). The rules a send must meet live in
:mod:`mailcore.validation`; everything refused here is a typed :mod:`mailcore.errors` error."""

from __future__ import annotations

import hashlib
import logging
import uuid
from collections.abc import Callable
from typing import Any

import orjson
import redis.asyncio as aioredis
from opentelemetry import trace

from mailcore.addresses import mailbox_key
from mailcore.config import Settings
from mailcore.errors import (
    BatchTooLarge,
    IdempotencyConflict,
    QueueFull,
    RateLimited,
    RecipientRateLimited,
)
from mailcore.idempotency import Idempotency
from mailcore.message import SendRequest
from mailcore.queue import Acceptor, Charge, Entry, send_job
from mailcore.ratelimit import EmptyBuckets, RateLimiter
from mailcore.safeguards import Safeguards
from mailcore.status import QUEUED, SCHEDULED, initial_fields
from mailcore.telemetry import inject_context, tracer
from mailcore.template_history import add_references
from mailcore.templates import Pin, TemplateRegistry
from mailcore.tokens import Caller
from mailcore.validation import Validator

from .coalescer import AcceptCoalescer
from .metrics import IngressMetrics
from .offload import OFFLOAD_MESSAGES, off_loop
from .scheduling import accept_entry
from .suppression_door import mark_suppressed, suppress_entries

log = logging.getLogger("email_service.ingress")

#: Builds the endpoint's success answer from the new message id: (status code, body).
Responder = Callable[[str], tuple[int, dict[str, Any]]]
#: The same from the ids of all the messages a request accepted and their first statuses
#: (``queued``, or ``scheduled`` for a message with ``send_at``).
BatchResponder = Callable[[list[str], list[str]], tuple[int, dict[str, Any]]]


class SendService:
    """Applies the caller and recipient limits, records and queues checked sends.

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
        self.validator = Validator(settings, registry)
        guards = settings.safeguards
        self.safeguards = Safeguards(
            sandbox_subjects=frozenset(guards.sandbox_subjects), sandbox_claim=guards.sandbox_claim,
            allowlist=guards.recipient_allowlist, redirect_to=guards.redirect_all_to)
        self.client = client
        self.acceptor = Acceptor(
            client, queue_name=settings.worker.queue_name, prefix=settings.redis.key_prefix,
            retention_seconds=settings.limits.status_retention_seconds,
            max_queue_depth=settings.limits.max_queue_depth,
            wait_replicas=settings.redis.wait_replicas,
            wait_timeout_ms=settings.redis.wait_timeout_ms,
            emit_events=settings.webhooks.enabled,
        )
        #: Group commit at the door (``ACCEPT_COALESCE``): None when turned off.
        self.coalescer = (AcceptCoalescer(
            client, self.acceptor.script, wait_replicas=settings.redis.wait_replicas,
            wait_timeout_ms=settings.redis.wait_timeout_ms)
            if settings.redis.coalesce_accepts else None)
        self.acceptor.runner = self.coalescer.run if self.coalescer else None
        self.limiter = RateLimiter(client, settings.redis.key_prefix)
        #: Callers' buckets known to be empty: their requests are refused before any work.
        self.empty = EmptyBuckets()

    def refuse_if_throttled(self, caller: Caller) -> None:
        """Raise :class:`RateLimited` at once when the caller's bucket is known to be empty."""
        left = self.empty.empty_for(caller.owner)
        if left:
            raise _caller_limited(caller, left)

    def check_batch_size(self, caller: Caller, count: int) -> None:
        """Refuse a batch larger than the caller's burst: it could never be admitted."""
        rate = self.settings.limits.rate_for(caller.subject)
        if rate is not None and count > rate.count:
            raise BatchTooLarge(f"{count} messages exceed the {rate.count}-message burst of "
                                f"{caller.subject!r}'s rate limit; send smaller batches")

    async def limit_caller(self, caller: Caller) -> None:
        """Charge a refused request to the caller's bucket: :class:`RateLimited` when it is
        empty. Accepted requests are charged inside the accept step instead."""
        rate = self.settings.limits.rate_for(caller.subject)
        if rate is None:
            return
        wait = await self.limiter.take(f"caller:{caller.owner}", rate)
        if wait:
            self.empty.remember(caller.owner, wait)
            raise _caller_limited(caller, wait)

    def _recipient_charges(self, requests: list[SendRequest]) -> tuple[Charge, ...]:
        rate = self.settings.limits.reset_limit_per_recipient
        if rate is None:
            return ()
        # One token per message per address (an address named twice in a message counts once).
        # A plain dict, not a Counter: Counter's generic update cost a few µs a request.
        reset = self.settings.templates.reset_template
        digests: dict[str, int] = {}
        for request in requests:
            if request.template != reset:
                continue
            for digest in {hashlib.sha256(mailbox_key(recipient.email).encode()).hexdigest()[:32]
                           for recipient in [*request.to, *request.cc, *request.bcc]}:
                digests[digest] = digests.get(digest, 0) + 1
        return tuple(Charge(self.limiter.key(f"reset:{digest}"), rate, tokens)
                     for digest, tokens in digests.items())

    async def submit(
        self, request: SendRequest, *, owner: str, source: str, respond: Responder,
        idempotency: Idempotency | None = None, message_id: str | None = None,
        caller: Caller | None = None,
    ) -> tuple[int, dict[str, Any], bool]:
        """Record and queue ``request``; once this returns, the message is in Redis.

        ``caller`` charges the request to its rate limit (API callers; events have none).
        Returns the answer (status code, body) and whether it is a replay of an earlier
        request with the same idempotency key.
        """
        return await self.submit_many(
            [request], owner=owner, source=source, respond=lambda ids, _: respond(ids[0]),
            idempotency=idempotency, message_ids=[message_id] if message_id else None,
            caller=caller)

    async def submit_many(
        self, requests: list[SendRequest], *, owner: str, source: str,
        respond: BatchResponder, idempotency: Idempotency | None = None,
        message_ids: list[str] | None = None, caller: Caller | None = None,
    ) -> tuple[int, dict[str, Any], bool]:
        """Record and queue all of ``requests`` or none of them (one token each from the
        owner's limit); otherwise like :meth:`submit`."""
        ids = message_ids or [str(uuid.uuid4()) for _ in requests]
        status_code, body = respond(ids, [SCHEDULED if r._due is not None else QUEUED
                                          for r in requests])
        with tracer().start_as_current_span(
            "enqueue", kind=trace.SpanKind.PRODUCER,
            attributes={"email.message_id": ids[0] if len(ids) == 1 else ids,
                        "email.template": requests[0].label if len(requests) == 1
                        else sorted({r.label for r in requests})},
        ):
            carrier = inject_context()  # the worker continues this trace

            def build() -> tuple[list[Entry], list[list[Any]]]:
                entries = []
                for message_id, asked in zip(ids, requests, strict=True):
                    # Sandbox, redirect and allow-list: the job carries what will be sent.
                    request, extra = self.safeguards.apply(asked, caller)
                    job = send_job(message_id, request.model_dump(
                        mode="json", by_alias=True, exclude_defaults=True), source=source)
                    job["trace"] = carrier
                    if request._template_key is not None:
                        job["template_key"] = request._template_key
                    recipients = [r.email for r in [*request.to, *request.cc, *request.bcc]]
                    fields = initial_fields(message_id=message_id, owner=owner,
                                            template=request.label, recipients=recipients,
                                            source=source, metadata=request.metadata,
                                            extra=extra, version=request.template_version)
                    entries.append(accept_entry(job, fields, asked, self.settings))
                return entries, [self.acceptor.encode(entry) for entry in entries]

            entries, encoded = (await off_loop(build) if len(requests) > OFFLOAD_MESSAGES
                                else build())
            # Pinned versions are kept while these messages may still be rendered.
            await add_references(self.client, self.settings.redis.key_prefix, [
                (message_id, Pin(request._template_key, request.template_version))
                for message_id, request in zip(ids, requests, strict=True)
                if request._template_key is not None and request.template_version is not None])
            replay = await self._accept(entries, encoded, requests, owner=owner,
                                        idempotency=idempotency, status_code=status_code,
                                        body=body, caller=caller)
        if replay is not None:
            return (*replay, True)
        if self.metrics is not None:
            self.metrics.accepted.labels(source).inc(len(entries))
        for entry, request in zip(entries, requests, strict=True):
            log.info("queued", extra={"message_id": entry.job["id"],
                                      "template": request.label, "source": source})
        return status_code, body, False

    async def _accept(
        self, entries: list[Entry], encoded: list[list[Any]], requests: list[SendRequest], *,
        owner: str,
        idempotency: Idempotency | None, status_code: int, body: dict[str, Any],
        caller: Caller | None,
    ) -> tuple[int, dict[str, Any]] | None:
        """Queue the entries; returns the stored answer instead when this is a replay."""
        rate = self.settings.limits.rate_for(caller.subject) if caller else None
        while True:
            result = await self.acceptor.accept(
                entries, encoded=encoded,
                idempotency_key=self._idem_key(idempotency) if idempotency else None,
                idempotency_record=orjson.dumps({
                    "fingerprint": idempotency.fingerprint if idempotency else "",
                    "status": status_code, "body": body}),
                idempotency_ttl=self.settings.limits.idempotency_ttl_seconds,
                caller=(Charge(self.limiter.key(f"caller:{owner}"), rate, len(entries))
                        if rate else None),
                recipients=self._recipient_charges(requests),
            )
            if result.outcome != "suppressed":
                break
            # Every recipient of some messages is suppressed (nothing was written): record
            # those as such, not queued, and accept again (service/suppression_door.py).
            mark_suppressed(body, suppress_entries(
                entries, encoded, result.suppressed, self.acceptor.encode,
                emit_events=self.settings.webhooks.enabled))
        if result.outcome == "rate_limited":
            assert caller is not None and rate is not None
            # ``wait`` is until the whole batch fits; the bucket is empty until one token is.
            empty_for = result.wait - (len(entries) - 1) / rate.per_second
            if empty_for > 0:
                self.empty.remember(caller.owner, empty_for)
            raise _caller_limited(caller, result.wait)
        if result.outcome == "recipient_limited":
            raise RecipientRateLimited(
                "too many password-reset emails to this recipient; retry later",
                retry_after=result.wait)
        if result.outcome == "full":
            if self.metrics is not None:
                self.metrics.enqueue_failures.labels("queue_full").inc()
            raise QueueFull("the send queue is full; retry later", retry_after=10)
        if result.outcome == "existing":
            assert idempotency is not None
            return self._replay(result.stored, idempotency)
        return None

    def _idem_key(self, idempotency: Idempotency) -> str:
        return f"{self.settings.redis.key_prefix}:idem:{idempotency.key}"

    @staticmethod
    def _replay(stored: bytes, idempotency: Idempotency) -> tuple[int, dict[str, Any]]:
        record = orjson.loads(stored)
        if record["fingerprint"] != idempotency.fingerprint:
            raise IdempotencyConflict(
                "this Idempotency-Key was used with a different request body")
        return int(record["status"]), dict(record["body"])


def _caller_limited(caller: Caller, wait: float) -> RateLimited:
    return RateLimited(f"too many requests for {caller.subject!r}; retry later", retry_after=wait)
