"""Who owns a message: the name its status record is filed under and checked against.

Owners live in one namespace with a tag per kind, so no caller can choose a name that collides
with another's: ``jwt:<issuer>:<subject>`` for token callers (the issuer percent-encoded, so a
``:`` in it cannot shift the boundary), ``internal:<name>`` for the service's own entry points.
"""

from __future__ import annotations

from urllib.parse import quote

#: Messages queued from ``password_reset_events`` on Redis.
EVENTS = "internal:events"
#: Owners written before owners were tagged that no token subject may claim.
LEGACY_INTERNAL = frozenset({"events"})


def token_owner(issuer: str | None, subject: str) -> str:
    """The owner of a token caller: its issuer (empty when the token names none) and subject."""
    return f"jwt:{quote(issuer or '', safe='')}:{subject}"


def owns(stored: str, owner: str, subject: str) -> bool:
    """Whether a caller (``owner``, ``subject``) may read a status stored under ``stored``.

    Exactly its own owner; or, for statuses written before owners were tagged (untagged, kept
    for the status retention), its bare subject unless that name was an internal owner.
    """
    if stored == owner:
        return True
    untagged = not stored.startswith(("jwt:", "internal:"))
    return untagged and stored == subject and stored not in LEGACY_INTERNAL
