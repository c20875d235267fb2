"""Permanent recipient failures feed the suppression list.

A relay that refuses a recipient with a 5xx reply at RCPT (``550 5.1.1 no such user``) will
refuse it again: the address gets a global ``hard_bounce`` entry, with the message as its
source, so neither the door nor a later attempt sends to it again. Temporary (4xx) refusals do
not count.
"""

from __future__ import annotations

import logging

import redis

from mailcore.addresses import mailbox_key
from mailcore.suppressions import Suppression, SyncSuppressionList, add_to

log = logging.getLogger("email_service.worker")


def hard_bounces(message_id: str, refused: dict[str, str]) -> list[Suppression]:
    """The entries for the recipients ``refused`` permanently (reply text starting with 5)."""
    return [Suppression(address=mailbox_key(address), reason="hard_bounce",
                        source_message_id=message_id)
            for address, reply in refused.items() if reply[:1] == "5" and "@" in address]


class HardBounces:
    """Records hard bounces (one Redis step per message; a failure is logged, not raised: the
    delivery outcome is what matters to the message).

    Parameters:
      suppressions: the suppression list (synchronous client).
    """

    def __init__(self, suppressions: SyncSuppressionList) -> None:
        self.suppressions = suppressions

    def record(self, message_id: str, refused: dict[str, str]) -> int:
        entries = hard_bounces(message_id, refused)
        if not entries:
            return 0
        try:
            with self.suppressions.client.pipeline(transaction=True) as pipe:
                for entry in entries:
                    add_to(pipe, self.suppressions.prefix, entry)
                pipe.execute()
        except redis.RedisError as exc:
            log.error("could not add hard bounces to the suppression list: %s", exc,
                      extra={"message_id": message_id, "count": len(entries)})
            return 0
        log.info("hard bounces suppressed", extra={"message_id": message_id,
                                                   "count": len(entries)})
        return len(entries)
