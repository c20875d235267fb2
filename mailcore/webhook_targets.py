"""Where a webhook may be delivered: the SSRF guard, as pure rules.

Two checks, both needed:

- :meth:`TargetPolicy.check_url`, when an endpoint is registered (and again before each
  delivery): ``http``/``https`` only, no user-info (``http://allowed@evil``), an ASCII host that
  is a DNS name or a canonical IP literal (``2130706433``, ``0177.0.0.1``, ``127.1``, ``0x7f.1``
  are refused rather than guessed at), and the host must match ``WEBHOOKS_ALLOWED_HOSTS``.
  ``https`` is required except for hosts matching ``WEBHOOKS_CLUSTER_HOSTS`` (in-cluster
  services, where TLS is usually absent).
- :meth:`TargetPolicy.check_address`, on every address the host resolves to at delivery time
  (the connection then goes to that address, never to a second lookup): addresses inside
  ``WEBHOOKS_ALLOWED_NETWORKS`` pass; otherwise public (global) addresses pass, private ones
  (RFC 1918, unique-local IPv6, CGNAT) only for cluster hosts, and loopback, link-local
  (cloud metadata at 169.254.169.254), unspecified, multicast and reserved addresses never.
  IPv4-mapped and NAT64/6to4 IPv6 spellings are judged as the IPv4 address they carry.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final
from urllib.parse import SplitResult, urlsplit

from .errors import InvalidRequest

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Longest URL accepted for an endpoint.
MAX_URL_LENGTH: Final = 2048
_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")
_PATTERN = re.compile(r"(\*\.)?([a-z0-9.-]+|\[[0-9a-f:.]+\])")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
#: Not "private" to Python's ipaddress but not on the public internet either (RFC 6598 CGNAT).
_SHARED = ipaddress.IPv4Network("100.64.0.0/10")
#: "This network": 0.0.0.0/8 reaches the local host on Linux.
_THIS_NETWORK = ipaddress.IPv4Network("0.0.0.0/8")


class InvalidWebhookTarget(InvalidRequest):
    """A webhook URL or the address it resolves to is not allowed (the SSRF guard)."""

    code = "invalid_webhook_url"


def parse_host_patterns(raw: str) -> tuple[str, ...]:
    """Comma-separated host patterns: ``hooks.example.com`` (that host), ``*.example.com``
    (any name under it), ``*.team-a.svc.cluster.local`` (a namespace's services), or an IP
    literal (``10.0.0.7``, ``[fd00::1]``)."""
    patterns = []
    for part in (piece.strip().lower() for piece in raw.split(",")):
        if not part:
            continue
        if not _PATTERN.fullmatch(part):
            raise ValueError(f"{part!r} is not a host pattern (a name, *.name or an IP)")
        patterns.append(part)
    return tuple(dict.fromkeys(patterns))


def parse_networks(raw: str) -> tuple[IPNetwork, ...]:
    """Comma-separated CIDR networks (``10.0.0.0/8``, ``fd00::/8``, ``127.0.0.1/32``)."""
    try:
        return tuple(ipaddress.ip_network(part.strip(), strict=False)
                     for part in raw.split(",") if part.strip())
    except ValueError as exc:
        raise ValueError(f"not a network: {exc}") from None


def _canonical_ip(host: str) -> IPAddress | None:
    """The IP a host literal spells canonically (dotted quad, or bracketed IPv6), else None."""
    if host.startswith("[") and host.endswith("]"):
        try:
            return ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            return None
    try:
        address = ipaddress.IPv4Address(host)
    except ValueError:
        return None
    return address


def _dns_name(host: str) -> bool:
    labels = host.rstrip(".").split(".")
    if len(host) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        return False
    # A last label of digits (or 0x..) is how 127.1, 2130706433 and 0x7f.0.0.1 hide an IP.
    return not re.fullmatch(r"(0x[0-9a-f]*|[0-9]+)", labels[-1])


def host_matches(host: str, patterns: Iterable[str]) -> bool:
    """Whether ``host`` (lower-case, as :meth:`TargetPolicy.check_url` returns it) matches one
    of ``patterns``: exactly, or under a ``*.`` pattern (``*.svc.cluster.local`` matches
    ``api.team.svc.cluster.local``, not ``svc.cluster.local`` itself)."""
    host = host.rstrip(".")
    for pattern in patterns:
        if pattern.startswith("*."):
            if host.endswith(pattern[1:]) and len(host) > len(pattern) - 1:
                return True
        elif host == pattern:
            return True
    return False


def carried_ipv4(address: IPAddress) -> IPAddress:
    """The IPv4 address an IPv6 spelling carries (mapped, NAT64, 6to4, Teredo), else itself."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address in _NAT64:
            return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if address.sixtofour is not None:
            return address.sixtofour
        if address.teredo is not None:
            return address.teredo[1]
    return address


@dataclass(frozen=True)
class Target:
    """A checked URL: what to connect to and what to ask for."""

    scheme: str
    host: str
    port: int
    path: str
    cluster: bool

    @property
    def host_header(self) -> str:
        default = 443 if self.scheme == "https" else 80
        return self.host if self.port == default else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class TargetPolicy:
    """The allow-lists (``WEBHOOKS_ALLOWED_HOSTS``, ``WEBHOOKS_CLUSTER_HOSTS``,
    ``WEBHOOKS_ALLOWED_NETWORKS``).

    Parameters:
      allowed_hosts: host patterns a URL must match.
      cluster_hosts: patterns of in-cluster hosts: plain ``http`` and private addresses allowed.
      allowed_networks: addresses always allowed (a test's loopback receiver, a fixed subnet).
    """

    allowed_hosts: tuple[str, ...]
    cluster_hosts: tuple[str, ...] = ()
    allowed_networks: tuple[IPNetwork, ...] = ()

    def check_url(self, url: object) -> Target:
        """The target of ``url``, or :class:`InvalidWebhookTarget` saying why not."""
        if not isinstance(url, str):
            raise _refused("must be a string")
        if len(url) > MAX_URL_LENGTH:
            raise _refused(f"longer than {MAX_URL_LENGTH} characters")
        if not url.isascii() or any(ord(ch) < 0x21 or ord(ch) == 0x7F for ch in url):
            raise _refused("must be ASCII without spaces or control characters "
                           "(an internationalised host goes in its xn-- form)")
        try:
            parts: SplitResult = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise _refused(f"is not a URL ({exc})") from None
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https"):
            raise _refused("must be an http or https URL")
        if "@" in parts.netloc or parts.username is not None or parts.password is not None:
            raise _refused("must not carry user information (user@host)")
        if "\\" in url:
            raise _refused("must not contain backslashes")
        host = (parts.hostname or "").lower()
        if parts.netloc.startswith("[") or ":" in host:
            host = f"[{host}]"
        if not host or host == "[]":
            raise _refused("has no host")
        ip = _canonical_ip(host)
        if ip is None and not _dns_name(host):
            raise _refused(f"host {host!r} is neither a DNS name nor a plain IP address")
        if ip is not None and host.strip("[]") != str(ip):
            raise _refused(f"host {host!r} is not written canonically")
        host = host.rstrip(".")
        if not host_matches(host, self.allowed_hosts):
            raise _refused(f"host {host!r} is not in WEBHOOKS_ALLOWED_HOSTS")
        cluster = host_matches(host, self.cluster_hosts)
        if scheme != "https" and not cluster:
            raise _refused("must use https (plain http only for WEBHOOKS_CLUSTER_HOSTS)")
        if parts.fragment:
            raise _refused("must not have a fragment")
        path = parts.path or "/"
        if parts.query:
            path = f"{path}?{parts.query}"
        default = 443 if scheme == "https" else 80
        return Target(scheme=scheme, host=host, port=port or default, path=path,
                      cluster=cluster)

    def check_address(self, target: Target, address: IPAddress) -> None:
        """Refuse ``address`` (one ``target.host`` resolved to) unless it may be connected to."""
        if any(address in network for network in self.allowed_networks):
            return
        judged = carried_ipv4(address)
        if any(judged in network for network in self.allowed_networks):
            return
        if (judged.is_loopback or judged.is_link_local or judged.is_unspecified
                or judged.is_multicast or judged.is_reserved
                or (isinstance(judged, ipaddress.IPv4Address) and judged in _THIS_NETWORK)):
            raise _refused(f"{target.host} resolves to {address}, a loopback, link-local, "
                           "multicast or reserved address")
        if judged.is_global and not (isinstance(judged, ipaddress.IPv4Address)
                                     and judged in _SHARED):
            return
        if target.cluster and (judged.is_private or judged in _SHARED):
            return
        raise _refused(f"{target.host} resolves to {address}, a private address "
                       "(allowed only for WEBHOOKS_CLUSTER_HOSTS or WEBHOOKS_ALLOWED_NETWORKS)")


def _refused(why: str) -> InvalidWebhookTarget:
    return InvalidWebhookTarget(f"url: {why}", details=[{"field": "url", "message": why}])
