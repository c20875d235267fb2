"""The Dramatiq entry point of ``email-service webhooks``: ``dramatiq workers.webhook_actors``.

Each process runs the fan-out (:mod:`workers.webhook_fanout`) in a thread and the delivery actor
on the ``webhooks`` queue. An attempt signs the event per Standard Webhooks with the endpoint's
valid secrets *at the time of the attempt* (a rotation applies to retries too), POSTs it through
the SSRF guard (:mod:`workers.webhook_http`), then, in one Redis step with the removal of the
message that carried it: nothing more (delivered), the next copy on the delay queue (failed,
exponential backoff from ``WEBHOOKS_MIN_BACKOFF_SECONDS`` doubling up to
``WEBHOOKS_MAX_BACKOFF_SECONDS``, for at least ``WEBHOOKS_RETRY_FOR_SECONDS``), or a dead letter
(retries spent, or the URL no longer allowed). A deleted or disabled endpoint drops its
deliveries. As for sends, no Retries middleware: an attempt that ends unrecorded leaves its
message to the broker, which gives it back (``workers.broker``).
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any, cast

import dramatiq
import orjson
from dramatiq.broker import MessageProxy
from dramatiq.common import current_millis, dq_name
from dramatiq.middleware import CurrentMessage, Retries, default_middleware

from mailcore.config import Settings
from mailcore.logs import configure_logging
from mailcore.redisclient import sync_client
from mailcore.webhook_deadletters import dead_key, dead_record, records_key
from mailcore.webhook_endpoints import Endpoint, WebhookStore, load_declared
from mailcore.webhook_signing import signed_headers

from .broker import make_broker, mark_settled
from .heartbeat import Heartbeat
from .webhook_fanout import DELIVER_ACTOR, Endpoints, Fanout, FanoutThread
from .webhook_http import post
from .webhook_metrics import DEAD_LETTERS, DELIVERIES

log = logging.getLogger("email_service.webhooks")


# KEYS: 1 this worker's acks set of the queue, 2 queue bodies, 3 delay queue, 4 its bodies,
# 5 dead letters (sorted set), 6 their records. ARGV: 1 kind (done | retry | dead), 2 the
# copy's Redis id, 3 next copy's id, 4 its body, 5 now (ms), 6 dead id, 7 its record,
# 8 dead letters older than this (ms) are dropped.
_SETTLE = """
if redis.call('SREM', KEYS[1], ARGV[2]) == 0 then return 0 end
redis.call('HDEL', KEYS[2], ARGV[2])
if ARGV[1] == 'retry' then
  redis.call('HSET', KEYS[4], ARGV[3], ARGV[4])
  redis.call('RPUSH', KEYS[3], ARGV[3])
elseif ARGV[1] == 'dead' then
  for _, old in ipairs(redis.call('ZRANGEBYSCORE', KEYS[5], '-inf', ARGV[8], 'LIMIT', 0, 100)) do
    redis.call('HDEL', KEYS[6], old)
    redis.call('ZREM', KEYS[5], old)
  end
  redis.call('ZADD', KEYS[5], ARGV[5], ARGV[6])
  redis.call('HSET', KEYS[6], ARGV[6], ARGV[7])
end
return 1
"""

settings = Settings.from_env()
hooks = settings.webhooks
configure_logging(settings.telemetry)
_client = sync_client(settings.redis.where, "worker")
store = WebhookStore(_client, settings.redis.key_prefix)
declared = (load_declared(hooks.endpoints_file, hooks.policy)
            if hooks.endpoints_file else [])
_declared_by_id = {endpoint.id: endpoint for endpoint in declared}


def _fanout() -> Fanout:
    client = sync_client(settings.redis.where, "worker", single_connection=True)
    return Fanout(client, settings.redis.key_prefix, hooks.queue_name,
                  Endpoints(WebhookStore(client, settings.redis.key_prefix), declared))


broker = make_broker(
    settings.redis.where,
    middleware=[*(m() for m in default_middleware if m is not Retries), CurrentMessage(),
                # Heartbeat files: the chart probes these pods with `email-service probe worker`.
                Heartbeat(settings.worker.heartbeat_dir, settings.worker.heartbeat_seconds),
                FanoutThread(_fanout)],
    heartbeat_timeout_ms=settings.worker.queue_heartbeat_timeout_ms,
    maintenance_chance=settings.worker.queue_maintenance_chance)
dramatiq.set_broker(broker)
_settle_script = _client.register_script(_SETTLE)


def backoff(attempt: int) -> float:
    """Seconds before attempt ``attempt + 1``: doubling from the minimum, capped."""
    return float(min(hooks.min_backoff_seconds * 2 ** min(attempt - 1, 40),
                     hooks.max_backoff_seconds))


def webhook_body(event: dict[str, Any]) -> bytes:
    """The POSTed JSON: Standard Webhooks' ``type``, ``timestamp`` and ``data`` (the event)."""
    return orjson.dumps({"type": event["type"], "timestamp": event["timestamp"],
                         "data": event})


def _endpoint(endpoint_id: str) -> Endpoint | None:
    return _declared_by_id.get(endpoint_id) or store.get(endpoint_id)


@dramatiq.actor(actor_name=DELIVER_ACTOR, queue_name=hooks.queue_name,
                time_limit=int((hooks.connect_timeout + hooks.read_timeout) * 1000 + 30_000))
def deliver_webhook(*args: Any, **kwargs: Any) -> str:
    # The CurrentMessage middleware hands over the proxy the worker acks (typed as a Message).
    message = cast(MessageProxy, CurrentMessage.get_current_message())
    # Any arguments at all (a message not written by the fan-out must not crash the call).
    delivery: Any = args[0] if len(args) == 1 and not kwargs else None
    if not _well_formed(delivery):
        # Not ours to retry (nothing would change): dropped rather than given back forever.
        log.error("dropped a webhook delivery message that is not one",
                  extra={"redis_id": message.options.get("redis_message_id")})
        return _settle(message, "done", "dropped")
    event = delivery["event"]
    context = {"event_id": event["id"], "endpoint_id": delivery["endpoint_id"],
               "attempt": delivery["attempt"], "message_id": event.get("message_id")}
    endpoint = _endpoint(delivery["endpoint_id"])
    if endpoint is None or not endpoint.enabled:
        log.info("webhook dropped: its endpoint is gone or disabled", extra=context)
        return _settle(message, "done", "dropped")
    body = webhook_body(event)
    result = post(hooks.policy, endpoint.url, body,
                  signed_headers(endpoint.valid_secrets(), event["id"], int(time.time()), body),
                  connect_timeout=hooks.connect_timeout, read_timeout=hooks.read_timeout)
    if result.delivered:
        log.info("webhook delivered", extra={**context, "status": result.status})
        return _settle(message, "done", "delivered")
    elapsed = time.time() - float(delivery["first_attempt_at"])
    delay = backoff(int(delivery["attempt"]))
    if result.permanent or elapsed >= hooks.retry_for_seconds:
        log.error("webhook dead-lettered after %d attempt(s): %s", delivery["attempt"],
                  result.error, extra=context)
        now = time.time()
        return _settle(message, "dead", "dead", dead=(
            f"{event['id']}:{delivery['endpoint_id']}",
            dead_record(delivery, attempts=int(delivery["attempt"]), error=result.error, at=now)))
    log.warning("webhook attempt failed, retrying in %.1f s: %s", delay, result.error,
                extra=context)
    return _settle(message, "retry", "retry", next_copy=_next_copy(message, delivery, delay))


def _well_formed(delivery: object) -> bool:
    return (isinstance(delivery, dict) and isinstance(delivery.get("endpoint_id"), str)
            and isinstance(delivery.get("event"), dict)
            and isinstance(delivery["event"].get("id"), str)
            and isinstance(delivery["event"].get("type"), str)
            and isinstance(delivery["event"].get("timestamp"), str)
            and isinstance(delivery.get("attempt"), int)
            and isinstance(delivery.get("first_attempt_at"), int | float))


def _next_copy(message: MessageProxy, delivery: dict[str, Any],
               delay: float) -> tuple[str, bytes]:
    redis_id = str(uuid.uuid4())
    copy = message.copy(
        queue_name=dq_name(message.queue_name),
        args=({**delivery, "attempt": int(delivery["attempt"]) + 1},),
        options={"redis_message_id": redis_id, "eta": current_millis() + int(delay * 1000)})
    return redis_id, copy.encode()


def _settle(message: MessageProxy, kind: str, outcome: str, *,
            next_copy: tuple[str, bytes] = ("", b""),
            dead: tuple[str, bytes] = ("", b"")) -> str:
    """Record the attempt's outcome and remove the message that carried it, in one step."""
    queue = f"{broker.namespace}:{message.queue_name}"
    delayed = dq_name(queue)
    acks = f"{broker.namespace}:__acks__.{broker.broker_id}.{message.queue_name}"
    now_ms = current_millis()
    cutoff = now_ms - settings.webhooks.dead_retention_seconds * 1000
    held = _settle_script(
        keys=[acks, f"{queue}.msgs", delayed, f"{delayed}.msgs",
              dead_key(settings.redis.key_prefix), records_key(settings.redis.key_prefix)],
        args=[kind, message.options["redis_message_id"], *next_copy, now_ms, *dead, cutoff])
    mark_settled(message)
    if not held:
        return "given back"  # redelivered meanwhile: that copy decides
    DELIVERIES.labels(outcome).inc()
    if kind == "dead":
        DEAD_LETTERS.inc()
    return outcome
