"""The aiosmtpd handler: which reports are taken, and what is recorded from them.

``RCPT``: only VERP addresses of ``BOUNCE_DOMAIN`` whose token verifies are accepted; any other
address gets ``550`` (we are no mailbox for it, and a forged token is refused before its body is
read, at the cost of one line), counted. More than ``BOUNCES_MAX_RECIPIENTS`` get ``452``.

``DATA`` (at most ``BOUNCES_MAX_MESSAGE_BYTES``, aiosmtpd answers ``552`` beyond): the report is
parsed off the event loop (:func:`mailcore.dsn.parse_report`) and each recipient it reports is
recorded against the message the token names (:func:`mailcore.bounce_record.record`). A report
that says nothing usable (not a report, malformed, an address that is not the message's) is
answered ``250`` and dropped, counted: refusing it would only make the relay try to return it to
a null sender. When Redis cannot be reached the answer is ``451``: the relay keeps the report and
tries again, so nothing is lost.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from redis.exceptions import RedisError

from mailcore.bounce_record import RECORDED, Recording, record
from mailcore.config import BounceSettings
from mailcore.dsn import MALFORMED, NOT_A_REPORT, parse_report
from mailcore.verp import read_token, token_of

from .metrics import BounceMetrics

log = logging.getLogger("email_service.bounces")


class BounceHandler:
    """Takes reports for ``BOUNCE_DOMAIN`` and records them.

    Parameters:
      settings: the bounce settings (domain, secret, bounds).
      recording: where reports are recorded.
      metrics: the receiver's counters.
      lmtp: answer DATA with one reply per recipient (LMTP).
    """

    def __init__(self, settings: BounceSettings, recording: Recording, metrics: BounceMetrics,
                 *, lmtp: bool = False) -> None:
        assert settings.domain, "the receiver needs BOUNCE_DOMAIN"
        self.domain = settings.domain
        self.secret = settings.secret_bytes
        self.settings = settings
        self.recording = recording
        self.metrics = metrics
        self.lmtp = lmtp

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,
                          rcpt_options: list[str]) -> str:
        if len(envelope.rcpt_tos) >= self.settings.max_recipients:
            self.metrics.reports.labels("too_many_recipients").inc()
            return "452 4.5.3 Too many recipients"
        token = token_of(address, self.domain)
        if token is None:
            self.metrics.reports.labels("not_our_address").inc()
            return "550 5.1.1 No such mailbox here"
        if read_token(self.secret, token) is None:
            self.metrics.reports.labels("forged").inc()
            log.warning("refused a report to a bounce address with a forged token")
            return "550 5.7.1 Unknown bounce address"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        answers = []
        raw = envelope.content if isinstance(envelope.content, bytes) else b""
        report = await asyncio.to_thread(parse_report, raw, limit=self.settings.max_reports)
        for address in envelope.rcpt_tos:
            answers.append(await self._take(address, report))
        if self.lmtp:
            return "\r\n".join(answers)
        # SMTP has one answer for all: try again later if any could not be recorded.
        return next((a for a in answers if a.startswith("4")), "250 2.0.0 OK")

    async def _take(self, address: str, report: Any) -> str:
        token = token_of(address, self.domain)
        message_id = read_token(self.secret, token) if token else None
        if message_id is None:  # checked at RCPT; kept for safety
            self.metrics.reports.labels("forged").inc()
            return "250 2.0.0 OK"
        if report.kind in (NOT_A_REPORT, MALFORMED):
            self.metrics.reports.labels(report.kind).inc()
            log.info("dropped mail to a bounce address: %s", report.kind,
                     extra={"message_id": message_id})
            return "250 2.0.0 OK"
        if not report.recipients:  # a report of success (delivered, relayed) or an empty one
            self.metrics.reports.labels("no_failures").inc()
            return "250 2.0.0 OK"
        try:
            for entry in report.recipients:
                outcome = await record(self.recording, message_id, entry, source="dsn")
                self.metrics.reports.labels(outcome).inc()
                if outcome == RECORDED:
                    self.metrics.recorded.labels(entry.kind, "dsn").inc()
                log.info("bounce report: %s", outcome, extra={
                    "message_id": message_id, "kind": entry.kind, "status": entry.status})
        except RedisError as exc:
            self.metrics.reports.labels("redis_unavailable").inc()
            log.warning("could not record a bounce report (the relay will retry): %s", exc,
                        extra={"message_id": message_id})
            return "451 4.3.0 Temporary failure, try again later"
        return "250 2.0.0 OK"
