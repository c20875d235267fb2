"""The bounce receiver's metrics, in a registry of its own, served at ``/metrics``.

- ``email_bounce_reports_total{outcome}``: what became of each (report, address) received:
  ``recorded``, ``duplicate``, ``unknown_message``, ``unmatched_recipient``, ``not_a_report``,
  ``malformed``, ``no_failures`` (a report of success); refused at RCPT: ``forged`` (a bounce
  address whose token does not verify), ``not_our_address``, ``too_many_recipients``;
  ``redis_unavailable`` (answered 451: the relay retries).
- ``email_bounces_total{kind,source}``: bounces and complaints recorded (``hard``, ``soft``,
  ``complaint``; ``dsn`` or ``mailtrap``).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, generate_latest


class BounceMetrics:
    """The receiver's collectors."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.reports = Counter("email_bounce_reports", "Delivery reports received, by outcome",
                               ["outcome"], registry=self.registry)
        self.recorded = Counter("email_bounces", "Bounces and complaints recorded",
                                ["kind", "source"], registry=self.registry)

    def exposition(self) -> bytes:
        return bytes(generate_latest(self.registry))
