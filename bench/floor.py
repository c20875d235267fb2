"""The per-message floor of one delivery: the worker's own steps in a loop, in-process, one
thread, without Dramatiq. What the real workers cost beyond it is the framework's threads and
hand-offs; what it costs at all bounds the delivered rate on these cores."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

from mailcore.config import Settings
from mailcore.message import ACCEPTED, SendRequest
from mailcore.status import SENT, StatusStore
from mailcore.templates import TemplateRegistry, builtin_templates_dir
from mailcore.transports.smtp import SMTPTransport
from workers.delivery import Deliverer

_REQUEST = {"template": "password_reset", "to": "a@example.com",
            "data": {"email": "a@example.com", "code": "123456"}}


def measure(redis_url: str, smtp_port: int, messages: int) -> dict[str, float]:
    """CPU µs per message of each step, and of begin + deliver + record together."""
    settings = Settings.from_env({"SECRETS_DIR": "/nonexistent", "REDIS_URL": redis_url,
                                  "SENDER_EMAIL": "noreply@shop.example.com"})
    registry = TemplateRegistry.from_dir(builtin_templates_dir())
    transport = SMTPTransport("127.0.0.1", smtp_port, security="none")
    deliverer = Deliverer(settings, registry, transport)
    # As the worker runs it (WORKER_GROUP_COMMIT's default): one thread, so every call is a
    # lone call, sent at once.
    status = StatusStore.from_url(redis_url, "bench-floor", 600,
                                  group_commit=settings.worker.group_commit)
    request = SendRequest.model_validate(_REQUEST).model_dump(mode="json", by_alias=True,
                                                              exclude_defaults=True)

    def jobs() -> list[dict[str, Any]]:
        return [{"id": str(uuid.uuid4()), "request": request, "source": "api",
                 "accepted_at": time.time()} for _ in range(messages)]

    def cpu_us(step: Callable[[dict[str, Any]], Any]) -> float:
        batch = jobs()
        step(batch.pop())  # warm: connections, scripts, caches
        started = time.process_time()
        for job in batch:
            step(job)
        return round((time.process_time() - started) / len(batch) * 1e6)

    def whole(job: dict[str, Any]) -> None:
        status.begin_attempt(job["id"], 30)
        done = deliverer.deliver(job)
        status.record(job["id"], SENT, done.result.response, transport=done.result.transport,
                      version=done.version, response=done.result.response, code="250")

    try:
        return {
            "validate_job_us": cpu_us(lambda job: SendRequest.model_validate(
                job["request"], context=ACCEPTED)),
            "deliver_us": cpu_us(deliverer.deliver),  # validate, render, MIME, SMTP
            "begin_attempt_us": cpu_us(lambda job: status.begin_attempt(job["id"], 30)),
            "record_sent_us": cpu_us(lambda job: status.record(
                job["id"], SENT, "250 ok", transport="smtp", version="v", code="250")),
            "whole_us": cpu_us(whole),
        }
    finally:  # the keys written expire with the 600 s retention; the run's Redis is private
        transport.close()
        status.close()
