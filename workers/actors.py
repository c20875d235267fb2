"""The Dramatiq entry point for worker processes: ``dramatiq workers.actors``.

Importing this module configures the broker from the environment and declares the send actor,
which is what Dramatiq's worker processes expect of the module they are given.

Every way an attempt ends is recorded, with the removal of the message that carried it, in one
Redis step (``StatusStore.settle``): ``sent``; ``retrying`` with the next copy on the delay queue
(transient failures, Redis trouble during the send, an unexpected error, Dramatiq's time limit);
``failed`` or ``dead`` with the message in the dead letters. The actor decides retry or dead
itself (no Retries middleware). When that step cannot reach Redis the message is left unsettled
and the broker gives it back to the queue (``workers.broker``): redelivered, never deleted.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterable
from typing import Any, cast

import dramatiq
from dramatiq.broker import MessageProxy
from dramatiq.common import compute_backoff, current_millis, dq_name
from dramatiq.middleware import CurrentMessage, Interrupt, TimeLimitExceeded
from opentelemetry import trace
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from mailcore.config import Settings
from mailcore.logs import configure_logging
from mailcore.queue import SEND_ACTOR
from mailcore.rendering import TemplateError
from mailcore.send_time_suppression import SendTimeCheck
from mailcore.status import (
    DEAD,
    FAILED,
    FINISHED,
    RETRYING,
    SANDBOXED,
    SENT,
    SUPPRESSED,
    Attempt,
)
from mailcore.telemetry import configure_tracing, extract_context, tracer
from mailcore.transports import (
    ConfigurationDeliveryError,
    DeliveryError,
    DeliveryResult,
    PermanentDeliveryError,
    TransientDeliveryError,
)

from . import metrics
from .broker import mark_settled
from .delivery import Delivered, job_template
from .runtime import build_runtime

log = logging.getLogger("email_service.worker")

#: Redis errors that mean "briefly unreachable", worth waiting out.
REDIS_DOWN = (RedisConnectionError, RedisTimeoutError)
#: How often a worker holding a delivered message retries recording it while Redis is away.
SENT_RETRY_SECONDS = 0.2

settings = Settings.from_env()
configure_logging(settings.telemetry)
configure_tracing("worker", settings.telemetry)
runtime = build_runtime(settings)
dramatiq.set_broker(runtime.broker)


@dramatiq.actor(actor_name=SEND_ACTOR, queue_name=settings.worker.queue_name,
                time_limit=settings.worker.send_time_limit_ms)
def send_email(job: dict[str, Any]) -> None:
    # The CurrentMessage middleware hands over the proxy the worker acks (typed as a Message).
    message = cast(MessageProxy, CurrentMessage.get_current_message())
    if not isinstance(job, dict) or not isinstance(job.get("id"), str) or not job["id"]:
        # No status to record anything in: straight to the dead letters (Dramatiq's nack),
        # rather than given back to the queue again and again.
        log.error("invalid job without a message id; dead-lettered",
                  extra={"redis_id": message.options.get("redis_message_id")})
        message.fail()
        return
    # One trace from the ingress request (or the Redis event) through render and SMTP.
    with tracer().start_as_current_span(
        "send_email", context=extract_context(job.get("trace")), kind=trace.SpanKind.CONSUMER,
        attributes={"email.message_id": job["id"],
                    "email.attempt": message.options.get("retries", 0) + 1,
                    "messaging.system": "dramatiq"},
    ) as span:
        span.set_attribute("email.outcome", _send(job, message))


def _send(job: dict[str, Any], message: MessageProxy) -> str:
    """One guarded attempt, its outcome recorded; returns the outcome."""
    message_id = job["id"]
    redis_id: str = message.options["redis_message_id"]
    lease = settings.worker.send_time_limit_ms / 1000
    try:
        # The guard that makes redelivery safe: never send what the relay already accepted.
        # ... nor anyone on the suppression list (checked in the same step: withheld).
        attempt = runtime.status.begin_attempt(
            message_id, lease, redis_id, SendTimeCheck.for_job(job, job_template(job)))
    except REDIS_DOWN as exc:
        log.warning("Redis unreachable before the attempt; the message goes back to the queue: "
                    "%s", exc, extra={"message_id": message_id})
        return "unsettled"
    lease_end = time.monotonic() + lease
    if attempt.reason in FINISHED:
        return _settle(message, job, "drop", SUPPRESSED if attempt.withheld else "duplicate")
    if not attempt.proceed:  # another attempt holds the lease: look again when it ends
        wait_ms = (attempt.lease_until - time.time()) * 1000
        delay = int(min(max(wait_ms, settings.worker.retry_min_backoff_ms),
                        settings.worker.retry_max_backoff_ms))
        return _settle(message, job, "recheck", "busy",
                       next_copy=_next_copy(message, delay, message.options.get("retries", 0)))
    delivered: Delivered | None = None
    try:
        # An earlier attempt left unconfirmed pins the message to that transport.
        delivered = runtime.deliverer_for(message.queue_name).deliver(
            job, only_via=attempt.pinned, withheld=attempt.withheld)
        runtime.disarm_time_limit()
    except BaseException as exc:  # every way an attempt ends is recorded, interrupts too
        if delivered is None:
            return _failed(job, message, attempt, exc)
        # Dramatiq's time limit fired just before it was disarmed: the relay has it; record it.
    return _record_sent(job, message, delivered, lease_end)


def _record_sent(job: dict[str, Any], message: MessageProxy, delivered: Delivered,
                 lease_end: float) -> str:
    """Record ``sent`` before anything else (until it is, a crash sends the message again);
    wait out a Redis outage while this attempt's lease lasts (after it, another worker may
    send the message anyway)."""
    relay_accepted = time.perf_counter()
    result = delivered.result
    outcome = SANDBOXED if delivered.sandboxed is not None else SENT
    while True:
        try:
            if delivered.sandboxed is not None:
                runtime.status.keep_content(job["id"], delivered.sandboxed.subject,
                                            delivered.sandboxed.html, delivered.sandboxed.text)
            runtime.status.settle(
                job["id"], "sent", message.options["redis_message_id"],
                runtime.holding_for(message.queue_name),
                status=outcome, detail=_sent_detail(result), transport=result.transport,
                version=delivered.version, response=result.response,
                code=result.response[:3] or None)
            break
        except REDIS_DOWN:
            if time.monotonic() > lease_end:
                log.error("sent, but the sent status could not be recorded within the lease; "
                          "the message goes back to the queue and will be sent again",
                          extra={"message_id": job["id"]})
                return "unsettled"
            time.sleep(SENT_RETRY_SECONDS)
        except Interrupt:  # the time limit, raised just before it was disarmed: record anyway
            continue
    mark_settled(message)
    metrics.SENT_RECORD_SECONDS.observe(time.perf_counter() - relay_accepted)
    runtime.bounces.record(job["id"], result.refused)
    runtime.deliverer.report(job["id"], delivered)
    metrics.MESSAGES.labels(delivered.template, result.transport, outcome).inc()
    for failed, _ in result.failures:
        metrics.FAILOVERS.labels(failed, result.transport).inc()
    _report_misconfigured(result.failures, {"message_id": job["id"]})
    return outcome


def _failed(job: dict[str, Any], message: MessageProxy, attempt: Attempt,
            exc: BaseException) -> str:
    """Record a failed attempt: ``failed`` (permanent), ``dead`` (retries spent) or
    ``retrying`` with the next copy scheduled."""
    message_id = job["id"]
    retries = message.options.get("retries", 0)
    context = {"message_id": message_id, "attempt": attempt.attempt,
               "template": job_template(job)}
    if isinstance(exc, DeliveryError):
        # A chain's error lists each transport's failure; a single transport's is itself.
        _report_misconfigured(exc.failures or [(runtime.deliverer.transport.name, exc)],
                              context)
    if isinstance(exc, (PermanentDeliveryError, TemplateError)):
        if isinstance(exc, DeliveryError):
            runtime.bounces.record(message_id, exc.refused)
        log.error("dead-lettered: permanent failure: %s", exc, extra=context)
        return _settle(message, job, "dead", "failed", status=FAILED, detail=str(exc),
                       last_error=getattr(exc, "text", str(exc)),
                       last_code=getattr(exc, "smtp_code", None), attempt=attempt.attempt)
    if isinstance(exc, TransientDeliveryError):
        failure = exc
    elif isinstance(exc, TimeLimitExceeded):
        failure = TransientDeliveryError(
            f"interrupted: the attempt exceeded SEND_TIME_LIMIT_MS "
            f"({settings.worker.send_time_limit_ms} ms)")
    else:
        # Unexpected (a bug, a broken socket, Redis trouble mid-send, another interrupt):
        # retrying is safer than dropping the message.
        log.error("unexpected error while sending", exc_info=exc, extra=context)
        failure = TransientDeliveryError(f"{type(exc).__name__}: {exc}")
    if retries >= settings.worker.max_retries:
        log.error("dead-lettered after %d attempts: %s", retries + 1, failure, extra=context)
        return _settle(message, job, "dead", "dead", status=DEAD,
                       detail=f"gave up after {retries + 1} attempts: {failure}",
                       last_error=failure.text, last_code=failure.smtp_code,
                       attempt=attempt.attempt, outcome=failure.outcome)
    if failure.retry_after is not None:
        # The server said when to come back (429/503 Retry-After, at most an hour: see
        # transports/mailtrap.py): wait that long, even beyond our own backoff cap.
        delay = max(int(failure.retry_after * 1000), 1)
    else:
        _, delay = compute_backoff(retries, factor=settings.worker.retry_min_backoff_ms,
                                   max_backoff=settings.worker.retry_max_backoff_ms)
    log.warning("attempt %d failed, will retry in %d ms: %s", retries + 1, delay, failure,
                extra=context)
    # A transport that may have the message is where every retry must go.
    pinned = ((failure.via or runtime.deliverer.transport.name)
              if failure.outcome == "unconfirmed" else None)
    return _settle(message, job, "retry", "retry", status=RETRYING, detail=str(failure),
                   next_copy=_next_copy(message, delay, retries + 1), last_error=failure.text,
                   last_code=failure.smtp_code, attempt=attempt.attempt, outcome=failure.outcome,
                   pinned_transport=pinned)


def _report_misconfigured(failures: Iterable[tuple[str, DeliveryError]],
                          context: dict[str, Any]) -> None:
    """A refused token or password fails every message: say so loudly, once per attempt."""
    for name, error in failures:
        if isinstance(error, ConfigurationDeliveryError):
            log.error("transport %s is misconfigured: %s", name, error,
                      extra={**context, "transport": name})
            metrics.MISCONFIGURED.labels(name).inc()


def _sent_detail(result: DeliveryResult) -> str:
    if not result.failures:
        return result.response
    skipped = "; ".join(f"{name} failed before accepting: {exc}" for name, exc in result.failures)
    return f"{result.response} (via {result.transport}; {skipped})"


def _settle(message: MessageProxy, job: dict[str, Any], kind: str, label: str,
            **record: Any) -> str:
    """Record ``kind`` and remove the message in one step, then mark it settled; leave it
    unsettled (given back to the queue by the broker) when Redis cannot be reached."""
    try:
        held = runtime.status.settle(job["id"], kind, message.options["redis_message_id"],
                                     runtime.holding_for(message.queue_name), **record)
    except REDIS_DOWN as exc:
        log.warning("could not record the attempt's outcome (%s); the message goes back to "
                    "the queue: %s", label, exc, extra={"message_id": job["id"]})
        return "unsettled"
    mark_settled(message)
    if kind == "dead" and not held:
        label = "retry"  # given back meanwhile: its redelivered copy decides
    metrics.MESSAGES.labels(job_template(job), runtime.deliverer.transport.name, label).inc()
    if label == "retry":
        metrics.RETRIES.inc()
    elif kind == "dead":
        metrics.DEAD_LETTERS.labels("failed" if label == "failed" else "exhausted").inc()
    return label


def _next_copy(message: MessageProxy, delay_ms: int, retries: int) -> tuple[str, bytes]:
    """The message as it waits on the delay queue for its next attempt: (Redis id, body)."""
    redis_id = str(uuid.uuid4())
    copy = message.copy(queue_name=dq_name(message.queue_name), options={
        "redis_message_id": redis_id, "eta": current_millis() + delay_ms, "retries": retries,
        "requeue_timestamp": current_millis()})
    return redis_id, copy.encode()
