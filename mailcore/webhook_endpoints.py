"""Webhook endpoints: what a registration may say, and where registrations are kept.

An endpoint has a URL (checked by the SSRF guard, :mod:`mailcore.webhook_targets`), an event
filter, and one or two ``whsec_`` secrets (two for an overlap period after a rotation). It is
*scoped*: an endpoint registered through the API receives the events of its owner's messages
only; one declared in the chart (``WEBHOOKS_ENDPOINTS_FILE``) is global unless it names an
``owner``.

Redis layout (``<prefix>:webhooks:...``): ``endpoint:<id>`` one JSON record each, ``owner:<owner>``
the set of an owner's ids, ``endpoints`` the set of all ids, and ``version``, a counter bumped on
every change so the fan-out reloads its cached copy only when something changed. Secrets are kept
as they are (signing needs them); Redis is the service's private store.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any, Literal

import orjson
import redis
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
)

from .errors import InvalidRequest
from .lifecycle import EVENT_TYPES
from .message import error_details
from .webhook_signing import new_secret, secret_key
from .webhook_targets import TargetPolicy

EventType = Literal["queued", "scheduled", "sent", "failed", "dead", "bounced", "complained",
                    "suppressed", "unsubscribed", "cancelled"]
assert set(EventType.__args__) == set(EVENT_TYPES)  # type: ignore[attr-defined]

_Description = Annotated[str, StringConstraints(max_length=200, pattern=r"^[^\x00-\x1f\x7f]*$")]


def _distinct(events: list[str]) -> list[str]:
    if len(set(events)) != len(events):
        raise ValueError("events must not repeat")
    return events


#: An event filter: at least one event, each once.
_Events = Annotated[list[EventType], Field(min_length=1, max_length=len(EVENT_TYPES)),
                    AfterValidator(_distinct)]
_ENDPOINT_ID = "ep_"


class EndpointSpec(BaseModel):
    """A registration (``POST /v1/webhooks``), or an endpoint of the chart's file."""

    model_config = ConfigDict(extra="forbid", strict=True)

    url: str = Field(max_length=2048)
    events: _Events
    description: _Description = ""
    enabled: bool = True


class EndpointChange(BaseModel):
    """A change (``PATCH /v1/webhooks/{id}``): any of the registration's fields."""

    model_config = ConfigDict(extra="forbid", strict=True)

    url: str | None = Field(None, max_length=2048)
    events: _Events | None = None
    description: _Description | None = None
    enabled: bool | None = None


class DeclaredEndpoint(EndpointSpec):
    """An endpoint of ``WEBHOOKS_ENDPOINTS_FILE``: also its id, its secret(s), and optionally
    the one owner whose events it receives (none: every owner's)."""

    id: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
    secrets: list[str] = Field(min_length=1, max_length=2)
    owner: str | None = Field(None, max_length=512)

    @field_validator("secrets")
    @classmethod
    def _secrets(cls, values: list[str]) -> list[str]:
        for value in values:
            secret_key(value)
        return values


def parse(model: type[BaseModel], body: Any, what: str = "") -> Any:
    """``body`` validated by ``model``; :class:`InvalidRequest` with per-field details."""
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        details = error_details(exc)
        if what:
            details = [{**d, "field": f"{what}.{d['field']}"} for d in details]
        raise InvalidRequest(f"{details[0]['field']}: {details[0]['message']}",
                             details=details) from None


@dataclass(frozen=True)
class Endpoint:
    """One endpoint as the fan-out and the API see it.

    Parameters:
      id: ``ep_...`` (API) or the id its file gives it.
      owner: whose messages' events it receives (None: everyone's; only declared ones).
      secrets: ``(secret, expires_at)`` pairs, newest first; ``expires_at`` None: no expiry.
      source: ``api`` or ``config`` (read-only through the API).
    """

    id: str
    owner: str | None
    url: str
    events: tuple[str, ...]
    description: str = ""
    enabled: bool = True
    created_at: float = 0.0
    updated_at: float = 0.0
    secrets: tuple[tuple[str, float | None], ...] = ()
    source: str = "api"
    extra: dict[str, Any] = field(default_factory=dict)

    def valid_secrets(self, now: float | None = None) -> list[str]:
        moment = time.time() if now is None else now
        return [secret for secret, expires in self.secrets if expires is None or expires > moment]

    def wants(self, kind: str, owner: str | None) -> bool:
        """Whether an event of ``kind`` about a message of ``owner`` goes to this endpoint."""
        return self.enabled and kind in self.events and (self.owner is None
                                                          or self.owner == owner)

    def view(self) -> dict[str, Any]:
        """The API's view: never the secrets (shown once, at creation or rotation)."""
        from .timestamps import rfc3339

        now = time.time()
        return {"id": self.id, "url": self.url, "events": list(self.events),
                "description": self.description, "enabled": self.enabled, "source": self.source,
                "global": self.owner is None,
                "created_at": rfc3339(self.created_at), "updated_at": rfc3339(self.updated_at),
                "secrets": [{"expires_at": rfc3339(exp) if exp is not None else None}
                            for secret, exp in self.secrets if exp is None or exp > now]}

    def record(self) -> bytes:
        return orjson.dumps({"id": self.id, "owner": self.owner, "url": self.url,
                             "events": list(self.events), "description": self.description,
                             "enabled": self.enabled, "created_at": self.created_at,
                             "updated_at": self.updated_at,
                             "secrets": [list(pair) for pair in self.secrets]})

    @classmethod
    def from_record(cls, raw: bytes) -> Endpoint:
        data = orjson.loads(raw)
        return cls(id=data["id"], owner=data["owner"], url=data["url"],
                   events=tuple(data["events"]), description=data.get("description", ""),
                   enabled=bool(data.get("enabled", True)),
                   created_at=float(data["created_at"]), updated_at=float(data["updated_at"]),
                   secrets=tuple((s, e) for s, e in data["secrets"]))


def load_declared(path: Path, policy: TargetPolicy) -> list[Endpoint]:
    """The endpoints of ``WEBHOOKS_ENDPOINTS_FILE`` (a JSON list), checked like registrations."""
    try:
        raw = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise InvalidRequest(f"WEBHOOKS_ENDPOINTS_FILE: cannot read {path}: {exc}") from None
    if not isinstance(raw, list) or len(raw) > 1000:
        raise InvalidRequest("WEBHOOKS_ENDPOINTS_FILE: must hold a JSON list of endpoints")
    endpoints = []
    seen: set[str] = set()
    for index, item in enumerate(raw):
        spec: DeclaredEndpoint = parse(DeclaredEndpoint, item, f"endpoints.{index}")
        policy.check_url(spec.url)
        if spec.id in seen:
            raise InvalidRequest(f"WEBHOOKS_ENDPOINTS_FILE: endpoint id {spec.id!r} repeats")
        seen.add(spec.id)
        endpoints.append(Endpoint(
            id=spec.id, owner=spec.owner, url=spec.url, events=tuple(spec.events),
            description=spec.description, enabled=spec.enabled,
            secrets=tuple((secret, None) for secret in spec.secrets), source="config"))
    return endpoints


class WebhookStore:
    """Registered endpoints in Redis (synchronous client).

    Parameters:
      client: a Redis client.
      prefix: the service's key prefix.
    """

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.client = client
        self.prefix = prefix

    def _key(self, *parts: str) -> str:
        return ":".join((self.prefix, "webhooks", *parts))

    def version(self) -> int:
        return int(self.client.get(self._key("version")) or 0)

    def count(self, owner: str) -> int:
        return int(self.client.scard(self._key("owner", owner)))

    def create(self, owner: str, spec: EndpointSpec) -> tuple[Endpoint, str]:
        """A new endpoint of ``owner``, and its secret (returned this once)."""
        now = time.time()
        secret = new_secret()
        endpoint = Endpoint(id=f"{_ENDPOINT_ID}{uuid.uuid4().hex}", owner=owner, url=spec.url,
                            events=tuple(spec.events), description=spec.description,
                            enabled=spec.enabled, created_at=now, updated_at=now,
                            secrets=((secret, None),))
        self._save(endpoint, new=True)
        return endpoint, secret

    def _save(self, endpoint: Endpoint, *, new: bool = False) -> None:
        with self.client.pipeline(transaction=True) as pipe:
            pipe.set(self._key("endpoint", endpoint.id), endpoint.record())
            if new:
                assert endpoint.owner is not None
                pipe.sadd(self._key("owner", endpoint.owner), endpoint.id)
                pipe.sadd(self._key("endpoints"), endpoint.id)
            pipe.incr(self._key("version"))
            pipe.execute()

    def get(self, endpoint_id: str) -> Endpoint | None:
        raw: bytes | None = self.client.get(  # type: ignore[assignment]
            self._key("endpoint", endpoint_id))
        return Endpoint.from_record(raw) if raw else None

    def owned(self, owner: str) -> list[Endpoint]:
        """The endpoints of ``owner``."""
        return self._many(self._key("owner", owner))

    def all(self) -> list[Endpoint]:
        """Every registered endpoint."""
        return self._many(self._key("endpoints"))

    def _many(self, index: str) -> list[Endpoint]:
        client: Any = self.client
        ids = sorted(raw.decode() for raw in client.smembers(index))
        if not ids:
            return []
        records = client.mget([self._key("endpoint", i) for i in ids])
        return [Endpoint.from_record(raw) for raw in records if raw]

    def update(self, endpoint: Endpoint, change: EndpointChange) -> Endpoint:
        values = {name: value for name, value in change.model_dump().items()
                  if value is not None and name in change.model_fields_set}
        if "events" in values:
            values["events"] = tuple(values["events"])
        updated = replace(endpoint, **values, updated_at=time.time())
        self._save(updated)
        return updated

    def rotate(self, endpoint: Endpoint, overlap_seconds: float) -> tuple[Endpoint, str]:
        """A new secret; the current one keeps signing for ``overlap_seconds`` (older ones
        stop: at most two are valid)."""
        now = time.time()
        secret = new_secret()
        current = endpoint.valid_secrets(now)[:1]
        kept = tuple((old, now + overlap_seconds) for old in current if overlap_seconds > 0)
        rotated = replace(endpoint, secrets=((secret, None), *kept), updated_at=now)
        self._save(rotated)
        return rotated, secret

    def delete(self, endpoint: Endpoint) -> None:
        with self.client.pipeline(transaction=True) as pipe:
            pipe.delete(self._key("endpoint", endpoint.id))
            if endpoint.owner is not None:
                pipe.srem(self._key("owner", endpoint.owner), endpoint.id)
            pipe.srem(self._key("endpoints"), endpoint.id)
            pipe.incr(self._key("version"))
            pipe.execute()
