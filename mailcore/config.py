"""Configuration from the environment.

Names of the services this one replaces are kept (``REDIS_HOST``, ``SMTP_HOST``, ``JWT_SECRET``…).
Any secret may instead come from ``<NAME>_FILE`` or from ``/run/secrets/<lowercase name>``.
An invalid value raises :class:`ConfigError` whose text names the variable, so a process can stop
with one clear line.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Literal
from urllib.parse import quote, urlsplit

from .addresses import ascii_domain, normalize_address
from .ratelimit import Rate, parse_rate
from .render_budget import RenderLimits
from .sentinel import DEFAULT_MASTER, SentinelSettings, parse_master, parse_sentinels

SmtpSecurity = Literal["starttls", "ssl", "none"]
TransportName = Literal["smtp", "outbox"]

#: Variables that hold secrets; each may also be read from a file.
SECRET_NAMES = frozenset(
    {"JWT_SECRET", "SMTP_PASSWORD", "SMTP_USERNAME", "REDIS_PASSWORD", "REDIS_URL",
     "REDIS_SENTINEL_PASSWORD"}
)

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


class ConfigError(ValueError):
    """A setting is missing or invalid; the message starts with the variable's name."""


@dataclass(frozen=True)
class Brand:
    """Values templates use for branding (``{{ brand.name }}`` …)."""

    name: str = "Example"
    url: str = "https://example.com"
    logo_url: str = ""
    color: str = "#2563eb"
    support_email: str = ""


@dataclass(frozen=True)
class Settings:
    """Every tunable of the service, read once per process with :meth:`from_env`."""

    redis_url: str = "redis://127.0.0.1:6379/0"
    #: Redis behind Sentinel (``REDIS_SENTINELS``): every client follows the primary; then
    #: ``redis_url`` is unused.
    redis_sentinel: SentinelSettings | None = None
    #: After accepting a message, wait until this many replicas have it (``WAIT``); 0: not.
    redis_wait_replicas: int = 0
    redis_wait_timeout_ms: int = 100
    #: Prefix of every Redis key this service owns (queues use Dramatiq's own namespace).
    key_prefix: str = "email-service"
    queue_name: str = "email"

    transport: TransportName = "smtp"
    smtp_host: str = "localhost"
    smtp_port: int = 587
    smtp_security: SmtpSecurity = "starttls"
    smtp_username: str | None = None
    smtp_password: str | None = None
    #: Seconds for connect and for each SMTP command.
    smtp_timeout: float = 30.0
    #: CA bundle to trust for the relay's certificate (a private CA); system store otherwise.
    smtp_ca_file: Path | None = None
    outbox_dir: Path = Path("outbox")

    sender_email: str = "no-reply@example.com"
    sender_name: str = "Example"
    #: Domains a caller's ``from`` may use; the sender's own domain is always allowed.
    allowed_sender_domains: frozenset[str] = frozenset()

    jwt_secret: str | None = None
    jwt_audience: str | None = None
    jwt_issuer: str | None = None
    #: RS256/ES256 keys: a JWKS URL (cached, refreshed on an unknown ``kid``) or file.
    jwt_jwks_url: str | None = None
    jwt_jwks_file: Path | None = None
    #: Seconds of clock skew tolerated on ``exp``/``nbf``/``iat``.
    jwt_leeway_seconds: int = 30
    #: Longest validity a token may claim, in seconds (``exp - iat``, or ``exp - now`` without
    #: ``iat``); unbounded when unset.
    jwt_max_lifetime: int | None = None
    #: Scope a token must carry (``scope``/``scp`` claim) to send; none required when unset.
    jwt_required_scope: str | None = None
    #: Scope for dead-letter administration over the API.
    admin_scope: str = "email:admin"
    #: Development mode: allows starting without a JWT secret (``email-service dev`` mints one).
    dev_mode: bool = False

    #: Largest accepted request body, in bytes.
    max_body_bytes: int = 1024 * 1024
    #: Seconds a client has to send its request line and headers, and then its body.
    http_header_timeout_seconds: float = 10.0
    http_body_timeout_seconds: float = 30.0
    #: Seconds an idle keep-alive connection stays open.
    http_keepalive_seconds: int = 5
    #: Largest request head (request line and headers), in bytes: 431 beyond.
    http_max_header_bytes: int = 16 * 1024
    #: Connections plus requests in progress beyond which new requests get 503.
    http_max_concurrency: int = 1000
    events_enabled: bool = True
    events_channel: str = "password_reset_events"
    #: How long an ``Idempotency-Key`` (and a Redis event's fingerprint) is remembered.
    idempotency_ttl_seconds: int = 24 * 3600
    #: How long message statuses are kept after their last change.
    status_retention_seconds: int = 7 * 24 * 3600
    #: Requests per caller (JWT subject); ``None`` means unlimited.
    rate_limit: Rate | None = Rate(6000, 60)  # noqa: RUF009 - frozen, immutable
    rate_limit_overrides: Mapping[str, Rate | None] = field(default_factory=dict)
    #: Password-reset sends per recipient address.
    reset_limit_per_recipient: Rate | None = Rate(5, 3600)  # noqa: RUF009 - frozen, immutable
    #: Waiting messages beyond which the ingress answers 503 (0: no ceiling).
    max_queue_depth: int = 100_000

    max_retries: int = 8
    retry_min_backoff_ms: int = 2_000
    retry_max_backoff_ms: int = 15 * 60_000
    #: Upper bound for one send attempt (render + deliver) in a worker.
    send_time_limit_ms: int = 120_000
    #: A worker silent this long is dead; Dramatiq then requeues its unacknowledged messages.
    queue_heartbeat_timeout_ms: int = 60_000
    #: Per million broker commands, how often that dead-worker sweep runs.
    queue_maintenance_chance: int = 1000
    #: On SIGTERM, how long a worker may finish the sends in hand.
    worker_shutdown_timeout_ms: int = 25_000
    #: How often (across all workers) the sweeper looks for unfinished messages no queue holds.
    recovery_interval_seconds: float = 60.0
    #: Messages unchanged for less than this are never re-queued by the sweeper.
    recovery_age_seconds: float = 300.0
    #: Where ``email-service worker`` serves Prometheus metrics (port 0: not at all). The
    #: chart sets the host to 0.0.0.0 so Prometheus can scrape the pod IP.
    worker_metrics_host: str = "127.0.0.1"
    worker_metrics_port: int = 9191
    #: Worker heartbeat files for the liveness/readiness probe (``email-service probe worker``).
    worker_heartbeat_dir: Path = Path("/tmp/email-service-heartbeat")
    worker_heartbeat_seconds: float = 5.0
    #: Put recipient addresses on trace spans (off: they are personal data).
    trace_recipients: bool = False

    templates_dir: Path | None = None
    reset_template: str = "password_reset"
    order_template: str = "order_confirmation"
    brand: Brand = field(default_factory=Brand)
    log_level: str = "INFO"

    #: Namespaces whose EmailTemplates count, in lookup order for bare template names;
    #: ``*`` also admits ``namespace/name`` from any namespace (and the operator watches all).
    template_namespaces: tuple[str, ...] = ("default",)
    #: Read templates from the shared Redis store (written by the operator / dev sync).
    template_store_enabled: bool = True
    #: How often readers compare the store's epoch when no change broadcast arrives.
    template_refresh_seconds: float = 5.0
    #: Longest wait between the operator's retries while the store is unreachable.
    operator_retry_max_seconds: float = 60.0
    #: How often the operator checks that each Ready template is still in the store (and puts
    #: it back when Redis lost it).
    operator_resync_seconds: float = 60.0
    #: Longest test render the operator allows a template (untrusted code) before refusing it.
    operator_render_timeout_seconds: float = 10.0
    #: Where the operator serves Prometheus metrics (0: not at all).
    operator_metrics_port: int = 9192
    #: Longest rendered part, and longest string a template may build, in characters.
    render_max_bytes: int = 1024 * 1024
    #: Seconds one render may take (worker, preview, test render) before it fails.
    render_time_budget_seconds: float = 2.0
    #: Address space of the child process that compiles and test-renders templates.
    compile_memory_limit_mb: int = 256
    #: Deepest MJML nesting the operator, sync and previews accept (see rendering.py).
    mjml_max_depth: int = 64

    @cached_property
    def render_limits(self) -> RenderLimits:
        return RenderLimits(max_bytes=self.render_max_bytes,
                            time_budget=self.render_time_budget_seconds)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = _Env(os.environ if environ is None else environ)
        security = env.choice("SMTP_SECURITY", ("starttls", "ssl", "none"), "starttls")
        default_port = {"starttls": 587, "ssl": 465, "none": 25}[security]
        settings = cls(
            redis_url=_redis_url(env),
            redis_sentinel=_redis_sentinel(env),
            redis_wait_replicas=env.integer("REDIS_WAIT_REPLICAS", 0, low=0, high=16),
            redis_wait_timeout_ms=env.integer("REDIS_WAIT_TIMEOUT_MS", 100, low=1,
                                              high=60_000),
            key_prefix=env.text("KEY_PREFIX", "email-service"),
            queue_name=env.text("QUEUE_NAME", "email"),
            transport=env.choice("TRANSPORT", ("smtp", "outbox"), "smtp"),  # type: ignore[arg-type]
            smtp_host=env.text("SMTP_HOST", "localhost"),
            smtp_port=env.integer("SMTP_PORT", default_port, low=1, high=65535),
            smtp_security=security,  # type: ignore[arg-type]
            smtp_username=env.secret("SMTP_USERNAME"),
            smtp_password=env.secret("SMTP_PASSWORD"),
            smtp_timeout=env.number("SMTP_TIMEOUT", 30.0, low=0.1),
            smtp_ca_file=env.file("SMTP_CA_FILE"),
            outbox_dir=Path(env.text("OUTBOX_DIR", "outbox")),
            sender_email=env.email("SENDER_EMAIL", "no-reply@example.com"),
            sender_name=env.header_text("SENDER_NAME", "Example"),
            allowed_sender_domains=env.domains("ALLOWED_SENDER_DOMAINS"),
            jwt_secret=env.secret("JWT_SECRET"),
            jwt_audience=env.optional("JWT_AUDIENCE"),
            jwt_issuer=env.optional("JWT_ISSUER"),
            jwt_jwks_url=env.optional("JWT_JWKS_URL"),
            jwt_jwks_file=env.file("JWT_JWKS_FILE"),
            jwt_leeway_seconds=env.integer("JWT_LEEWAY_SECONDS", 30, low=0, high=300),
            jwt_max_lifetime=env.optional_integer("JWT_MAX_LIFETIME", low=1),
            jwt_required_scope=env.optional("JWT_REQUIRED_SCOPE"),
            admin_scope=env.text("ADMIN_SCOPE", "email:admin"),
            dev_mode=env.flag("EMAIL_SERVICE_DEV", False),
            max_body_bytes=env.integer("MAX_BODY_BYTES", 1024 * 1024, low=1024),
            http_header_timeout_seconds=env.number("HTTP_HEADER_TIMEOUT_SECONDS", 10.0, low=0.1),
            http_body_timeout_seconds=env.number("HTTP_BODY_TIMEOUT_SECONDS", 30.0, low=0.1),
            http_keepalive_seconds=env.integer("HTTP_KEEPALIVE_SECONDS", 5, low=1),
            http_max_header_bytes=env.integer("HTTP_MAX_HEADER_BYTES", 16 * 1024, low=1024,
                                              high=1024 * 1024),
            http_max_concurrency=env.integer("HTTP_MAX_CONCURRENCY", 1000, low=1),
            events_enabled=env.flag("EVENTS_ENABLED", True),
            events_channel=env.text("EVENTS_CHANNEL", "password_reset_events"),
            idempotency_ttl_seconds=env.integer("IDEMPOTENCY_TTL_SECONDS", 24 * 3600, low=60),
            status_retention_seconds=env.integer("STATUS_RETENTION_SECONDS", 7 * 24 * 3600,
                                                 low=60),
            rate_limit=env.rate("RATE_LIMIT", "6000/minute"),
            rate_limit_overrides=env.rate_overrides("RATE_LIMIT_OVERRIDES"),
            reset_limit_per_recipient=env.rate("RESET_LIMIT_PER_RECIPIENT", "5/hour"),
            max_queue_depth=env.integer("MAX_QUEUE_DEPTH", 100_000, low=0),
            max_retries=env.integer("SEND_MAX_RETRIES", 8, low=0, high=100),
            retry_min_backoff_ms=env.integer("RETRY_MIN_BACKOFF_MS", 2_000, low=1),
            retry_max_backoff_ms=env.integer("RETRY_MAX_BACKOFF_MS", 15 * 60_000, low=1),
            send_time_limit_ms=env.integer("SEND_TIME_LIMIT_MS", 120_000, low=1_000),
            queue_heartbeat_timeout_ms=env.integer("QUEUE_HEARTBEAT_TIMEOUT_MS", 60_000,
                                                   low=1_000),
            queue_maintenance_chance=env.integer("QUEUE_MAINTENANCE_CHANCE", 1000, low=1,
                                                 high=1_000_000),
            worker_shutdown_timeout_ms=env.integer("WORKER_SHUTDOWN_TIMEOUT_MS", 25_000,
                                                   low=100),
            recovery_interval_seconds=env.number("RECOVERY_INTERVAL_SECONDS", 60.0, low=0.1),
            recovery_age_seconds=env.number("RECOVERY_AGE_SECONDS", 300.0, low=1.0),
            worker_metrics_host=env.text("WORKER_METRICS_HOST", "127.0.0.1"),
            worker_metrics_port=env.integer("WORKER_METRICS_PORT", 9191, low=0, high=65535),
            worker_heartbeat_dir=Path(env.text("WORKER_HEARTBEAT_DIR",
                                               "/tmp/email-service-heartbeat")),
            worker_heartbeat_seconds=env.number("WORKER_HEARTBEAT_SECONDS", 5.0, low=0.05),
            trace_recipients=env.flag("TRACE_RECIPIENTS", False),
            templates_dir=env.path("TEMPLATES_DIR"),
            reset_template=env.text("RESET_TEMPLATE", "password_reset"),
            order_template=env.text("ORDER_TEMPLATE", "order_confirmation"),
            brand=Brand(
                name=env.text("BRAND_NAME", env.text("SENDER_NAME", "Example")),
                url=env.text("BRAND_URL", "https://example.com"),
                logo_url=env.text("BRAND_LOGO_URL", ""),
                color=env.text("BRAND_COLOR", "#2563eb"),
                support_email=env.text("SUPPORT_EMAIL", ""),
            ),
            log_level=env.choice(
                "LOG_LEVEL", ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"), "INFO", upper=True
            ),
            template_namespaces=_namespaces(env.text("TEMPLATE_NAMESPACES", "default")),
            template_store_enabled=env.flag("TEMPLATE_STORE", True),
            template_refresh_seconds=env.number("TEMPLATE_REFRESH_SECONDS", 5.0, low=0.05),
            operator_retry_max_seconds=env.number("OPERATOR_RETRY_MAX_SECONDS", 60.0, low=0.1),
            operator_resync_seconds=env.number("OPERATOR_RESYNC_SECONDS", 60.0, low=0.1),
            operator_render_timeout_seconds=env.number("OPERATOR_RENDER_TIMEOUT_SECONDS", 10.0,
                                                       low=0.1),
            operator_metrics_port=env.integer("OPERATOR_METRICS_PORT", 9192, low=0, high=65535),
            render_max_bytes=env.integer("RENDER_MAX_BYTES", 1024 * 1024, low=1024),
            render_time_budget_seconds=env.number("RENDER_TIME_BUDGET_SECONDS", 2.0, low=0.01),
            compile_memory_limit_mb=env.integer("COMPILE_MEMORY_LIMIT_MB", 256, low=64),
            mjml_max_depth=env.integer("MJML_MAX_DEPTH", 64, low=8),
        )
        if settings.retry_min_backoff_ms > settings.retry_max_backoff_ms:
            raise ConfigError(
                "RETRY_MIN_BACKOFF_MS: must not exceed RETRY_MAX_BACKOFF_MS "
                f"({settings.retry_min_backoff_ms} > {settings.retry_max_backoff_ms})"
            )
        return settings

    def sender_domain_allowed(self, address: str) -> bool:
        domain = address.rpartition("@")[2].lower()
        return domain == self.sender_email.rpartition("@")[2].lower() or (
            domain in self.allowed_sender_domains
        )

    def rate_for(self, subject: str) -> Rate | None:
        if subject in self.rate_limit_overrides:
            return self.rate_limit_overrides[subject]
        return self.rate_limit

    def require_jwt_secret(self) -> None:
        """Refuse to serve without token keys (a secret or a JWKS), unless in development mode."""
        has_keys = self.jwt_secret or self.jwt_jwks_url or self.jwt_jwks_file
        if not has_keys and not self.dev_mode:
            raise ConfigError(
                "JWT_SECRET: required (or JWT_SECRET_FILE, or /run/secrets/jwt_secret, or "
                "JWT_JWKS_URL/JWT_JWKS_FILE); the service never serves with a placeholder secret"
            )


class _Env:
    """Typed reads of environment variables with errors that name the variable."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ
        self._secrets_dir = Path(environ.get("SECRETS_DIR", "/run/secrets"))

    def optional(self, name: str) -> str | None:
        value = self._environ.get(name)
        if value is None or value.strip() == "":
            return None
        return value.strip()

    def text(self, name: str, default: str) -> str:
        return self.optional(name) or default

    def integer(
        self, name: str, default: int, *, low: int | None = None, high: int | None = None
    ) -> int:
        raw = self.optional(name)
        if raw is None:
            return default
        try:
            value = int(raw)
        except ValueError:
            raise ConfigError(f"{name}: must be an integer, got {raw!r}") from None
        _check_range(name, value, low, high)
        return value

    def optional_integer(self, name: str, *, low: int | None = None) -> int | None:
        if self.optional(name) is None:
            return None
        return self.integer(name, 0, low=low)

    def number(self, name: str, default: float, *, low: float | None = None) -> float:
        raw = self.optional(name)
        if raw is None:
            return default
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(f"{name}: must be a number, got {raw!r}") from None
        _check_range(name, value, low, None)
        return value

    def flag(self, name: str, default: bool) -> bool:
        raw = self.optional(name)
        if raw is None:
            return default
        if raw.lower() in _TRUE:
            return True
        if raw.lower() in _FALSE:
            return False
        raise ConfigError(f"{name}: must be true or false, got {raw!r}")

    def choice(self, name: str, allowed: tuple[str, ...], default: str, upper: bool = False) -> str:
        raw = self.optional(name)
        if raw is None:
            return default
        value = raw.upper() if upper else raw.lower()
        if value not in allowed:
            raise ConfigError(f"{name}: must be one of {', '.join(allowed)}, got {raw!r}")
        return value

    def path(self, name: str) -> Path | None:
        raw = self.optional(name)
        if raw is None:
            return None
        path = Path(raw)
        if not path.is_dir():
            raise ConfigError(f"{name}: {raw!r} is not a directory")
        return path

    def file(self, name: str) -> Path | None:
        raw = self.optional(name)
        if raw is None:
            return None
        path = Path(raw)
        if not path.is_file():
            raise ConfigError(f"{name}: {raw!r} is not a readable file")
        return path

    def rate(self, name: str, default: str) -> Rate | None:
        raw = self.text(name, default)
        try:
            return parse_rate(raw)
        except ValueError as exc:
            raise ConfigError(f"{name}: {exc}") from None

    def rate_overrides(self, name: str) -> dict[str, Rate | None]:
        """``subject=RATE,subject=RATE`` (a rate or ``off``)."""
        overrides: dict[str, Rate | None] = {}
        for item in filter(None, (part.strip() for part in self.text(name, "").split(","))):
            subject, sep, rate = item.partition("=")
            if not sep or not subject.strip():
                raise ConfigError(f"{name}: expected subject=RATE pairs, got {item!r}")
            try:
                overrides[subject.strip()] = parse_rate(rate)
            except ValueError as exc:
                raise ConfigError(f"{name}: {subject.strip()}: {exc}") from None
        return overrides

    def email(self, name: str, default: str) -> str:
        raw = self.text(name, default)
        try:
            return normalize_address(raw)
        except ValueError as exc:
            raise ConfigError(f"{name}: {exc}") from None

    def domains(self, name: str) -> frozenset[str]:
        """Comma-separated domain names, in the form addresses carry (A-labels)."""
        try:
            return frozenset(ascii_domain(d.strip()) for d in self.text(name, "").split(",")
                             if d.strip())
        except ValueError as exc:
            raise ConfigError(f"{name}: {exc.args[0].replace('address', 'domain')}") from None

    def header_text(self, name: str, default: str) -> str:
        raw = self.text(name, default)
        if "\r" in raw or "\n" in raw:
            raise ConfigError(f"{name}: must not contain line breaks")
        if any((ord(char) < 0x20 and char != "\t") or ord(char) == 0x7f for char in raw):
            # Refused here, not when the worker builds its first message.
            raise ConfigError(f"{name}: must not contain control characters")
        return raw

    def secret(self, name: str) -> str | None:
        """``NAME``, else the file named by ``NAME_FILE``, else ``/run/secrets/<name>``."""
        direct = self.optional(name)
        file_name = self.optional(f"{name}_FILE")
        if direct is not None and file_name is not None:
            raise ConfigError(f"{name}: set either {name} or {name}_FILE, not both")
        if direct is not None:
            return direct
        if file_name is not None:
            return _read_secret(f"{name}_FILE", Path(file_name))
        default_file = self._secrets_dir / name.lower()
        if default_file.is_file():
            return _read_secret(name, default_file)
        return None


def _read_secret(name: str, path: Path) -> str | None:
    try:
        value = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"{name}: cannot read {str(path)!r} ({exc.strerror})") from None
    return value or None


def _check_range(name: str, value: float, low: float | None, high: float | None) -> None:
    if low is not None and value < low:
        raise ConfigError(f"{name}: must be at least {low}, got {value}")
    if high is not None and value > high:
        raise ConfigError(f"{name}: must be at most {high}, got {value}")


def _redis_url(env: _Env) -> str:
    url = env.secret("REDIS_URL")
    if url is not None:
        scheme = urlsplit(url).scheme
        if scheme not in {"redis", "rediss", "unix"}:
            raise ConfigError(f"REDIS_URL: scheme must be redis, rediss or unix, got {scheme!r}")
        return url
    host = env.text("REDIS_HOST", "127.0.0.1")
    port = env.integer("REDIS_PORT", 6379, low=1, high=65535)
    db = env.integer("REDIS_DB", 0, low=0)
    password = env.secret("REDIS_PASSWORD")
    auth = f":{quote(password, safe='')}@" if password else ""
    return f"redis://{auth}{host}:{port}/{db}"


def _redis_sentinel(env: _Env) -> SentinelSettings | None:
    """``REDIS_SENTINELS`` and its companions; ``None`` when Redis is at one address."""
    raw = env.optional("REDIS_SENTINELS")
    if raw is None:
        return None
    # One way to say where Redis is: a URL or host beside sentinels would be ignored silently.
    for other in ("REDIS_URL", "REDIS_URL_FILE", "REDIS_HOST", "REDIS_PORT"):
        if env.optional(other) is not None:
            raise ConfigError(f"REDIS_SENTINELS: set either REDIS_SENTINELS or {other}, not both")
    try:
        sentinels = parse_sentinels(raw)
    except ValueError as exc:
        raise ConfigError(f"REDIS_SENTINELS: {exc}") from None
    master = env.text("REDIS_SENTINEL_MASTER", DEFAULT_MASTER)
    try:
        parse_master(master)
    except ValueError as exc:
        raise ConfigError(f"REDIS_SENTINEL_MASTER: {exc}") from None
    return SentinelSettings(
        sentinels=sentinels, master=master,
        sentinel_password=env.secret("REDIS_SENTINEL_PASSWORD"),
        password=env.secret("REDIS_PASSWORD"), db=env.integer("REDIS_DB", 0, low=0))


def _namespaces(raw: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(part.strip() for part in raw.split(",") if part.strip()))
    for name in names:
        if name != "*" and not re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", name):
            raise ConfigError(f"TEMPLATE_NAMESPACES: {name!r} is not a namespace name (or *)")
    if not names:
        raise ConfigError("TEMPLATE_NAMESPACES: name at least one namespace (or *)")
    return names


def redis_configured(environ: Mapping[str, str]) -> bool:
    """Whether the environment names a Redis (``email-service dev`` starts one otherwise)."""
    return any(environ.get(name) for name in ("REDIS_URL", "REDIS_URL_FILE", "REDIS_HOST",
                                              "REDIS_SENTINELS"))
