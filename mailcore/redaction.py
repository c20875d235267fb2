"""Jobs that cannot print their data.

A send job carries the template data (a password-reset code, an order). Dramatiq and its
middleware print jobs in their own log lines (``Received args=(…)``, ``Failed to process message
send_email({…})``, ``Retrying message …``) and any ``%r`` of a job anywhere would do the same.
So the worker decodes every queue message into a :class:`RedactedJob`: the same dict, whose
``repr``/``str`` names the job and hides everything else. Nothing needs to remember to redact.
"""

from __future__ import annotations

from typing import Any

import dramatiq
from dramatiq.encoder import JSONEncoder, MessageData


class RedactedJob(dict[str, Any]):
    """A job dict whose text form is ``job(id=…, template=…)``, never its data."""

    def __repr__(self) -> str:
        request = self.get("request")
        template = request.get("template") if isinstance(request, dict) else None
        fields = [f"id={self.get('id')!s}"] + ([f"template={template!s}"] if template else [])
        return f"job({', '.join(fields)})"

    __str__ = __repr__


class RedactingEncoder(JSONEncoder):
    """Dramatiq's JSON encoder, decoding each message's dict arguments as :class:`RedactedJob`."""

    def decode(self, data: bytes) -> MessageData:
        message = super().decode(data)
        args = message.get("args")
        if isinstance(args, list | tuple):
            message["args"] = [RedactedJob(arg) if isinstance(arg, dict) else arg
                               for arg in args]
        kwargs = message.get("kwargs")
        if isinstance(kwargs, dict):
            message["kwargs"] = {key: RedactedJob(value) if isinstance(value, dict) else value
                                 for key, value in kwargs.items()}
        return message


def install() -> None:
    """Make this process decode queue messages with :class:`RedactingEncoder`."""
    dramatiq.set_encoder(RedactingEncoder())
