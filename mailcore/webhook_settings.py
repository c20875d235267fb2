"""The settings group of signed webhooks (README: Webhooks); composed into ``Settings``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .envfields import ConfigError, file, flag, integer, number, setting, text
from .webhook_targets import (
    IPNetwork,
    TargetPolicy,
    parse_host_patterns,
    parse_networks,
)


@dataclass(frozen=True)
class WebhookSettings:
    """Signed webhooks: lifecycle events, endpoints, delivery, retries and the SSRF guard."""

    #: Off: no lifecycle event of any kind is written (no per-message cost, no stream to grow).
    enabled: bool = setting(
        "WEBHOOKS_ENABLED", "false", "Write lifecycle events (queued, sent, bounced, "
        "suppressed...) for webhooks (the chart sets it when `webhooks.enabled`); off, nothing "
        "is written and sending costs nothing extra.", flag)
    queue_name: str = setting("WEBHOOKS_QUEUE", "webhooks", "Dramatiq queue of webhook "
                              "deliveries.", text)
    allowed_hosts: tuple[str, ...] = setting(
        "WEBHOOKS_ALLOWED_HOSTS", "*.svc.cluster.local", "Hosts webhook URLs may name: "
        "`host`, `*.domain` or an IP literal, comma-separated.", parse_host_patterns)
    cluster_hosts: tuple[str, ...] = setting(
        "WEBHOOKS_CLUSTER_HOSTS", "*.svc.cluster.local", "Of those, in-cluster hosts: plain "
        "`http` and private addresses allowed (others need `https` and a public address).",
        parse_host_patterns)
    allowed_networks: tuple[IPNetwork, ...] = setting(
        "WEBHOOKS_ALLOWED_NETWORKS", "", "Addresses always allowed as targets (CIDR, "
        "comma-separated), e.g. a fixed subnet; loopback and link-local only this way.",
        parse_networks, shown="none")
    endpoints_file: Path | None = setting(
        "WEBHOOKS_ENDPOINTS_FILE", None, "JSON list of endpoints declared by the operator of "
        "the service (the chart's `webhooks.endpoints`, mounted from a Secret).", file)
    min_backoff_seconds: float = setting("WEBHOOKS_MIN_BACKOFF_SECONDS", "30", "First retry "
                                         "delay of a failed delivery (doubling after).",
                                         number(low=0.01))
    max_backoff_seconds: float = setting("WEBHOOKS_MAX_BACKOFF_SECONDS", "7200", "Longest delay "
                                         "between two attempts.", number(low=0.01))
    retry_for_seconds: float = setting(
        "WEBHOOKS_RETRY_FOR_SECONDS", "86400", "Retry a failing delivery at least this long "
        "after its first attempt, then dead-letter it.", number(low=0))
    connect_timeout: float = setting("WEBHOOKS_CONNECT_TIMEOUT", "3", "Seconds to connect to a "
                                     "receiver.", number(low=0.05))
    read_timeout: float = setting("WEBHOOKS_READ_TIMEOUT", "5", "Seconds to wait for a "
                                  "receiver's answer.", number(low=0.05))
    rotation_overlap_seconds: int = setting(
        "WEBHOOKS_ROTATION_OVERLAP_SECONDS", "86400", "After a secret rotation, how long the "
        "previous secret still signs (both signatures are sent).", integer(low=0))
    max_endpoints: int = setting("WEBHOOKS_MAX_ENDPOINTS", "50", "Endpoints one caller may "
                                 "register.", integer(low=1, high=10_000))
    dead_retention_seconds: int = setting(
        "WEBHOOKS_DEAD_RETENTION_SECONDS", "1209600", "How long dead-lettered deliveries stay "
        "listed (`GET /v1/webhooks/dead-letters`).", integer(low=60))
    processes: int = setting("WEBHOOKS_PROCESSES", "1", "Processes of `email-service "
                             "webhooks`.", integer(low=1))
    threads: int = setting("WEBHOOKS_THREADS", "16", "Delivery threads per process.",
                           integer(low=1))

    def __post_init__(self) -> None:
        if self.min_backoff_seconds > self.max_backoff_seconds:
            raise ConfigError("WEBHOOKS_MIN_BACKOFF_SECONDS: must not exceed "
                              "WEBHOOKS_MAX_BACKOFF_SECONDS")

    @property
    def policy(self) -> TargetPolicy:
        return TargetPolicy(self.allowed_hosts, self.cluster_hosts, self.allowed_networks)
