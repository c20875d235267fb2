"""Test mode and staging safeguards, applied at the door to each accepted message.

- **Sandbox**: a request with ``"sandbox": true``, or any request of a sandboxed caller (a
  subject in ``SANDBOX_SUBJECTS``, or a token whose ``SANDBOX_CLAIM`` claim is ``true``), is
  rendered and recorded by the worker but never handed to a transport (status ``sandboxed``).
- **Redirect**: with ``REDIRECT_ALL_TO``, every message goes to that one address instead of its
  recipients (cc and bcc dropped); the status keeps the original recipients.
- **Allow-list**: with ``RECIPIENT_ALLOWLIST`` (addresses and domains), other recipients are
  withheld (the status lists them); a message left with none is refused.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson

from .errors import InvalidRequest
from .message import Recipient, SendRequest
from .tokens import Caller


class RecipientNotAllowed(InvalidRequest):
    """No recipient of the message is on the staging allow-list."""

    code = "recipient_not_allowed"


@dataclass(frozen=True)
class Safeguards:
    """The settings above, ready to apply.

    Parameters:
      sandbox_subjects: JWT subjects whose messages are always sandboxed.
      sandbox_claim: a claim that, when ``true`` in a token, sandboxes its messages.
      allowlist: lower-case addresses and domains (A-labels) mail may go to; empty: any.
      redirect_to: one address every message goes to instead.
    """

    sandbox_subjects: frozenset[str] = frozenset()
    sandbox_claim: str = "email_sandbox"
    allowlist: frozenset[str] = frozenset()
    redirect_to: str | None = None

    def caller_sandboxed(self, caller: Caller | None) -> bool:
        return caller is not None and (caller.subject in self.sandbox_subjects
                                       or caller.claims.get(self.sandbox_claim) is True)

    def allowed(self, address: str) -> bool:
        lowered = address.lower()
        return (not self.allowlist or lowered in self.allowlist
                or lowered.rpartition("@")[2] in self.allowlist)

    def apply(self, request: SendRequest, caller: Caller | None
              ) -> tuple[SendRequest, dict[str, str]]:
        """The request as it will be sent, and the status fields that say what changed."""
        fields: dict[str, str] = {}
        changes: dict[str, object] = {}
        if request.sandbox or self.caller_sandboxed(caller):
            changes["sandbox"] = True
            fields["sandbox"] = "true"
        everyone = [*request.to, *request.cc, *request.bcc]
        if self.redirect_to is not None:
            changes.update(to=[Recipient(email=self.redirect_to)], cc=[], bcc=[])
            fields["redirected_from"] = orjson.dumps([r.email for r in everyone]).decode()
        elif self.allowlist:
            withheld = [r.email for r in everyone if not self.allowed(r.email)]
            if withheld:
                kept = {key: [r for r in getattr(request, key) if self.allowed(r.email)]
                        for key in ("to", "cc", "bcc")}
                if not any(kept.values()):
                    raise RecipientNotAllowed(
                        "no recipient is on this environment's RECIPIENT_ALLOWLIST",
                        details=[{"field": "to", "message": "not on the allow-list"}])
                if not kept["to"]:  # a message needs a To: the first kept cc/bcc moves there
                    first = (kept["cc"] or kept["bcc"]).pop(0)
                    kept["to"] = [first]
                changes.update(kept)
                fields["withheld_recipients"] = orjson.dumps(withheld).decode()
        if not changes:
            return request, fields
        return request.model_copy(update=changes), fields
