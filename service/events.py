"""The ``password_reset_events`` listener: Redis Pub/Sub events become sends.

Every ingress replica subscribes and so receives every event; the event's fingerprint, used
as its idempotency key, makes exactly one replica queue it. Events published while no replica
is subscribed are lost: that is Pub/Sub's contract, kept from the service this one replaces.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import uuid
from typing import Any

import orjson
import redis.asyncio as aioredis
from opentelemetry import trace
from opentelemetry.context import Context
from redis.exceptions import RedisError

from mailcore.config import Settings
from mailcore.telemetry import extract_context, tracer

from . import legacy
from .errors import ApiError
from .sending import Idempotency, SendService

log = logging.getLogger("email_service.events")

#: Namespace for message ids derived from event fingerprints (same event → same id).
_EVENT_NAMESPACE = uuid.UUID("1f0c1e57-5e2b-4b8e-9a59-6b3f2d0e7a10")
_MAX_EVENT_BYTES = 64 * 1024


class MalformedEvent(ValueError):
    """An event that cannot become a send; logged and skipped."""


def parse_event(raw: bytes | str) -> dict[str, Any]:
    """The event as ``{email, code, timestamp?}``, or :class:`MalformedEvent` saying why."""
    if isinstance(raw, str):
        raw = raw.encode("utf-8", "replace")
    if len(raw) > _MAX_EVENT_BYTES:
        raise MalformedEvent(f"event larger than {_MAX_EVENT_BYTES} bytes")
    try:
        event = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise MalformedEvent(f"not JSON: {exc}") from None
    if not isinstance(event, dict):
        raise MalformedEvent("not a JSON object")
    return event


class EventListener:
    """Subscribes to the events channel, reconnecting with backoff when Redis goes away.

    Parameters:
      settings: channel name and Redis URL.
      service: where accepted events are checked and queued.
    """

    def __init__(self, settings: Settings, service: SendService) -> None:
        self.settings = settings
        self.service = service
        self.subscribed = asyncio.Event()

    async def run(self) -> None:
        backoff = 0.2
        while True:
            pubsub_client = aioredis.Redis.from_url(
                self.settings.redis_url, socket_connect_timeout=2, health_check_interval=10
            )
            try:
                async with pubsub_client.pubsub(ignore_subscribe_messages=True) as pubsub:
                    await pubsub.subscribe(self.settings.events_channel)
                    self.subscribed.set()
                    log.info("subscribed to %s", self.settings.events_channel)
                    backoff = 0.2
                    while True:
                        message = await pubsub.get_message(timeout=5.0)
                        if message is not None and message.get("type") == "message":
                            await self.handle(message["data"])
            except (RedisError, OSError) as exc:
                self.subscribed.clear()
                log.warning("event listener lost Redis (%s); reconnecting in %.1fs", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
            finally:
                await pubsub_client.aclose()

    async def handle(self, raw: bytes | str) -> str | None:
        """Queue one event in a trace of its own; returns the message id, or ``None``."""
        links = []
        with contextlib.suppress(MalformedEvent):
            publisher = trace.get_current_span(extract_context(parse_event(raw))).get_span_context()
            if publisher.is_valid:  # the publisher sent a traceparent: link to its span
                links.append(trace.Link(publisher))
        with tracer().start_as_current_span(
            f"{self.settings.events_channel} receive", context=Context(),
            kind=trace.SpanKind.CONSUMER, links=links,
            attributes={"messaging.system": "redis", "messaging.destination.name":
                        self.settings.events_channel},
        ):
            return await self._handle(raw)

    async def _handle(self, raw: bytes | str) -> str | None:
        try:
            event = parse_event(raw)
            send = legacy.parse_reset(event, self.settings.reset_template)
            self.service.check(send, status=400)
        except MalformedEvent as exc:
            log.warning("malformed event skipped: %s", exc)
            return None
        except ApiError as exc:
            log.warning("invalid event skipped: %s", exc.message)
            return None
        digest = hashlib.sha256(raw if isinstance(raw, bytes) else raw.encode()).hexdigest()
        # The event's own fingerprint is its idempotency key: whichever replica comes first
        # queues it, the others (and re-publishes within the window) find it already there.
        idempotency = Idempotency(key=f"event:{digest}", fingerprint=digest)
        message_id = str(uuid.uuid5(_EVENT_NAMESPACE, digest))
        for attempt in range(5):
            try:
                _, _, replay = await self.service.submit(
                    send, owner="events", source="event", idempotency=idempotency,
                    message_id=message_id, respond=lambda mid: (200, {"id": mid}),
                )
            except ApiError as exc:
                if exc.status != 503:
                    log.warning("event skipped: %s", exc.message, extra={"message_id": message_id})
                    return None
                await asyncio.sleep(0.2 * 2**attempt)
                continue
            if replay:
                log.info("duplicate event skipped (another replica or a re-publish queued it)",
                         extra={"message_id": message_id})
                return None
            return message_id
        log.error("event could not be queued (queue full); dropped",
                  extra={"message_id": message_id})
        return None
