"""Webhook deliveries as Dramatiq messages: one per (event, endpoint), on ``WEBHOOKS_QUEUE``.

Written straight into Dramatiq's Redis layout (``<queue>.msgs`` and the ``<queue>`` list, as the
ingress does for sends) so the writer can make it part of its own atomic step: the fan-out with
the acknowledgement of the event, a redelivery with the removal of the dead letter.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import dramatiq
import orjson

from .queue import NAMESPACE

#: The actor that delivers one event to one endpoint (``workers.webhook_actors``).
DELIVER_ACTOR = "deliver_webhook"


def delivery_message(queue_name: str, endpoint_id: str, owner: str | None,
                     event: dict[str, Any], now: float | None = None) -> tuple[str, bytes]:
    """The first attempt at delivering ``event`` to an endpoint: (Redis id, body)."""
    redis_id = str(uuid.uuid4())
    delivery = {"endpoint_id": endpoint_id, "owner": owner, "event": event,
                "first_attempt_at": time.time() if now is None else now, "attempt": 1}
    message: dramatiq.Message[Any] = dramatiq.Message(
        queue_name=queue_name, actor_name=DELIVER_ACTOR, args=(delivery,), kwargs={},
        options={"redis_message_id": redis_id}, message_id=str(uuid.uuid4()))
    return redis_id, orjson.dumps(message._asdict())


def queue_keys(queue_name: str) -> tuple[str, str]:
    """The queue's bodies hash and its list."""
    queue = f"{NAMESPACE}:{queue_name}"
    return f"{queue}.msgs", queue
