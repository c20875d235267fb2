"""The per-message cost of bounce handling (``python -m bench.verp``), one thread:

- ``deliver_us`` / ``deliver_verp_us``: a worker's render + build of an order confirmation
  (``Deliverer.deliver`` into a transport that keeps the envelope) without and with a VERP
  envelope sender (``BOUNCE_DOMAIN`` set): the difference is what VERP adds to every message;
- ``smtp_one_transaction_us`` / ``smtp_per_recipient_us``: a five-recipient message sent to a
  local aiosmtpd relay as one transaction (what this service does: one envelope sender per
  message) or as five (one envelope per recipient, the alternative that would bind each token
  to one recipient); on a real relay each transaction also costs two round trips;
- ``parse_postfix_dsn_us`` and ``parse_hostile_512k_ms``: the receiver reading a genuine Postfix
  report, and a 512 KiB non-report (its size limit) that flufl.bounce's detectors all scan.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

from harness.smtp import SMTPServer
from mailcore.config import Settings
from mailcore.dsn import parse_report
from mailcore.message import Recipient
from mailcore.mime import build_envelope
from mailcore.rendering import RenderedEmail
from mailcore.templates import TemplateRegistry, builtin_templates_dir
from mailcore.transports.smtp import SMTPTransport
from workers.delivery import Deliverer

from .dkim import _ORDER, _Keep

_POSTFIX_DSN = (Path(__file__).resolve().parent.parent / "tests" / "data" / "reports" /
                "postfix-local-5.1.1.eml")


def _deliver_us(settings: Settings, messages: int) -> float:
    from mailcore.message import SendRequest

    keep = _Keep()
    deliverer = Deliverer(settings, TemplateRegistry.from_dir(builtin_templates_dir()), keep)
    request = SendRequest.model_validate(_ORDER).model_dump(mode="json", by_alias=True,
                                                            exclude_defaults=True)
    jobs = [{"id": str(uuid.uuid4()), "request": request, "source": "api", "accepted_at": 0}
            for _ in range(messages + 20)]
    for job in jobs[:20]:
        deliverer.deliver(job)  # warm
    started = time.process_time()
    for job in jobs[20:]:
        deliverer.deliver(job)
    return (time.process_time() - started) / messages * 1e6


def _smtp_us(messages: int, recipients: int, per_recipient: bool) -> float:
    relay = SMTPServer()
    relay.start()
    transport = SMTPTransport("127.0.0.1", relay.port, security="none")
    rendered = RenderedEmail(subject="Your order", html="<p>Thanks</p>", text="Thanks")
    to = [Recipient(email=f"user{i}@example.com") for i in range(recipients)]
    envelope = build_envelope(message_id=str(uuid.uuid4()), rendered=rendered,
                              sender=Recipient(email="shop@example.com"), to=to)
    singles = [build_envelope(message_id=str(uuid.uuid4()), rendered=rendered,
                              sender=Recipient(email="shop@example.com"), to=[r]) for r in to]
    try:
        transport.send(envelope)  # connect once
        started = time.perf_counter()
        for _ in range(messages):
            for each in (singles if per_recipient else [envelope]):
                transport.send(each)
        return (time.perf_counter() - started) / messages * 1e6
    finally:
        transport.close()
        relay.stop()


def measure(messages: int = 300) -> dict[str, float]:
    base = {"SECRETS_DIR": "/nonexistent", "SENDER_EMAIL": "shop@example.com"}
    plain = Settings.from_env(base)
    verp = Settings.from_env({**base, "BOUNCE_DOMAIN": "bounces.example.com",
                              "BOUNCE_SECRET": "0123456789abcdef0123456789abcdef"})
    # Alternate the two runs so that drift (frequency, other load) hits both alike.
    before, after = [], []
    for _ in range(3):
        before.append(_deliver_us(plain, messages))
        after.append(_deliver_us(verp, messages))
    dsn = _POSTFIX_DSN.read_bytes()
    started = time.process_time()
    for _ in range(messages):
        parse_report(dsn)
    parse_us = (time.process_time() - started) / messages * 1e6
    hostile = (b"Subject: not a report\r\n\r\n" + b"lorem ipsum dolor sit amet " * 40 +
               b"\r\n") * 470
    started = time.process_time()
    for _ in range(5):
        parse_report(hostile[:512 * 1024])
    hostile_ms = (time.process_time() - started) / 5 * 1e3
    return {
        "deliver_us": round(min(before)), "deliver_verp_us": round(min(after)),
        "smtp_one_transaction_us": round(_smtp_us(messages // 3, 5, per_recipient=False)),
        "smtp_per_recipient_us": round(_smtp_us(messages // 3, 5, per_recipient=True)),
        "parse_postfix_dsn_us": round(parse_us), "parse_hostile_512k_ms": round(hostile_ms, 1),
    }


if __name__ == "__main__":
    print(json.dumps(measure()))
