"""The domain's errors: one hierarchy under :class:`EmailServiceError`.

The core raises these and knows nothing of HTTP; each adapter translates them (the ingress to a
status code and error code in ``service/errors.py``, the event listener to a log line and a
skip; the worker retries a transient delivery error and dead-letters a permanent one). Each
class names its stable machine-readable ``code``, the ``error`` of an API answer; a delivery
error's reply code from the relay is ``smtp_code``.
"""

from __future__ import annotations

from typing import Any, ClassVar


class EmailServiceError(Exception):
    """Base of every domain error.

    Parameters:
      message: a human sentence saying what is wrong (never echoing secrets).
      details: per-field problems, ``[{"field", "message"}]``.
    """

    #: The stable machine-readable code of this kind of error.
    code: ClassVar[str] = "error"

    def __init__(self, message: str, *, details: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details: list[dict[str, Any]] = details or []

    def within(self, prefix: str) -> EmailServiceError:
        """This error re-pointed at the item ``prefix`` (``messages.3``) of a larger request."""
        self.details = [{**detail, "field": f"{prefix}.{detail['field']}"}
                        for detail in self.details]
        self.message = f"{prefix}: {self.message}"
        return self


# --- the request itself is wrong: retrying it unchanged cannot succeed --------------------------

class InvalidRequest(EmailServiceError):
    """The request does not have the shape of a send (fields, types, sizes, nesting)."""

    code = "invalid_request"


class UnknownTemplate(InvalidRequest):
    """The named template does not exist."""

    code = "unknown_template"


class UnknownTemplateVersion(InvalidRequest):
    """``template_version`` names a version the store does not keep."""

    code = "unknown_template_version"


class InvalidData(InvalidRequest):
    """``data`` does not match the variables of its template."""

    code = "invalid_data"


class SenderNotAllowed(InvalidRequest):
    """``from`` uses a domain the service may not send for."""

    code = "sender_not_allowed"


class AttachmentTooLarge(InvalidRequest):
    """An attached file, or all of them together, is larger than the service accepts."""

    code = "attachment_too_large"


class BatchTooLarge(InvalidRequest):
    """More messages in one request than the caller's rate limit could ever admit."""

    code = "batch_too_large"


class InvalidSendAt(InvalidRequest):
    """``send_at`` is not an RFC 3339 date-time with a UTC offset."""

    code = "invalid_send_at"


class SendAtOutOfRange(InvalidRequest):
    """``send_at`` is in the past (beyond the allowed clock skew) or beyond the horizon."""

    code = "send_at_out_of_range"


class InvalidIdempotencyKey(InvalidRequest):
    """The ``Idempotency-Key`` is not 1-255 printable ASCII characters."""

    code = "invalid_idempotency_key"


class IdempotencyConflict(EmailServiceError):
    """The idempotency key was used before with a different request."""

    code = "idempotency_conflict"


class NotCancellable(EmailServiceError):
    """The message is no longer scheduled (dispatched, sent, cancelled already): ``status``
    says what it is now (also the ``status`` field of ``details``).

    Parameters:
      status: the message's current status.
    """

    code = "not_cancellable"

    def __init__(self, message: str, *, status: str = "",
                 details: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message, details=details or [{"field": "status", "message": status}])
        self.status = status


# --- who is asking ------------------------------------------------------------------------------

class Unauthenticated(EmailServiceError):
    """The caller could not be authenticated (missing, malformed or refused token)."""

    code = "unauthorized"


# --- not now: the same request may succeed later -----------------------------------------------

class TryLater(EmailServiceError):
    """Refused for now.

    Parameters:
      message: as for :class:`EmailServiceError`.
      retry_after: seconds after which trying again may succeed.
    """

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class StoreUnavailable(TryLater):
    """An older template version had to be read from a template store that does not answer."""

    code = "store_unavailable"


class RateLimited(TryLater):
    """The caller's request bucket is empty."""

    code = "rate_limited"


class RecipientRateLimited(TryLater):
    """A recipient has been sent too many password-reset emails lately."""

    code = "recipient_rate_limited"


class QueueFull(TryLater):
    """The send queue is at its ceiling (``MAX_QUEUE_DEPTH``)."""

    code = "queue_full"


# --- delivery: raised by transports in a worker, after the door; never an HTTP answer ---------

class DeliveryError(EmailServiceError):
    """Delivery failed. No API answer carries it (the caller had its answer when the message
    was queued), so it has no ``code`` of its own; the status records ``smtp_code``.

    Parameters:
      message: what happened, for logs and status.
      smtp_code: the server's reply code (SMTP or HTTP) when there was one.
    """

    #: What became of the attempt, when that is more than "failed" (see subclasses).
    outcome: str | None = None
    #: Whether trying again later may succeed.
    transient = True

    def __init__(self, message: str, smtp_code: int | None = None, *,
                 before_accept: bool = False, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.smtp_code = smtp_code
        #: The server's reply text, without its code.
        self.text = message
        #: The server cannot have accepted the message (it was refused before the body went
        #: out, or never reached it): another transport may take it in the same attempt.
        self.before_accept = before_accept
        #: Seconds the server asked us to wait (HTTP ``Retry-After``), when it said.
        self.retry_after = retry_after
        #: Transports that failed before this error, in a failover chain.
        self.failures: tuple[tuple[str, DeliveryError], ...] = ()
        #: The transport that raised it, when a chain knows (see ``Envelope.only_via``).
        self.via: str | None = None
        #: Recipients the server refused, each with its reply (``550 5.1.1 ...``), when known.
        self.refused: dict[str, str] = {}

    def __str__(self) -> str:
        return f"{self.smtp_code} {self.text}" if self.smtp_code else self.text


class TransientDeliveryError(DeliveryError):
    """Try again later: connection trouble, timeouts, 4xx replies."""


class UnconfirmedDeliveryError(TransientDeliveryError):
    """The whole message went out but the relay's reply never came (the connection broke or
    timed out after the final ``.``): the relay may have accepted it. Retried like any transient
    failure — with the same Message-ID, so a copy the relay did accept can be recognised — and
    recorded as ``unconfirmed``."""

    #: The attempt's outcome, for the status timeline.
    outcome = "unconfirmed"

    def __init__(self, message: str, smtp_code: int | None = None) -> None:
        # Never "before accept": failing over now could deliver the message twice.
        super().__init__(message, smtp_code)


class PermanentDeliveryError(DeliveryError):
    """Do not try again: the server refused the message for good (5xx replies)."""

    transient = False


class ConfigurationDeliveryError(PermanentDeliveryError):
    """The transport's own configuration is wrong (a refused API token or password, no TLS
    where required): every message fails alike until someone fixes it, so it is logged and
    counted loudly."""

    outcome = "misconfigured"
