"""Worker metrics for Prometheus.

Dramatiq runs several worker processes, so counters and histograms use prometheus_client's
multiprocess mode: each process writes to ``PROMETHEUS_MULTIPROC_DIR`` and the ``email-service
worker`` parent serves the merged view on ``WORKER_METRICS_PORT`` (9191), together with queue
gauges read from Redis at scrape time.

- ``email_messages_total{template,transport,outcome}``: outcome sent | retry | failed | dead |
  duplicate (a redelivered copy of a finished message, dropped) | busy (a copy that found
  another attempt under way, looked at again later)
- ``email_render_seconds{template}``, ``email_send_seconds{transport}``: latency histograms
- ``email_unconfirmed_total{transport}``: attempts whose outcome is unknown (the connection was
  lost after the whole message went out, before the relay's reply); retried with the same
  Message-ID
- ``email_retries_total``, ``email_dead_letters_total{reason}`` (failed | exhausted)
- ``email_failovers_total{failed,delivered}``: messages delivered by a later transport of a
  ``TRANSPORTS`` chain; ``email_transport_misconfigured_total{transport}``: refused credentials
- ``email_recovered_total``: messages the sweeper re-queued (should stay 0: an alarm)
- ``email_scheduled_dispatched_total``: scheduled messages moved to their queue when due
- ``email_sent_record_seconds``: relay acceptance to ``sent`` recorded, the duplicate window
- ``email_queue_depth``, ``email_queue_delayed``, ``email_queue_in_flight``,
  ``email_queue_oldest_age_seconds``, ``email_dead_letter_queue_size``: queue gauges (with a
  ``queue`` label: each stream has its own)
"""


from __future__ import annotations

from prometheus_client import Counter, Histogram

_LATENCY = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

MESSAGES = Counter("email_messages", "Messages handled by workers, by outcome",
                   ["template", "transport", "outcome"])
RENDER_SECONDS = Histogram("email_render_seconds", "Template render time per message",
                           ["template"], buckets=_LATENCY)
SEND_SECONDS = Histogram("email_send_seconds", "Transport send time per message", ["transport"],
                         buckets=_LATENCY)
RETRIES = Counter("email_retries", "Send attempts that failed transiently and will be retried")
UNCONFIRMED = Counter("email_unconfirmed", "Sends lost after the message went out, before the "
                      "relay's reply (it may have been accepted)", ["transport"])
DEAD_LETTERS = Counter("email_dead_letters", "Messages dead-lettered, by reason", ["reason"])
FAILOVERS = Counter("email_failovers", "Messages another transport delivered after this one "
                    "failed before accepting them", ["failed", "delivered"])
MISCONFIGURED = Counter("email_transport_misconfigured", "Sends refused for the transport's own "
                        "configuration (API token, relay credentials, TLS)", ["transport"])
RECOVERED = Counter("email_recovered",
                    "Unfinished messages that no queue held, re-queued by the sweeper")
DISPATCHED = Counter("email_scheduled_dispatched",
                     "Scheduled messages moved from the schedule to their queue")
SENT_RECORD_SECONDS = Histogram(
    "email_sent_record_seconds",
    "From the relay's acceptance to the sent record in Redis (the duplicate window)",
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1, 5, 30))
