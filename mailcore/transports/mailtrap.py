"""Delivery through Mailtrap's Email Sending API (``POST /api/send``), with a pooled httpx client.

The official ``mailtrap`` SDK is not used: it builds ``https://host:port`` itself (no plain-HTTP
base URL for a proxy or a local stand-in), and its errors carry neither ``Retry-After`` nor the
difference between "never reached Mailtrap" and "sent, answer lost" that failover and the
no-duplicate rule need. One ``httpx.Client`` is shared by every worker thread (its pool is
thread-safe), so a burst reuses TLS connections as the SMTP transport reuses sessions.
"""

from __future__ import annotations

import base64
import email.utils
import time
from collections.abc import Mapping
from typing import Any

import httpx
import orjson

from ..mime import Content, Envelope
from .base import (
    ConfigurationDeliveryError,
    DeliveryResult,
    PermanentDeliveryError,
    TransientDeliveryError,
    Transport,
    UnconfirmedDeliveryError,
)

#: Hosts of the documented API.
SEND_URL = "https://send.api.mailtrap.io"
BULK_URL = "https://bulk.api.mailtrap.io"
SANDBOX_URL = "https://sandbox.api.mailtrap.io"
#: Longest ``Retry-After`` honoured, in seconds (a longer one falls back to our backoff cap).
MAX_RETRY_AFTER = 3600.0
#: Longest provider error text kept for the status.
_MAX_ERROR_TEXT = 500


class MailtrapTransport(Transport):
    """Delivers through Mailtrap's sending API (transactional, bulk or a sandbox inbox).

    Parameters:
      token: the API token (sent as ``Authorization: Bearer``).
      base_url: scheme and host; ``SEND_URL``, ``BULK_URL`` or ``SANDBOX_URL`` (or a proxy).
      inbox_id: a sandbox inbox: the path becomes ``/api/send/<inbox_id>``.
      timeout: seconds for connecting, writing and waiting for the answer.
      transport: an httpx transport (tests); the default opens real connections.
    """

    name = "mailtrap"

    def __init__(self, token: str, *, base_url: str = SEND_URL, inbox_id: str | None = None,
                 timeout: float = 30.0, transport: httpx.BaseTransport | None = None) -> None:
        self.url = base_url.rstrip("/") + (f"/api/send/{inbox_id}" if inbox_id else "/api/send")
        self._client = httpx.Client(
            timeout=httpx.Timeout(timeout),
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=16),
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json",
                     "Accept": "application/json", "User-Agent": "email-service"},
            transport=transport,
        )

    def send(self, envelope: Envelope) -> DeliveryResult:
        if envelope.content is None:
            raise PermanentDeliveryError("the mailtrap transport needs the message's parts")
        body = orjson.dumps(request_body(envelope.message_id, envelope.content))
        try:
            response = self._client.post(self.url, content=body)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            raise TransientDeliveryError(f"cannot reach Mailtrap: {_describe(exc)}",
                                         before_accept=True) from exc
        except (httpx.WriteError, httpx.WriteTimeout) as exc:
            # The request never went out whole: Mailtrap cannot have acted on it.
            raise TransientDeliveryError(f"request to Mailtrap not sent: {_describe(exc)}",
                                         before_accept=True) from exc
        except (httpx.ReadError, httpx.ReadTimeout, httpx.RemoteProtocolError) as exc:
            raise UnconfirmedDeliveryError(
                f"unconfirmed: the request went out but Mailtrap's answer was lost; it may have "
                f"been accepted ({_describe(exc)})") from exc
        except httpx.HTTPError as exc:
            raise TransientDeliveryError(f"Mailtrap request failed: {_describe(exc)}") from exc
        return _result(response)

    def close(self) -> None:
        self._client.close()


def request_body(message_id: str, content: Content) -> dict[str, Any]:
    """The documented JSON body of ``POST /api/send``."""
    body: dict[str, Any] = {
        "from": _address(content.sender),
        "to": [_address(r) for r in content.to],
        "subject": content.subject,
        "text": content.text,
        # Our id travels as a header, as in SMTP mail, so a copy can be traced back.
        "headers": {**content.headers, "X-Email-Service-Id": message_id},
        "custom_variables": {**content.metadata, "email_service_id": message_id},
    }
    if content.html:
        body["html"] = content.html
    if content.cc:
        body["cc"] = [_address(r) for r in content.cc]
    if content.bcc:
        body["bcc"] = [_address(r) for r in content.bcc]
    if content.reply_to is not None:
        body["reply_to"] = _address(content.reply_to)
    if content.tags:
        # Mailtrap takes one category; all tags stay in a header.
        body["category"] = content.tags[0]
        body["headers"]["X-Email-Service-Tags"] = ", ".join(content.tags)
    if content.attachments:
        body["attachments"] = [{
            "content": base64.b64encode(a.content).decode("ascii"),
            "filename": a.filename, "type": a.content_type, "disposition": a.disposition,
            **({"content_id": a.content_id} if a.content_id else {}),
        } for a in content.attachments]
    return body


def _address(recipient: Any) -> dict[str, str]:
    return {"email": recipient.email, **({"name": recipient.name} if recipient.name else {})}


def _result(response: httpx.Response) -> DeliveryResult:
    status = response.status_code
    if 200 <= status < 300:
        ids = _json(response).get("message_ids") or []
        return DeliveryResult(transport="mailtrap",
                              response=f"{status} message_ids={','.join(map(str, ids))}")
    message = provider_message(response)
    if status in (401, 403):
        # Our account, not the message: every send fails alike until someone fixes it.
        what = "the API token" if status == 401 else "this account's request"
        raise ConfigurationDeliveryError(
            f"Mailtrap refused {what} (check MAILTRAP_API_TOKEN and the sending domain): "
            f"{message}", status, before_accept=True)
    if status == 429 or status == 408 or status >= 500:
        raise TransientDeliveryError(f"Mailtrap answered {status}: {message}", status,
                                     before_accept=True,
                                     retry_after=retry_after(response.headers))
    raise PermanentDeliveryError(f"Mailtrap refused the message: {message}", status)


def provider_message(response: httpx.Response) -> str:
    """Mailtrap's ``errors`` (a list, or a map of field to list) as one line."""
    data = _json(response)
    errors = data.get("errors", data.get("error"))
    if isinstance(errors, list):
        text = "; ".join(str(e) for e in errors)
    elif isinstance(errors, dict):
        text = "; ".join(f"{k}: {v}" for k, v in errors.items())
    elif errors:
        text = str(errors)
    else:
        text = response.text.strip() or response.reason_phrase
    return " ".join(text.split())[:_MAX_ERROR_TEXT]


def retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """``Retry-After`` in seconds (delta-seconds or an HTTP date), bounded; None if absent."""
    raw = headers.get("retry-after", "").strip()
    if not raw:
        return None
    if raw.isdigit():
        seconds = float(raw)
    else:
        try:
            when = email.utils.parsedate_to_datetime(raw)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        data = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return {}
    return data if isinstance(data, dict) else {}


def _describe(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
