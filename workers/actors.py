"""The Dramatiq entry point for worker processes: ``dramatiq workers.actors``.

Importing this module configures the broker from the environment and declares the send actor,
which is what Dramatiq's worker processes expect of the module they are given.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any, NoReturn

import dramatiq
from dramatiq.middleware import CurrentMessage
from opentelemetry import trace
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from mailcore.config import Settings
from mailcore.logs import configure_logging
from mailcore.queue import SEND_ACTOR
from mailcore.rendering import TemplateError
from mailcore.status import DEAD, FAILED, RETRYING, SENT
from mailcore.telemetry import configure_tracing, extract_context, tracer
from mailcore.transports import (
    ConfigurationDeliveryError,
    DeliveryError,
    DeliveryResult,
    PermanentDeliveryError,
    TransientDeliveryError,
)

from . import metrics
from .delivery import job_template
from .runtime import build_runtime

log = logging.getLogger("email_service.worker")

#: Redis errors that mean "briefly unreachable", worth waiting out.
REDIS_DOWN = (RedisConnectionError, RedisTimeoutError)

settings = Settings.from_env()
configure_logging(settings.log_level)
configure_tracing("worker")
runtime = build_runtime(settings)
dramatiq.set_broker(runtime.broker)


class RetryLater(TransientDeliveryError, dramatiq.Retry):
    """A transient failure whose server said when to come back (``Retry-After``): Dramatiq's
    retry middleware uses ``delay`` instead of its exponential backoff."""

    def __init__(self, failure: TransientDeliveryError, delay_ms: int) -> None:
        TransientDeliveryError.__init__(self, failure.text, failure.code,
                                        before_accept=failure.before_accept,
                                        retry_after=failure.retry_after)
        self.delay = delay_ms
        self.outcome = failure.outcome
        self.failures, self.via = failure.failures, failure.via


def should_retry(retries: int, exception: BaseException) -> bool:
    """Retry transient failures (relay trouble, 4xx, Redis briefly away) until the retry budget
    is spent."""
    transient = isinstance(exception, (TransientDeliveryError, *REDIS_DOWN))
    return transient and retries < settings.max_retries


@dramatiq.actor(
    actor_name=SEND_ACTOR,
    queue_name=settings.queue_name,
    retry_when=should_retry,
    min_backoff=settings.retry_min_backoff_ms,
    max_backoff=settings.retry_max_backoff_ms,
    time_limit=settings.send_time_limit_ms,
    throws=(PermanentDeliveryError, TemplateError),
)
def send_email(job: dict[str, Any]) -> None:
    message = CurrentMessage.get_current_message()
    retries = message.options.get("retries", 0) if message else 0
    # One trace from the ingress request (or the Redis event) through render and SMTP.
    with tracer().start_as_current_span(
        "send_email", context=extract_context(job.get("trace")), kind=trace.SpanKind.CONSUMER,
        attributes={"email.message_id": job["id"], "email.attempt": retries + 1,
                    "messaging.system": "dramatiq"},
    ) as span:
        outcome = _send(job, retries, message.options.get("redis_message_id") if message else None)
        span.set_attribute("email.outcome", outcome)


def _send(job: dict[str, Any], retries: int, redis_id: str | None) -> str:
    """Guarded delivery with status records; returns the outcome (or raises for Dramatiq)."""
    message_id = job["id"]
    template = job_template(job)  # for metrics; the job is validated by deliver()
    transport = runtime.deliverer.transport.name
    status = runtime.status
    # The guard that makes redelivery safe: never send what the relay already accepted.
    attempt = status.begin_attempt(message_id, settings.send_time_limit_ms / 1000)
    if attempt.reason == "sent":
        log.warning("already sent; redelivered copy dropped", extra={"message_id": message_id})
        metrics.MESSAGES.labels(template, transport, "duplicate").inc()
        return "duplicate"
    if not attempt.proceed:
        raise TransientDeliveryError("another attempt of this message is in progress")
    context = {"message_id": message_id, "attempt": attempt.attempt, "template": template}
    try:
        delivered = runtime.deliverer.deliver(job, only_via=attempt.pinned)
    except DeliveryError as exc:
        # A chain's error lists each transport's failure; a single transport's is itself.
        _report_misconfigured(exc.failures or [(transport, exc)], context)
        _failed(job, exc, retries, redis_id, template, transport, context)
    except TemplateError as exc:
        _failed(job, exc, retries, redis_id, template, transport, context)
    except Exception as exc:
        _failed(job, exc, retries, redis_id, template, transport, context)
    _report_misconfigured(delivered.result.failures, context)
    # The relay has the message: this must be recorded before Dramatiq acknowledges, or a
    # redelivery would send it again, so wait out a short Redis outage rather than give up.
    deadline = time.monotonic() + settings.send_time_limit_ms / 1000
    while True:
        try:
            status.record(message_id, SENT, _sent_detail(delivered.result),
                          transport=delivered.result.transport, version=delivered.version,
                          response=delivered.result.response,
                          code=delivered.result.response[:3] or None)
            break
        except REDIS_DOWN:
            if time.monotonic() > deadline:
                log.error("sent, but the sent status could not be recorded", extra=context)
                raise
            time.sleep(0.2)
    metrics.MESSAGES.labels(delivered.template, delivered.result.transport, "sent").inc()
    for failed, _ in delivered.result.failures:
        metrics.FAILOVERS.labels(failed, delivered.result.transport).inc()
    return "sent"


def _failed(job: dict[str, Any], raised: Exception, retries: int, redis_id: str | None,
            template: str, transport: str, context: dict[str, Any]) -> NoReturn:
    """Record a failed attempt and raise for Dramatiq (retry, or dead-letter); called while
    ``raised`` is being handled."""
    message_id = job["id"]
    status = runtime.status
    if isinstance(raised, PermanentDeliveryError | TemplateError):
        log.error("dead-lettered: permanent failure: %s", raised, extra=context)
        status.record(message_id, FAILED, str(raised), last_error=_text(raised),
                      last_code=getattr(raised, "code", None), redis_id=redis_id)
        metrics.MESSAGES.labels(template, transport, "failed").inc()
        metrics.DEAD_LETTERS.labels("failed").inc()
        trace.get_current_span().set_attribute("email.outcome", "failed")
        raise raised
    failure = raised if isinstance(raised, TransientDeliveryError) else None
    if failure is None:
        # Unexpected (a bug, a broken socket): retrying is safer than dropping the message.
        log.exception("unexpected error while sending", extra=context)
        failure = TransientDeliveryError(f"{type(raised).__name__}: {raised}")
    if retries >= settings.max_retries:
        log.error("dead-lettered after %d attempts: %s", retries + 1, failure, extra=context)
        status.record(message_id, DEAD, f"gave up after {retries + 1} attempts: {failure}",
                      last_error=failure.text, last_code=failure.code, redis_id=redis_id,
                      outcome=failure.outcome)
        metrics.MESSAGES.labels(template, transport, "dead").inc()
        metrics.DEAD_LETTERS.labels("exhausted").inc()
    else:
        log.warning("attempt %d failed, will retry: %s", retries + 1, failure, extra=context)
        # A transport that may have the message is where every retry must go.
        pinned = (failure.via or transport) if failure.outcome == "unconfirmed" else None
        status.record(message_id, RETRYING, str(failure), last_error=failure.text,
                      last_code=failure.code, outcome=failure.outcome,
                      pinned_transport=pinned)
        metrics.MESSAGES.labels(template, transport, "retry").inc()
        metrics.RETRIES.inc()
    trace.get_current_span().set_attribute(
        "email.outcome", "dead" if retries >= settings.max_retries else "retry")
    if retries < settings.max_retries and failure.retry_after is not None:
        # The server said when to come back (429/503 Retry-After, at most an hour: see
        # transports/mailtrap.py): wait that long, even beyond our own backoff cap.
        raise RetryLater(failure, max(int(failure.retry_after * 1000), 1)) from raised
    if failure is raised:
        raise raised
    raise failure from raised


def _report_misconfigured(failures: Iterable[tuple[str, DeliveryError]],
                          context: dict[str, Any]) -> None:
    """A refused token or password fails every message: say so loudly, once per attempt."""
    for name, exc in failures:
        if isinstance(exc, ConfigurationDeliveryError):
            log.error("transport %s is misconfigured: %s", name, exc,
                      extra={**context, "transport": name})
            metrics.MISCONFIGURED.labels(name).inc()


def _sent_detail(result: DeliveryResult) -> str:
    if not result.failures:
        return result.response
    skipped = "; ".join(f"{name} failed before accepting: {exc}" for name, exc in result.failures)
    return f"{result.response} (via {result.transport}; {skipped})"


def _text(exc: Exception) -> str:
    return exc.text if isinstance(exc, DeliveryError) else str(exc)
