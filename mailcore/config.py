"""Configuration from the environment: every variable the service reads, in groups.

Names of the services this one replaces are kept (``REDIS_HOST``, ``SMTP_HOST``, ``JWT_SECRET``…).
Any secret may instead come from ``<NAME>_FILE`` or from ``/run/secrets/<lowercase name>``.
An invalid value raises :class:`ConfigError` whose text names the variable, so a process can stop
with one clear line.

Each group is a frozen dataclass whose fields are declared once with :func:`setting` (variable,
default, parser, documentation); :class:`Settings` composes them. The README's configuration
table is generated from these declarations (``python -m mailcore.settings_table``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any, Literal, cast
from urllib.parse import quote, urlsplit

from .addresses import ascii_domain, normalize_address
from .envfields import (
    ConfigError,
    Environment,
    choice,
    directory,
    file,
    flag,
    header_text,
    integer,
    names,
    number,
    path,
    read_group,
    setting,
    text,
    variables,
)
from .ratelimit import Rate, parse_rate
from .render_budget import RenderLimits
from .sentinel import SentinelSettings, parse_master, parse_sentinels
from .streams import STREAM_NAMES, stream_queues
from .webhook_settings import WebhookSettings

__all__ = ["ALIASES", "SECRET_NAMES", "Brand", "ConfigError", "Settings", "redis_configured"]

SmtpSecurity = Literal["starttls", "ssl", "none"]
TransportName = Literal["smtp", "outbox", "mailtrap"]
TRANSPORT_NAMES: tuple[TransportName, ...] = ("smtp", "outbox", "mailtrap")

#: Names of the order-confirmation service this one replaces (seed 2) -> our native names.
#: Either may be set; both with different values is a start-up error.
ALIASES = {"EMAIL_SENDER": "SENDER_EMAIL", "COMPANY_NAME": "BRAND_NAME"}
#: Mailtrap's hosts (transactional, bulk stream, sandbox inboxes).
MAILTRAP_SEND_URL = "https://send.api.mailtrap.io"
MAILTRAP_BULK_URL = "https://bulk.api.mailtrap.io"
MAILTRAP_SANDBOX_URL = "https://sandbox.api.mailtrap.io"
#: Room in a request body for everything but the attachments' base64.
BODY_ROOM = 32 * 1024

#: The relay's port for each ``SMTP_SECURITY`` when ``SMTP_PORT`` is unset.
SMTP_PORTS = {"starttls": "587", "ssl": "465", "none": "25"}


# --- parsers of this service's own kinds of values ----------------------------------------------

def _email(raw: str) -> str:
    return normalize_address(raw)


def _domains(raw: str) -> frozenset[str]:
    """Comma-separated domain names, in the form addresses carry (A-labels)."""
    try:
        return frozenset(ascii_domain(d) for d in names(raw))
    except ValueError as exc:
        raise ValueError(exc.args[0].replace("address", "domain")) from None


def _currency(raw: str) -> str:
    if re.fullmatch(r"[A-Za-z]{3}", raw) is None:
        raise ValueError(f"must be a three-letter ISO 4217 code such as USD, got {raw!r}")
    return raw.upper()


def _locale(raw: str) -> str:
    if re.fullmatch(r"[A-Za-z]{2,3}(?:[-_][A-Za-z0-9]{2,8}){0,4}", raw) is None:
        raise ValueError(f"must be a language tag such as en-US, got {raw!r}")
    return raw.replace("_", "-")  # BCP 47 spelling, as the HTML's lang wants it


def _rate(raw: str) -> Rate | None:
    return parse_rate(raw)


def _rate_overrides(raw: str) -> Mapping[str, Rate | None]:
    """``subject=RATE,subject=RATE`` (a rate or ``off``)."""
    overrides: dict[str, Rate | None] = {}
    for item in names(raw):
        subject, sep, rate = item.partition("=")
        if not sep or not subject.strip():
            raise ValueError(f"expected subject=RATE pairs, got {item!r}")
        try:
            overrides[subject.strip()] = parse_rate(rate)
        except ValueError as exc:
            raise ValueError(f"{subject.strip()}: {exc}") from None
    return overrides


def _redis_url(raw: str) -> str:
    scheme = urlsplit(raw).scheme
    if scheme not in {"redis", "rediss", "unix"}:
        raise ValueError(f"scheme must be redis, rediss or unix, got {scheme!r}")
    return raw


def _namespaces(raw: str) -> tuple[str, ...]:
    found = names(raw)
    for name in found:
        if name != "*" and not re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", name):
            raise ValueError(f"{name!r} is not a namespace name (or *)")
    if not found:
        raise ValueError("name at least one namespace (or *)")
    return found


def _optional_email(raw: str) -> str:
    return normalize_address(raw) if raw else ""


def _transport_names(raw: str) -> tuple[str, ...]:
    found = names(raw.lower())
    for name in found:
        if name not in TRANSPORT_NAMES:
            raise ValueError(f"{name!r} is not one of {', '.join(TRANSPORT_NAMES)}")
    if not found:
        raise ValueError("name at least one transport")
    return found


def _http_url(raw: str) -> str:
    parts = urlsplit(raw)
    if parts.scheme not in {"http", "https"} or not parts.netloc:
        raise ValueError(f"must be an http(s) URL, got {raw!r}")
    return raw.rstrip("/")


def _digits(raw: str) -> str:
    if not raw.isdigit():
        raise ValueError(f"must be a number (the inbox id), got {raw!r}")
    return raw


def _recipients(raw: str) -> frozenset[str]:
    """Comma-separated addresses and domains, lower-case, as addresses carry them."""
    found = set()
    for part in names(raw):
        try:
            found.add(normalize_address(part).lower() if "@" in part else ascii_domain(part))
        except ValueError as exc:
            raise ValueError(f"{part!r}: {exc}") from None
    return frozenset(found)


def _mailtrap_url(seen: Mapping[str, Any]) -> str:
    if seen.get("MAILTRAP_SANDBOX_INBOX_ID"):
        return MAILTRAP_SANDBOX_URL
    return MAILTRAP_BULK_URL if seen.get("MAILTRAP_BULK") else MAILTRAP_SEND_URL


def _attachments_fit(max_body: int) -> int:
    """What all files of a message may weigh so that their base64 fits ``max_body``."""
    return max((max_body - BODY_ROOM) * 3 // 4, 0)


_port = integer(low=1, high=65535)
_optional_port = integer(low=0, high=65535)


# --- the groups ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class RedisSettings:
    """Where Redis is, and the keys this service owns there."""

    given_url: str | None = setting(
        "REDIS_URL", None, "`redis://`, `rediss://` or `unix://` URL; wins over the four below.",
        _redis_url, secret=True)
    #: Redis behind Sentinel: every client follows the primary (``where``).
    sentinels: tuple[tuple[str, int], ...] | None = setting(
        "REDIS_SENTINELS", None, "Redis behind Sentinel: `host:port,host:port` (IPv6 as "
        "`[::1]:26379`; at most 16, no empty or repeated entries). Every process then asks the "
        "sentinels for the current primary, and again when a connection breaks or meets a "
        "demoted one. Not with `REDIS_URL` or `REDIS_HOST` (a start-up error); `REDIS_DB` and "
        "`REDIS_PASSWORD` (the data nodes') apply.", parse_sentinels)
    sentinel_master: str = setting("REDIS_SENTINEL_MASTER", "mymaster", "The name the sentinels "
                                   "monitor the primary under.", parse_master)
    sentinel_password: str | None = setting(
        "REDIS_SENTINEL_PASSWORD", None, "The sentinels' own password (`requirepass` in "
        "sentinel.conf), if any.", text, secret=True)
    # Not read at all when REDIS_URL is set: Kubernetes gives pods of a namespace with a Service
    # named "redis" REDIS_PORT=tcp://<ip>:6379, which is no port number (nor behind Sentinel).
    host: str = setting("REDIS_HOST", "127.0.0.1", "Redis host.", text, unless="REDIS_URL")
    port: int = setting("REDIS_PORT", "6379", "Redis port.", _port,
                        unless=("REDIS_URL", "REDIS_SENTINELS"))
    db: int = setting("REDIS_DB", "0", "Redis database.", integer(low=0), unless="REDIS_URL")
    password: str | None = setting("REDIS_PASSWORD", None, "Redis password.", text, secret=True,
                                   unless="REDIS_URL")
    #: Prefix of every Redis key this service owns (queues use Dramatiq's own namespace).
    key_prefix: str = setting("KEY_PREFIX", "email-service",
                              "Prefix of every Redis key the service owns.", text)
    #: After accepting a message, wait until this many replicas have it (Redis ``WAIT``).
    wait_replicas: int = setting(
        "REDIS_WAIT_REPLICAS", "0", "After accepting a message, wait (Redis `WAIT`) until this "
        "many replicas have it; fewer within `REDIS_WAIT_TIMEOUT_MS` answers 503 (see "
        "Guarantees). `0`: answer once the primary has it.", integer(low=0, high=16))
    wait_timeout_ms: int = setting("REDIS_WAIT_TIMEOUT_MS", "100", "How long the door waits for "
                                   "those replicas.", integer(low=1, high=60_000))
    #: Concurrent accepts of one ingress process share Redis round trips (service/coalescer.py).
    coalesce_accepts: bool = setting(
        "ACCEPT_COALESCE", "true", "Group commit at the door: requests arriving while an accept "
        "is in flight go to Redis together, one pipeline, each decided on its own as before. "
        "`false`: one round trip per request.", flag)

    @property
    def sentinel(self) -> SentinelSettings | None:
        """The Sentinel set, when ``REDIS_SENTINELS`` names one."""
        if self.sentinels is None:
            return None
        return SentinelSettings(sentinels=self.sentinels, master=self.sentinel_master,
                                sentinel_password=self.sentinel_password,
                                password=self.password, db=self.db)

    @property
    def where(self) -> str | SentinelSettings:
        """What every client connects to (``mailcore.redisclient``): the Sentinel set, or
        :attr:`url`."""
        return self.sentinel or self.url

    @property
    def url(self) -> str:
        """``REDIS_URL``, or the URL the four parts make."""
        if self.given_url is not None:
            return self.given_url
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        return f"redis://{auth}{self.host}:{self.port}/{self.db}"


@dataclass(frozen=True)
class SmtpSettings:
    """The relay the SMTP transport delivers through."""

    security: SmtpSecurity = setting("SMTP_SECURITY", "starttls", "`starttls`, `ssl` or `none`.",
                                     cast(Any, choice("starttls", "ssl", "none")))
    host: str = setting("SMTP_HOST", "localhost", "The relay.", text)
    port: int = setting("SMTP_PORT", "587", "The relay's port.", _port,
                        shown="587 (465 for `ssl`, 25 for `none`)",
                        fallback=lambda seen: SMTP_PORTS[seen["SMTP_SECURITY"]])
    username: str | None = setting("SMTP_USERNAME", None, "AUTH user name.", text, secret=True)
    password: str | None = setting("SMTP_PASSWORD", None, "AUTH password.", text, secret=True)
    #: Seconds for connect and for each SMTP command.
    timeout: float = setting("SMTP_TIMEOUT", "30",
                             "Seconds for connecting and for each SMTP command.", number(low=0.1))
    #: CA bundle to trust for the relay's certificate (a private CA); system store otherwise.
    ca_file: Path | None = setting("SMTP_CA_FILE", None, "CA bundle for a relay whose "
                                   "certificate a private CA signed.", file,
                                   shown="system trust store")


@dataclass(frozen=True)
class SenderSettings:
    """Who the mail is from."""

    email: str = setting("SENDER_EMAIL", "no-reply@example.com", "The `From` address of every "
                         "message (ASCII local part; an internationalised domain is sent as "
                         "A-labels).", _email)
    name: str = setting("SENDER_NAME", "Example", "The `From` display name.", header_text)
    #: Domains a caller's ``from`` may use; the sender's own domain is always allowed.
    allowed_domains: frozenset[str] = setting(
        "ALLOWED_SENDER_DOMAINS", "", "Comma-separated domains a caller's `from` may use besides "
        "the sender's own (U-labels or A-labels; compared as A-labels).", _domains)

    def domain_allowed(self, address: str) -> bool:
        domain = address.rpartition("@")[2].lower()
        return domain == self.email.rpartition("@")[2].lower() or domain in self.allowed_domains


@dataclass(frozen=True)
class Brand:
    """Values templates use for branding (``{{ brand.name }}`` …)."""

    name: str = setting("BRAND_NAME", "Example", "Brand name for templates.", text,
                        shown="`SENDER_NAME`", fallback=lambda seen: seen["SENDER_NAME"])
    url: str = setting("BRAND_URL", "https://example.com", "Brand link for templates.", text)
    logo_url: str = setting("BRAND_LOGO_URL", "", "Brand logo for templates.", text)
    color: str = setting("BRAND_COLOR", "#2563eb", "Brand colour for templates.", text)
    support_email: str = setting("SUPPORT_EMAIL", "", "Support address for templates.",
                                 _optional_email)
    #: ISO 4217 code the ``money`` filter uses when the data names no currency.
    currency: str = setting("DEFAULT_CURRENCY", "USD", "ISO 4217 code of prices whose data "
                            "names no currency (the `money` filter).", _currency)
    #: Language tag of messages sent without a ``locale`` (the HTML's ``lang``, number formats).
    locale: str = setting("DEFAULT_LOCALE", "en-US", "Language tag of messages sent without a "
                          "`locale` (the HTML's `lang`, the `money` filter's formats).", _locale)


@dataclass(frozen=True)
class AuthSettings:
    """Who may call: token keys and claims."""

    secret: str | None = setting("JWT_SECRET", None, "HS256 secret. The service refuses to start "
                                 "without token keys (except `email-service dev`).", text,
                                 secret=True, shown="— (required)")
    audience: str | None = setting("JWT_AUDIENCE", None, "`aud` enforced when set.", text)
    issuer: str | None = setting("JWT_ISSUER", None, "`iss` enforced when set.", text)
    #: RS256/ES256 keys: a JWKS URL (cached, refreshed on an unknown ``kid``) or file.
    jwks_url: str | None = setting("JWT_JWKS_URL", None, "Public keys (JWKS) for RS256/ES256 "
                                   "tokens, replacing or complementing `JWT_SECRET`.", text)
    jwks_file: Path | None = setting("JWT_JWKS_FILE", None, "The same keys from a file.", file)
    #: Seconds of clock skew tolerated on ``exp``/``nbf``/``iat``.
    leeway_seconds: int = setting("JWT_LEEWAY_SECONDS", "30",
                                  "Clock skew tolerated on `exp`/`nbf`/`iat`, in seconds.",
                                  integer(low=0, high=300))
    #: Longest validity a token may claim, in seconds; unbounded when unset.
    max_lifetime: int | None = setting(
        "JWT_MAX_LIFETIME", None, "Longest validity a token may claim, in seconds: `exp - iat`, "
        "or `exp - now` without `iat`.", integer(low=1), shown="— (unbounded)")
    required_scope: str | None = setting("JWT_REQUIRED_SCOPE", None, "Scope a token needs to "
                                         "send (`scope` or `scp` claim).", text)
    admin_scope: str = setting("ADMIN_SCOPE", "email:admin", "Scope for the dead-letter "
                               "endpoints.", text)
    #: Development mode: allows starting without a JWT secret (``email-service dev`` mints one).
    dev_mode: bool = setting("EMAIL_SERVICE_DEV", "false", "Development mode (set by "
                             "`email-service dev`): no token keys required.", flag)

    def require_keys(self) -> None:
        """Refuse to serve without token keys (a secret or a JWKS), unless in development mode."""
        if not (self.secret or self.jwks_url or self.jwks_file or self.dev_mode):
            raise ConfigError(
                "JWT_SECRET: required (or JWT_SECRET_FILE, or /run/secrets/jwt_secret, or "
                "JWT_JWKS_URL/JWT_JWKS_FILE); the service never serves with a placeholder secret"
            )


@dataclass(frozen=True)
class HttpSettings:
    """The ingress's listener and the bounds on each request."""

    host: str = setting("HOST", "0.0.0.0", "Address `email-service api` listens on (`--host`).",
                        text)
    port: int = setting("PORT", "8000", "Port `email-service api` listens on (`--port`).", _port)
    #: Largest accepted request body, in bytes.
    max_body_bytes: int = setting("MAX_BODY_BYTES", "1048576", "Largest request body, in bytes.",
                                  integer(low=1024))
    #: Seconds a client has to send its request line and headers, and then its body.
    header_timeout_seconds: float = setting(
        "HTTP_HEADER_TIMEOUT_SECONDS", "10", "Time a client has for its request line and headers "
        "(from connecting, or from the previous answer); 408 after.", number(low=0.1))
    body_timeout_seconds: float = setting(
        "HTTP_BODY_TIMEOUT_SECONDS", "30", "Time a client then has for its body; 408 after.",
        number(low=0.1))
    keepalive_seconds: int = setting("HTTP_KEEPALIVE_SECONDS", "5", "Idle keep-alive "
                                     "connections are closed after this.", integer(low=1))
    #: Largest request head (request line and headers), in bytes: 431 beyond.
    max_header_bytes: int = setting(
        "HTTP_MAX_HEADER_BYTES", "16384", "Largest request head (line and headers): 431 and the "
        "connection is closed.", integer(low=1024, high=1024 * 1024))
    #: Connections plus requests in progress beyond which new requests get 503.
    max_concurrency: int = setting(
        "HTTP_MAX_CONCURRENCY", "1000", "Connections plus requests in progress per ingress "
        "process; beyond it, 503.", integer(low=1))
    #: Processes of `email-service api` sharing its port (SO_REUSEPORT), one core each.
    processes: int = setting(
        "HTTP_PROCESSES", "1", "Processes of `email-service api` sharing its port, each on a "
        "core of its own (`--processes`; README: Ingress processes).", integer(low=1, high=64))


@dataclass(frozen=True)
class EventSettings:
    """The Redis event listener inside ``email-service api``."""

    enabled: bool = setting("EVENTS_ENABLED", "true", "Listen for password-reset events on "
                            "Redis.", flag)
    channel: str = setting("EVENTS_CHANNEL", "password_reset_events", "The Pub/Sub channel.",
                           text)


@dataclass(frozen=True)
class LimitSettings:
    """How much each caller may send, and how long the service remembers."""

    #: Requests per caller (JWT subject); ``None`` means unlimited.
    rate_limit: Rate | None = setting("RATE_LIMIT", "6000/minute", "Per-caller (JWT subject) "
                                      "limit; `off` disables.", _rate)
    rate_limit_overrides: Mapping[str, Rate | None] = setting(
        "RATE_LIMIT_OVERRIDES", "", "Per-caller exceptions as `subject=RATE,…` (`off` allowed).",
        _rate_overrides)
    #: Password-reset sends per recipient address.
    reset_limit_per_recipient: Rate | None = setting(
        "RESET_LIMIT_PER_RECIPIENT", "5/hour", "Password-reset emails per recipient mailbox "
        "(case, Unicode forms, IDN spellings and `+tag` folded).", _rate)
    #: Waiting messages beyond which the ingress answers 503 (0: no ceiling).
    max_queue_depth: int = setting("MAX_QUEUE_DEPTH", "100000", "Waiting messages beyond which "
                                   "sends answer 503 (`0`: no ceiling).", integer(low=0))
    #: How long an ``Idempotency-Key`` (and a Redis event's fingerprint) is remembered.
    idempotency_ttl_seconds: int = setting(
        "IDEMPOTENCY_TTL_SECONDS", "86400", "How long idempotency keys (and event fingerprints) "
        "are remembered.", integer(low=60))
    #: How long message statuses are kept after their last change.
    status_retention_seconds: int = setting(
        "STATUS_RETENTION_SECONDS", "604800", "How long message statuses are kept after their "
        "last change.", integer(low=60))

    #: Files one message may carry; all of them and each, decoded bytes (README: Attachments).
    attachments_max_count: int = setting(
        "ATTACHMENTS_MAX_COUNT", "10", "Files one message may carry (at most 20).",
        integer(low=0, high=20))
    attachments_max_total_bytes: int = setting(
        "ATTACHMENTS_MAX_TOTAL_BYTES", "761856", "All files of a message together, decoded; "
        "their base64 must fit `MAX_BODY_BYTES`.", integer(low=0),
        shown="what fits `MAX_BODY_BYTES` (761856)",
        fallback=lambda seen: str(_attachments_fit(seen["MAX_BODY_BYTES"])))
    attachment_max_bytes: int = setting(
        "ATTACHMENT_MAX_BYTES", "524288", "Largest attached file, decoded.", integer(low=0),
        fallback=lambda seen: str(min(512 * 1024, seen["ATTACHMENTS_MAX_TOTAL_BYTES"])))

    def rate_for(self, subject: str) -> Rate | None:
        if subject in self.rate_limit_overrides:
            return self.rate_limit_overrides[subject]
        return self.rate_limit


@dataclass(frozen=True)
class WorkerSettings:
    """The queue, delivery, retries and the worker processes."""

    queue_name: str = setting("QUEUE_NAME", "email", "Dramatiq queue.", text)
    transport: TransportName = setting(
        "TRANSPORT", "smtp", "`smtp`, `mailtrap`, or `outbox` to write `.eml`/`.html` files "
        "instead of sending (see Transports).", cast(Any, choice(*TRANSPORT_NAMES)),
        shown="`smtp` (`mailtrap` with only `MAILTRAP_API_TOKEN` set)")
    outbox_dir: Path = setting("OUTBOX_DIR", "outbox", "Folder of the `outbox` transport.", path)
    max_retries: int = setting("SEND_MAX_RETRIES", "8", "Retries of transient failures.",
                               integer(low=0, high=100))
    retry_min_backoff_ms: int = setting("RETRY_MIN_BACKOFF_MS", "2000", "Shortest backoff "
                                        "between attempts, in ms.", integer(low=1))
    retry_max_backoff_ms: int = setting("RETRY_MAX_BACKOFF_MS", "900000", "Longest backoff "
                                        "between attempts, in ms.", integer(low=1))
    #: Upper bound for one send attempt (render + deliver) in a worker.
    send_time_limit_ms: int = setting("SEND_TIME_LIMIT_MS", "120000", "Longest one send attempt "
                                      "may take (also the send lease), in ms.",
                                      integer(low=1_000))
    #: A worker silent this long is dead; Dramatiq then requeues its unacknowledged messages.
    queue_heartbeat_timeout_ms: int = setting(
        "QUEUE_HEARTBEAT_TIMEOUT_MS", "60000", "When a silent worker counts as dead and its "
        "messages are requeued, in ms.", integer(low=1_000))
    #: Per million broker commands, how often that dead-worker sweep runs.
    queue_maintenance_chance: int = setting(
        "QUEUE_MAINTENANCE_CHANCE", "1000", "How often (per million broker commands) that sweep "
        "runs.", integer(low=1, high=1_000_000))
    #: On SIGTERM, how long a worker may finish the sends in hand.
    shutdown_timeout_ms: int = setting("WORKER_SHUTDOWN_TIMEOUT_MS", "25000", "On SIGTERM, how "
                                       "long a worker may finish the sends in hand, in ms.",
                                       integer(low=100))
    #: How often (across all workers) the sweeper looks for unfinished messages no queue holds.
    recovery_interval_seconds: float = setting(
        "RECOVERY_INTERVAL_SECONDS", "60", "How often (once across all workers) the sweeper "
        "looks for unfinished messages no queue holds.", number(low=0.1))
    #: Messages unchanged for less than this are never re-queued by the sweeper.
    recovery_age_seconds: float = setting(
        "RECOVERY_AGE_SECONDS", "300", "How long a message must be unchanged before the sweeper "
        "may re-queue it.", number(low=1.0))
    processes: int = setting("WORKER_PROCESSES", "2", "Worker processes of `email-service "
                             "worker` (`--processes`).", integer(low=1))
    threads: int = setting("WORKER_THREADS", "24", "Threads per worker process; each keeps one "
                           "SMTP session open (`--threads`).", integer(low=1))
    #: The threads of a worker process share status round trips (mailcore/group_commit.py).
    group_commit: bool = setting(
        "WORKER_GROUP_COMMIT", "true", "Group commit in the workers: status steps (begin "
        "attempt, record outcome) a process's threads make while one is in flight go to Redis "
        "together, one pipeline, each decided on its own as before. `false`: one round trip "
        "per step on each thread's own connection.", flag)
    #: Where ``email-service worker`` serves Prometheus metrics (port 0: not at all).
    metrics_host: str = setting("WORKER_METRICS_HOST", "127.0.0.1", "Address the worker metrics "
                                "listen on; the chart sets `0.0.0.0` so Prometheus can scrape the "
                                "pod IP.", text)
    metrics_port: int = setting("WORKER_METRICS_PORT", "9191", "Prometheus metrics of the "
                                "workers (`0`: off).", _optional_port)
    #: Worker heartbeat files for the liveness/readiness probe (``email-service probe worker``).
    heartbeat_dir: Path = setting("WORKER_HEARTBEAT_DIR", "/tmp/email-service-heartbeat",
                                  "Heartbeat files `email-service probe worker` reads.", path)
    heartbeat_seconds: float = setting("WORKER_HEARTBEAT_SECONDS", "5", "How often workers "
                                       "write them.", number(low=0.05))

    def __post_init__(self) -> None:
        if self.retry_min_backoff_ms > self.retry_max_backoff_ms:
            raise ConfigError(
                "RETRY_MIN_BACKOFF_MS: must not exceed RETRY_MAX_BACKOFF_MS "
                f"({self.retry_min_backoff_ms} > {self.retry_max_backoff_ms})"
            )


def _stream_names(raw: str) -> tuple[str, ...]:
    found = names(raw)
    unknown = [name for name in found if name not in STREAM_NAMES]
    if unknown or not found:
        raise ValueError(f"streams are {', '.join(STREAM_NAMES)}; got {raw!r}")
    return found


@dataclass(frozen=True)
class StreamSettings:
    """Transactional and bulk traffic on separate queues and workers (README: Streams)."""

    #: The bulk stream's Dramatiq queue (the transactional stream's is ``QUEUE_NAME``).
    bulk_queue_name: str = setting("BULK_QUEUE_NAME", "email-bulk", "Dramatiq queue of the "
                                   "`bulk` stream (`transactional` uses `QUEUE_NAME`).", text)
    #: The streams ``email-service worker`` consumes (the chart runs one Deployment per stream).
    worker_streams: tuple[str, ...] = setting(
        "WORKER_STREAMS", "transactional,bulk", "Streams a worker process consumes.",
        _stream_names)
    #: Where the ``bulk`` stream goes when the Mailtrap transport is used.
    mailtrap_bulk_url: str = setting(
        "MAILTRAP_BULK_BASE_URL", MAILTRAP_BULK_URL, "Mailtrap host of the `bulk` stream.",
        _http_url)


@dataclass(frozen=True)
class ScheduleSettings:
    """Scheduled sends: ``send_at`` and the dispatcher (README: Scheduled sends)."""

    #: How far ahead ``send_at`` may be.
    horizon_seconds: int = setting("SCHEDULE_HORIZON_SECONDS", "604800", "How far ahead "
                                   "`send_at` may be (default 7 days).",
                                   integer(low=60, high=366 * 24 * 3600))
    #: How far in the past ``send_at`` may be (the caller's clock is a little behind): sent now.
    clock_skew_seconds: int = setting("SCHEDULE_CLOCK_SKEW_SECONDS", "60", "How far in the "
                                      "past `send_at` is still accepted (clock skew); such a "
                                      "message is dispatched at once.", integer(low=0, high=3600))
    #: How often each worker process's dispatcher looks for due messages.
    poll_seconds: float = setting("SCHEDULE_POLL_SECONDS", "1", "How often each worker "
                                  "process's dispatcher moves due messages to their queue.",
                                  number(low=0.01))


@dataclass(frozen=True)
class TransportSettings:
    """Mailtrap's sending API and failover between transports (README: Transports)."""

    #: Transports in failover order; resolved with ``TRANSPORT`` by :meth:`Settings.from_env`.
    chain: tuple[str, ...] = setting(
        "TRANSPORTS", None, "A failover chain in order, e.g. `smtp,mailtrap` (instead of "
        "`TRANSPORT`).", _transport_names, shown="`TRANSPORT`")
    failover_cooldown_seconds: float = setting(
        "FAILOVER_COOLDOWN_SECONDS", "30", "How long a transport that failed stays out of the "
        "chain before one message probes it.", number(low=0.1))
    failover_threshold: int = setting("FAILOVER_THRESHOLD", "1", "Consecutive failures that take "
                                      "a transport out of the chain.", integer(low=1))
    mailtrap_api_token: str | None = setting(
        "MAILTRAP_API_TOKEN", None, "Mailtrap API token (`Authorization: Bearer`).", text,
        secret=True)
    mailtrap_bulk: bool = setting("MAILTRAP_BULK", "false", "Send on Mailtrap's bulk stream "
                                  "host.", flag)
    mailtrap_sandbox_inbox_id: str | None = setting(
        "MAILTRAP_SANDBOX_INBOX_ID", None, "Send into this Mailtrap test inbox (sandbox host).",
        _digits)
    mailtrap_base_url: str = setting(
        "MAILTRAP_BASE_URL", MAILTRAP_SEND_URL, "Another scheme and host (a proxy, a stand-in).",
        _http_url, shown="by the two above", fallback=_mailtrap_url)
    mailtrap_timeout: float = setting("MAILTRAP_TIMEOUT", "30", "Seconds for connecting, writing "
                                      "the request and waiting for Mailtrap's answer.",
                                      number(low=0.1))


#: An RFC 6376 selector: dot-separated DNS labels (it becomes ``<selector>._domainkey.<domain>``).
_SELECTOR = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                       r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*")


def _selector(raw: str) -> str:
    if not _SELECTOR.fullmatch(raw) or len(raw) > 253:
        raise ValueError(f"{raw!r} is not a DKIM selector (letters, digits, '-' and '.' "
                         "between DNS labels)")
    return raw


@dataclass(frozen=True)
class DkimSettings:
    """DKIM signatures of mail sent over SMTP (and outbox files) (README: DKIM signing)."""

    #: Domains whose mail is signed (the From address's domain picks the key).
    domains: frozenset[str] = setting(
        "DKIM_DOMAINS", "", "Comma-separated domains whose mail is signed (SMTP and outbox; "
        "Mailtrap signs itself).", _domains, shown="— (no signing)")
    selector: str = setting("DKIM_SELECTOR", "mail", "Default selector (RSA keys).", _selector)
    rsa_selector: str = setting("DKIM_RSA_SELECTOR", "mail", "Selector of the RSA keys.",
                                _selector, shown="`DKIM_SELECTOR`",
                                fallback=lambda seen: seen["DKIM_SELECTOR"])
    ed25519_selector: str = setting(
        "DKIM_ED25519_SELECTOR", "mail-ed25519", "Selector of the Ed25519 keys.", _selector,
        shown="`<DKIM_SELECTOR>-ed25519`",
        fallback=lambda seen: f"{seen['DKIM_SELECTOR']}-ed25519")
    keys_dir: Path = setting("DKIM_KEYS_DIR", "/run/secrets/dkim", "Per-domain keys: "
                             "`<dir>/<domain>/<selector>.pem` (PEM, RSA-2048+ or Ed25519).", path)
    rsa_key_file: Path | None = setting(
        "DKIM_PRIVATE_KEY_FILE", None, "One RSA key (PEM) for every domain without its own in "
        "`DKIM_KEYS_DIR`.", path)
    ed25519_key_file: Path | None = setting(
        "DKIM_ED25519_KEY_FILE", None, "One Ed25519 key (PEM) for every domain without its own "
        "in `DKIM_KEYS_DIR`.", path)
    #: A subdomain's mail (``news.example.com``) signed by its parent's key (``d=example.com``).
    subdomains: bool = setting("DKIM_SUBDOMAINS", "false", "Sign mail from subdomains of a "
                               "listed domain with that domain's keys.", flag)

    def __post_init__(self) -> None:
        if self.domains and self.rsa_selector == self.ed25519_selector:
            raise ConfigError("DKIM_ED25519_SELECTOR: must differ from the RSA selector "
                              f"({self.rsa_selector!r}): each key has its own DNS record")


_HOSTNAME = re.compile(r"(?=.{1,253}$)(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+"
                       r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")


def _bounce_domain(raw: str) -> str:
    """A domain name (A-labels, lower case); special-use names such as ``.test`` are allowed
    (a private bounce domain behind an internal MX is fine: only relays must reach it)."""
    domain = raw.strip().lower().rstrip(".")
    if not domain.isascii():
        return ascii_domain(domain)
    if not _HOSTNAME.fullmatch(domain):
        raise ValueError(f"{raw!r} is not a domain name (dot-separated letters, digits, '-')")
    return domain


def _secret_bytes(raw: str) -> str:
    if len(raw.encode()) < 16:
        raise ValueError("must be at least 16 bytes (it signs every envelope sender)")
    return raw


@dataclass(frozen=True)
class BounceSettings:
    """VERP envelope senders, the bounce receiver and Mailtrap's webhook events (README:
    Bounces)."""

    domain: str | None = setting(
        "BOUNCE_DOMAIN", None, "Domain of the VERP envelope senders (`bounces+<token>@<domain>` "
        "as SMTP `MAIL FROM`); its MX must reach `email-service bounces`. Unset: no VERP, the "
        "envelope sender is the message's From address.", _bounce_domain,
        shown="— (off)")
    secret: str | None = setting(
        "BOUNCE_SECRET", None, "HMAC key of the envelope senders' tokens (16+ bytes; workers and "
        "the receiver share it). Required with `BOUNCE_DOMAIN`.", _secret_bytes, secret=True)
    host: str = setting("BOUNCES_HOST", "0.0.0.0", "Address `email-service bounces` listens on "
                        "for SMTP (or LMTP).", text)
    port: int = setting("BOUNCES_PORT", "2525", "Its SMTP/LMTP port.", _port)
    lmtp: bool = setting("BOUNCES_LMTP", "false", "Speak LMTP instead of SMTP (behind an MTA "
                         "that hands reports over by LMTP).", flag)
    http_port: int = setting("BOUNCES_HTTP_PORT", "9193", "Its `/health`, `/ready` and "
                             "`/metrics` port.", _port)
    max_message_bytes: int = setting(
        "BOUNCES_MAX_MESSAGE_BYTES", "524288", "Largest report accepted (552 beyond).",
        integer(low=4096, high=64 * 1024 * 1024))
    max_recipients: int = setting(
        "BOUNCES_MAX_RECIPIENTS", "16", "Recipients per SMTP transaction (452 beyond).",
        integer(low=1, high=1000))
    max_connections: int = setting(
        "BOUNCES_MAX_CONNECTIONS", "100", "SMTP/LMTP sessions at once per receiver process; one "
        "more is answered `421` and closed.", integer(low=1, high=100_000))
    max_reports: int = setting(
        "BOUNCES_MAX_REPORTED_RECIPIENTS", "50", "Per-recipient entries read from one report "
        "(the rest are ignored).", integer(low=1, high=1000))
    mailtrap_webhook_secret: str | None = setting(
        "MAILTRAP_WEBHOOK_SECRET", None, "The signing secret of Mailtrap's webhook: enables "
        "`POST /v1/webhooks/mailtrap` (each request's `Mailtrap-Signature` is verified).", text,
        secret=True)

    def __post_init__(self) -> None:
        if self.domain and not self.secret:
            raise ConfigError("BOUNCE_SECRET: required when BOUNCE_DOMAIN is set (or "
                              "BOUNCE_SECRET_FILE, or /run/secrets/bounce_secret)")

    @property
    def secret_bytes(self) -> bytes:
        return (self.secret or "").encode()


@dataclass(frozen=True)
class SafeguardSettings:
    """Test mode and staging safeguards (README: Test mode and staging safeguards)."""

    sandbox_subjects: tuple[str, ...] = setting(
        "SANDBOX_SUBJECTS", "", "JWT subjects whose messages are always sandboxed.", names)
    sandbox_claim: str = setting("SANDBOX_CLAIM", "email_sandbox", "A token claim that, when "
                                 "`true`, sandboxes its messages.", text)
    recipient_allowlist: frozenset[str] = setting(
        "RECIPIENT_ALLOWLIST", "", "Addresses and domains mail may go to; others are withheld.",
        _recipients, shown="— (anyone)")
    redirect_all_to: str | None = setting(
        "REDIRECT_ALL_TO", None, "One address every message goes to instead.", _email)


@dataclass(frozen=True)
class TemplateSettings:
    """Where templates come from, and the bounds on compiling and rendering them."""

    dir: Path | None = setting("TEMPLATES_DIR", None, "Folder of built-in templates.", directory,
                               shown="built-in set")
    reset_template: str = setting("RESET_TEMPLATE", "password_reset", "Template of the original "
                                  "password-reset endpoint and events.", text)
    order_template: str = setting("ORDER_TEMPLATE", "order_confirmation", "Template of the "
                                  "original order-confirmation endpoint.", text)
    #: Namespaces whose EmailTemplates count, in lookup order for bare template names;
    #: ``*`` also admits ``namespace/name`` from any namespace (and the operator watches all).
    namespaces: tuple[str, ...] = setting(
        "TEMPLATE_NAMESPACES", "default", "Namespaces whose `EmailTemplate`s count "
        "(comma-separated; `*` for all).", _namespaces)
    #: Read templates from the shared Redis store (written by the operator / dev sync).
    store_enabled: bool = setting("TEMPLATE_STORE", "true", "Read templates from the Redis "
                                  "store.", flag)
    #: How often readers compare the store's epoch when no change broadcast arrives.
    refresh_seconds: float = setting("TEMPLATE_REFRESH_SECONDS", "5", "How often a pod checks "
                                     "it missed no change of the store.", number(low=0.05))
    #: Longest rendered part, and longest string a template may build, in characters.
    render_max_bytes: int = setting("RENDER_MAX_BYTES", "1048576", "Longest rendered part, and "
                                    "longest string a template may build, in characters.",
                                    integer(low=1024))
    #: Seconds one render may take (worker, preview, test render) before it fails.
    render_time_budget_seconds: float = setting(
        "RENDER_TIME_BUDGET_SECONDS", "2", "Longest render (workers, previews, test renders) "
        "before it fails with `RenderBudgetExceeded`.", number(low=0.01))
    #: Address space of the child process that compiles and test-renders templates.
    compile_memory_limit_mb: int = setting(
        "COMPILE_MEMORY_LIMIT_MB", "256", "Address space (`RLIMIT_AS`) of the child process that "
        "compiles, test-renders and previews templates.", integer(low=64))
    #: Deepest MJML nesting the operator, sync and previews accept (see rendering.py).
    mjml_max_depth: int = setting("MJML_MAX_DEPTH", "64", "Deepest MJML nesting accepted by the "
                                  "operator, `sync` and previews (the compiler crashes at "
                                  "~1,500).", integer(low=8))
    #: Versions of each template the store keeps in its history (rollback, ``template_version``);
    #: versions pinned by messages in flight are kept beyond these.
    history_versions: int = setting(
        "TEMPLATE_HISTORY_VERSIONS", "10", "Versions of each template kept in its history "
        "(rollback, `template_version`); versions pinned by messages in flight are kept beyond "
        "these.", integer(low=1, high=1000))

    @cached_property
    def render_limits(self) -> RenderLimits:
        return RenderLimits(max_bytes=self.render_max_bytes,
                            time_budget=self.render_time_budget_seconds)


@dataclass(frozen=True)
class OperatorSettings:
    """The EmailTemplate operator."""

    #: Longest wait between the operator's retries while the store is unreachable.
    retry_max_seconds: float = setting("OPERATOR_RETRY_MAX_SECONDS", "60", "Operator backoff "
                                       "cap while the store is unreachable.", number(low=0.1))
    #: How often the operator checks that each Ready template is still in the store (and puts
    #: it back when Redis lost it).
    resync_seconds: float = setting("OPERATOR_RESYNC_SECONDS", "60", "How often the operator "
                                    "re-checks that each Ready template is in the store.",
                                    number(low=0.1))
    #: Longest test render the operator allows a template (untrusted code) before refusing it.
    render_timeout_seconds: float = setting(
        "OPERATOR_RENDER_TIMEOUT_SECONDS", "10", "Wall-clock deadline of one compile + test "
        "render (operator and `sync`; the child process is killed past it).", number(low=0.1))
    #: How often the operator checks whether a layout or partial a template uses changed.
    parts_seconds: float = setting(
        "OPERATOR_PARTS_SECONDS", "2", "How often the operator checks whether a layout or "
        "partial a template uses changed (then re-validates the template before its new version "
        "serves).", number(low=0.1))
    metrics_port: int = setting("OPERATOR_METRICS_PORT", "9192", "Prometheus metrics of the "
                                "operator (`0`: off).", _optional_port)
    handlers: Path | None = setting("EMAIL_SERVICE_OPERATOR_HANDLERS", None, "The kopf handlers "
                                    "file (`--handlers`).", path, shown="found beside the package")


@dataclass(frozen=True)
class TelemetrySettings:
    """Logs and traces."""

    log_level: str = setting("LOG_LEVEL", "INFO", "`DEBUG`, `INFO`, `WARNING`, `ERROR` or "
                             "`CRITICAL`.",
                             choice("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL", upper=True))
    log_format: str = setting("LOG_FORMAT", "json", "`json` (one object per line) or `text`.",
                              choice("json", "text"))
    log_recipients: bool = setting("LOG_RECIPIENTS", "false", "Recipients unmasked in logs.",
                                   flag)
    #: Put recipient addresses on trace spans (off: they are personal data).
    trace_recipients: bool = setting("TRACE_RECIPIENTS", "false", "Recipient addresses as span "
                                     "attributes.", flag)
    service_name: str = setting("OTEL_SERVICE_NAME", "email-service", "Tracing: the service "
                                "name of the spans.", text)
    traces_exporter: tuple[str, ...] = setting(
        "OTEL_TRACES_EXPORTER", "otlp", "Tracing: `otlp` and/or `console`, comma-separated.",
        lambda raw: names(raw.lower()))
    otlp_endpoint: str | None = setting("OTEL_EXPORTER_OTLP_ENDPOINT", None, "Tracing: the OTLP "
                                        "collector; without an exporter spans are not recorded "
                                        "(ids still reach the logs).", text)
    otlp_traces_endpoint: str | None = setting(
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", None, "Tracing: the collector for traces only "
        "(wins over the previous one).", text)


def _public_base_url(raw: str) -> str:
    parts = urlsplit(raw)
    if parts.scheme not in ("https", "http") or not parts.netloc or parts.query or \
            parts.fragment or any(c in raw for c in " <>\"\r\n"):
        raise ValueError(f"must be an absolute http(s) URL without query, got {raw!r}")
    return raw.rstrip("/")


def _secrets(raw: str) -> tuple[str, ...]:
    found = names(raw)
    if any(len(secret) < 32 for secret in found):
        raise ValueError("every secret must be at least 32 characters")
    return found


@dataclass(frozen=True)
class SuppressionSettings:
    """The suppression list and one-click unsubscribe (README: Suppressions and unsubscribe)."""

    #: Where recipients reach this service from outside: the base of ``/u/<token>`` links.
    public_base_url: str | None = setting(
        "PUBLIC_BASE_URL", None, "Public https base URL of the service, for one-click "
        "unsubscribe links (`<url>/u/<token>`).", _public_base_url, shown="— (no links)")
    #: The first signs new tokens; all verify (rotation: prepend the new one, drop the old later).
    unsubscribe_secrets: tuple[str, ...] = setting(
        "UNSUBSCRIBE_SECRETS", "", "Comma-separated HMAC secrets of unsubscribe tokens (at least "
        "32 characters each): the first signs, every one verifies (rotation).", _secrets,
        secret=True, shown="— (no links)")
    unsubscribe_streams: tuple[str, ...] = setting(
        "UNSUBSCRIBE_STREAMS", "bulk", "Streams whose messages always carry one-click "
        "unsubscribe headers (templates opt in with `spec.unsubscribe`).", names)
    import_max_bytes: int = setting(
        "SUPPRESSION_IMPORT_MAX_BYTES", "8388608", "Largest JSONL body of a suppression import.",
        integer(low=1024, high=1 << 30))
    import_max_lines: int = setting(
        "SUPPRESSION_IMPORT_MAX_LINES", "10000", "Most entries in one suppression import (all "
        "are written in one Redis transaction).", integer(low=1, high=100_000))

    @property
    def unsubscribe_enabled(self) -> bool:
        return bool(self.public_base_url and self.unsubscribe_secrets)

    def __post_init__(self) -> None:
        # The URL alone is fine (a process that neither signs nor verifies: the operator).
        if self.unsubscribe_secrets and not self.public_base_url:
            raise ConfigError("PUBLIC_BASE_URL: required with UNSUBSCRIBE_SECRETS (the base of "
                              "one-click unsubscribe links)")


@dataclass(frozen=True)
class Settings:
    """Every tunable of the service, in groups, read once per process with :meth:`from_env`.

    Parameters:
      redis, smtp, sender, brand, auth, http, events, limits, worker, streams, schedule,
      transport, dkim, bounces, safeguards, templates, operator, telemetry, suppressions,
      webhooks: the groups (each documents its own fields).
    """

    redis: RedisSettings = field(default_factory=RedisSettings)
    smtp: SmtpSettings = field(default_factory=SmtpSettings)
    sender: SenderSettings = field(default_factory=SenderSettings)
    brand: Brand = field(default_factory=Brand)
    auth: AuthSettings = field(default_factory=AuthSettings)
    http: HttpSettings = field(default_factory=HttpSettings)
    events: EventSettings = field(default_factory=EventSettings)
    limits: LimitSettings = field(default_factory=LimitSettings)
    worker: WorkerSettings = field(default_factory=WorkerSettings)
    streams: StreamSettings = field(default_factory=StreamSettings)
    schedule: ScheduleSettings = field(default_factory=ScheduleSettings)
    transport: TransportSettings = field(default_factory=TransportSettings)
    dkim: DkimSettings = field(default_factory=DkimSettings)
    bounces: BounceSettings = field(default_factory=BounceSettings)
    safeguards: SafeguardSettings = field(default_factory=SafeguardSettings)
    templates: TemplateSettings = field(default_factory=TemplateSettings)
    operator: OperatorSettings = field(default_factory=OperatorSettings)
    telemetry: TelemetrySettings = field(default_factory=TelemetrySettings)
    suppressions: SuppressionSettings = field(default_factory=SuppressionSettings)
    webhooks: WebhookSettings = field(default_factory=WebhookSettings)

    def __post_init__(self) -> None:
        fits = _attachments_fit(self.http.max_body_bytes)
        if self.limits.attachments_max_total_bytes > fits:
            total = self.limits.attachments_max_total_bytes
            raise ConfigError(
                f"ATTACHMENTS_MAX_TOTAL_BYTES: {total} bytes of files are {total * 4 // 3} in "
                f"base64, more than MAX_BODY_BYTES ({self.http.max_body_bytes}) leaves room for "
                f"(at most {fits}); raise MAX_BODY_BYTES too")

    @property
    def queues(self) -> dict[str, str]:
        """Each stream's Dramatiq queue name (README: Streams)."""
        return stream_queues(self.worker.queue_name, self.streams.bulk_queue_name)

    @property
    def transports(self) -> tuple[str, ...]:
        """The transports in use, in failover order (one, usually)."""
        return self.transport.chain or (self.worker.transport,)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        original = os.environ if environ is None else environ
        aliased = _resolve_aliases(original)
        env = Environment(aliased)
        try:
            groups = {name: read_group(group, env) for name, group in GROUPS.items()}
        except ConfigError as exc:
            raise _named_as_set(exc, original) from None
        groups["worker"], groups["transport"] = _resolve_transports(
            env, groups["worker"], groups["transport"])
        settings = cls(**groups)
        _one_redis(settings.redis, env)
        return settings


def _resolve_aliases(environ: Mapping[str, str]) -> Mapping[str, str]:
    """The replaced service's names read as ours; a conflict stops the process. Its
    ``COMPANY_NAME`` also signed its mail: the sender's name when ``SENDER_NAME`` is unset."""
    def given(name: str) -> str:
        return environ.get(name, "").strip()

    aliased: dict[str, str] = {}
    for alias, native in ALIASES.items():
        old, new = given(alias), given(native)
        if old and new and old != new:
            raise ConfigError(f"{alias}: conflicts with {native} ({old!r} vs {new!r}); "
                              f"{alias} is the older name of {native}: set only one")
        if old and not new:
            aliased[native] = old
    if given("COMPANY_NAME") and not given("SENDER_NAME"):
        aliased["SENDER_NAME"] = given("COMPANY_NAME")
    return {**environ, **aliased} if aliased else environ


def _named_as_set(exc: ConfigError, environ: Mapping[str, str]) -> ConfigError:
    """An error about a value given under its older name names that name too."""
    for alias, native in ALIASES.items():
        if str(exc).startswith(f"{native}:") and environ.get(alias, "").strip() and not (
                environ.get(native, "").strip()):
            return ConfigError(f"{alias} (as {native}){str(exc)[len(native):]}")
    return exc


def _resolve_transports(env: Environment, worker: WorkerSettings,
                        transport: TransportSettings
                        ) -> tuple[WorkerSettings, TransportSettings]:
    """``TRANSPORTS`` or ``TRANSPORT``; with neither, mailtrap when only a Mailtrap token is
    configured (the replaced order service's environment), else smtp."""
    many, one = env.text("TRANSPORTS"), env.text("TRANSPORT")
    if many and one:
        raise ConfigError("TRANSPORTS: set either TRANSPORT or TRANSPORTS, not both")
    if many:
        chain: tuple[str, ...] = transport.chain
    elif one:
        chain = (worker.transport,)
    elif transport.mailtrap_api_token and not env.text("SMTP_HOST"):
        chain = ("mailtrap",)
    else:
        chain = (worker.transport,)
    if "mailtrap" in chain and not transport.mailtrap_api_token:
        variable = "TRANSPORTS" if many else "TRANSPORT"
        raise ConfigError(f"MAILTRAP_API_TOKEN: required when {variable} names mailtrap (or "
                          "MAILTRAP_API_TOKEN_FILE, or /run/secrets/mailtrap_api_token)")
    # TRANSPORTS alone fills the chain (Settings.transports); TRANSPORT is its first.
    return replace(worker, transport=cast(TransportName, chain[0])), transport


#: The groups by field of :class:`Settings`, in reading order (a fallback reads only variables
#: read before it: the brand after the sender) and in the README's order.
GROUPS: dict[str, type[Any]] = {
    "redis": RedisSettings, "smtp": SmtpSettings, "sender": SenderSettings, "brand": Brand,
    "auth": AuthSettings, "http": HttpSettings, "events": EventSettings, "limits": LimitSettings,
    "worker": WorkerSettings, "streams": StreamSettings, "schedule": ScheduleSettings,
    "transport": TransportSettings, "dkim": DkimSettings,
    "bounces": BounceSettings, "safeguards": SafeguardSettings,
    "templates": TemplateSettings, "operator": OperatorSettings,
    "telemetry": TelemetrySettings, "suppressions": SuppressionSettings,
    "webhooks": WebhookSettings,
}

#: Variables that hold secrets; each may also be read from a file.
SECRET_NAMES = frozenset(var.name for group in GROUPS.values() for _, var in variables(group)
                         if var.secret)


def _one_redis(redis: RedisSettings, env: Environment) -> None:
    """One way to say where Redis is: a URL or host beside sentinels would be ignored silently.
    (``REDIS_PORT`` is not read behind Sentinel: Kubernetes may set it to ``tcp://…``.)"""
    if redis.sentinels is None:
        return
    if redis.given_url is not None:
        raise ConfigError("REDIS_SENTINELS: set either REDIS_SENTINELS or REDIS_URL, not both")
    if env.text("REDIS_HOST") is not None:
        raise ConfigError("REDIS_SENTINELS: set either REDIS_SENTINELS or REDIS_HOST, not both")


def redis_configured(environ: Mapping[str, str]) -> bool:
    """Whether the environment names a Redis (``email-service dev`` starts one otherwise)."""
    return any(environ.get(name) for name in ("REDIS_URL", "REDIS_URL_FILE", "REDIS_HOST",
                                              "REDIS_SENTINELS"))
