"""The ``password_reset_events`` listener: Redis Pub/Sub events become sends.

Every ingress replica subscribes and so receives every event; the event's fingerprint, used
as its idempotency key, makes exactly one replica queue it. Events published while no replica
is subscribed are lost: that is Pub/Sub's contract, kept from the service this one replaces.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import traceback
import uuid
from typing import Any

import orjson
from opentelemetry import trace
from opentelemetry.context import Context
from redis.exceptions import RedisError

from mailcore import owners
from mailcore.config import Settings
from mailcore.errors import EmailServiceError, QueueFull
from mailcore.idempotency import Idempotency
from mailcore.jsonlimits import check_json
from mailcore.redisclient import async_client
from mailcore.telemetry import extract_context, tracer

from . import legacy
from .sending import SendService

log = logging.getLogger("email_service.events")

#: Namespace for message ids derived from event fingerprints (same event → same id).
_EVENT_NAMESPACE = uuid.UUID("1f0c1e57-5e2b-4b8e-9a59-6b3f2d0e7a10")
_MAX_EVENT_BYTES = 64 * 1024
#: Longest W3C trace header honoured (traceparent is 55 characters; tracestate at most 512).
_MAX_TRACE_HEADER = 512
#: Longest wait between restarts of a listener that stopped unexpectedly.
_MAX_RESTART_BACKOFF = 5.0


class MalformedEvent(ValueError):
    """An event that cannot become a send; logged and skipped."""


def parse_event(raw: bytes | str) -> dict[str, Any]:
    """The event as ``{email, code, timestamp?}``, or :class:`MalformedEvent` saying why
    (never quoting the event: it carries a reset code)."""
    if isinstance(raw, str):
        raw = raw.encode("utf-8", "replace")
    if len(raw) > _MAX_EVENT_BYTES:
        raise MalformedEvent(f"event larger than {_MAX_EVENT_BYTES} bytes")
    try:
        event = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise MalformedEvent(f"not JSON: {exc.msg}") from None
    if not isinstance(event, dict):
        raise MalformedEvent("not a JSON object")
    try:
        check_json(event)
    except EmailServiceError as exc:
        raise MalformedEvent(exc.message) from None
    return event


def _publisher_links(raw: bytes | str) -> list[trace.Link]:
    """A link to the publisher's span when the event carries a usable ``traceparent``."""
    try:
        event = parse_event(raw)
    except MalformedEvent:
        return []
    carrier = {name: value for name in ("traceparent", "tracestate")
               if isinstance(value := event.get(name), str) and len(value) <= _MAX_TRACE_HEADER}
    if "traceparent" not in carrier:
        return []
    try:
        publisher = trace.get_current_span(extract_context(carrier)).get_span_context()
    except Exception:  # a propagator that trips over odd text: no link, still the event
        return []
    return [trace.Link(publisher)] if publisher.is_valid else []


def _where(exc: BaseException) -> str:
    """Type and innermost frame of an exception: enough to find the bug, nothing of the data
    (an exception's message may quote the event, and the event carries a reset code)."""
    frames = traceback.extract_tb(exc.__traceback__)
    place = f" at {frames[-1].filename}:{frames[-1].lineno}" if frames else ""
    return f"{type(exc).__name__}{place}"


class EventListener:
    """Subscribes to the events channel, reconnecting with backoff when Redis goes away.

    No event can stop it: whatever handling one event raises is logged (without the event) and
    that event skipped; :meth:`run_forever` restarts the listener should it stop anyway, and
    :attr:`ready` is false while it is not subscribed.

    Parameters:
      settings: channel name and Redis URL.
      service: where accepted events are checked and queued.
    """

    def __init__(self, settings: Settings, service: SendService) -> None:
        self.settings = settings
        self.service = service
        self.subscribed = asyncio.Event()
        #: Times the listener stopped unexpectedly and was started again.
        self.restarts = 0

    @property
    def ready(self) -> bool:
        return self.subscribed.is_set()

    async def run_forever(self) -> None:
        """Run the listener; start it again (with backoff) whenever it stops unexpectedly."""
        backoff = 0.2
        while True:
            try:
                await self.run()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.subscribed.clear()
                self.restarts += 1
                log.error("event listener stopped unexpectedly (%s); restarting in %.1fs",
                          _where(exc), backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _MAX_RESTART_BACKOFF)
            else:  # run() only returns if something is badly wrong: treat it the same way
                self.subscribed.clear()
                self.restarts += 1
                log.error("event listener returned; restarting")

    async def run(self) -> None:
        backoff = 0.2
        while True:
            pubsub_client = async_client(self.settings.redis.where, "pubsub")
            try:
                async with pubsub_client.pubsub(ignore_subscribe_messages=True) as pubsub:
                    await pubsub.subscribe(self.settings.events.channel)
                    self.subscribed.set()
                    log.info("subscribed to %s", self.settings.events.channel)
                    backoff = 0.2
                    while True:
                        message = await pubsub.get_message(timeout=5.0)
                        if message is not None and message.get("type") == "message":
                            await self.handle_safely(message.get("data", b""))
            except (RedisError, OSError) as exc:
                self.subscribed.clear()
                log.warning("event listener lost Redis (%s); reconnecting in %.1fs", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
            finally:
                self.subscribed.clear()
                await pubsub_client.aclose()

    async def handle_safely(self, raw: Any) -> str | None:
        """:meth:`handle`, with any failure logged (without the event) and the event skipped."""
        try:
            return await self.handle(raw)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.error("event skipped: handling it failed (%s)", _where(exc))
            return None

    async def handle(self, raw: bytes | str) -> str | None:
        """Queue one event in a trace of its own; returns the message id, or ``None``."""
        if not isinstance(raw, bytes | str):
            log.warning("malformed event skipped: not text")
            return None
        with tracer().start_as_current_span(
            f"{self.settings.events.channel} receive", context=Context(),
            kind=trace.SpanKind.CONSUMER, links=_publisher_links(raw),
            attributes={"messaging.system": "redis", "messaging.destination.name":
                        self.settings.events.channel},
        ):
            return await self._handle(raw)

    async def _handle(self, raw: bytes | str) -> str | None:
        try:
            event = parse_event(raw)
            send = legacy.parse_reset(event, self.settings.templates.reset_template)
            self.service.validator.check(send)
        except MalformedEvent as exc:
            log.warning("malformed event skipped: %s", exc)
            return None
        except EmailServiceError as exc:
            log.warning("invalid event skipped: %s (fields: %s)", exc.code,
                        ", ".join(sorted({str(d.get("field", ""))[:64] for d in exc.details}))
                        or "-")
            return None
        digest = hashlib.sha256(raw if isinstance(raw, bytes)
                                else raw.encode("utf-8", "surrogatepass")).hexdigest()
        # The event's own fingerprint is its idempotency key: whichever replica comes first
        # queues it, the others (and re-publishes within the window) find it already there.
        idempotency = Idempotency(key=f"event:{digest}", fingerprint=digest)
        message_id = str(uuid.uuid5(_EVENT_NAMESPACE, digest))
        for attempt in range(5):
            try:
                _, _, replay = await self.service.submit(
                    send, owner=owners.EVENTS, source="event", idempotency=idempotency,
                    message_id=message_id, respond=lambda mid: (200, {"id": mid}),
                )
            except (QueueFull, RedisError, OSError) as exc:  # not now: back off and retry
                log.warning("event not queued yet (%s); retrying",
                            getattr(exc, "code", type(exc).__name__),
                            extra={"message_id": message_id})
                await asyncio.sleep(0.2 * 2**attempt)
                continue
            except EmailServiceError as exc:
                log.warning("event skipped: %s", exc.code, extra={"message_id": message_id})
                return None
            if replay:
                log.info("duplicate event skipped (another replica or a re-publish queued it)",
                         extra={"message_id": message_id})
                return None
            return message_id
        log.error("event could not be queued (queue full or Redis unavailable); dropped",
                  extra={"message_id": message_id})
        return None
