"""Webhook metrics of ``email-service webhooks`` (prometheus_client's multiprocess mode, served
merged by its parent with the dead-letter gauge, ``workers.webhook_command``).

- ``email_webhook_deliveries_total{outcome}``: attempts: delivered | retry | dead | dropped
- ``email_webhook_dead_letters_total``: deliveries given up on
- ``email_webhook_dead_letter_size``: those still listed (a gauge read from Redis at scrape time)
"""

from __future__ import annotations

from prometheus_client import Counter

DELIVERIES = Counter("email_webhook_deliveries", "Webhook delivery attempts, by outcome "
                     "(delivered | retry | dead | dropped)", ["outcome"])
DEAD_LETTERS = Counter("email_webhook_dead_letters", "Webhook deliveries given up on")
#: The gauge's name (collected from Redis by the webhooks command, not registered here).
DEAD_LETTER_SIZE = "email_webhook_dead_letter_size"
