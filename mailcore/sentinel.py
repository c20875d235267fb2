"""Redis behind Sentinel: where the sentinels are (``REDIS_SENTINELS`` and its companions).

The clients that follow the primary are in :mod:`mailcore.sentinel_client`; this module needs
no Redis library, so reading the settings stays cheap.

Parsers raise :class:`ValueError` with a message that does not name the variable; the settings
reader prefixes the name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: More sentinels than this is a mistake (a quorum needs 3 or 5), not a deployment.
MAX_SENTINELS = 16
DEFAULT_MASTER = "mymaster"

# RFC 1123 host names (dots between labels), or IPv4; IPv6 only in brackets (see below).
_HOST = re.compile(r"(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                   r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*")
_IPV6 = re.compile(r"[0-9A-Fa-f:.]{2,45}")
# What Sentinel itself accepts as a master name, bounded.
_MASTER = re.compile(r"[A-Za-z0-9._-]{1,64}")


@dataclass(frozen=True)
class SentinelSettings:
    """How to find the primary through Sentinel.

    Parameters:
      sentinels: ``(host, port)`` of each sentinel, in the order given.
      master: the name the sentinels monitor the primary under (``sentinel monitor <name>``).
      sentinel_password: what the sentinels require (``requirepass`` in sentinel.conf), if any.
      password: what the data nodes (primary and replicas) require, if any.
      db: the database number on the data nodes.
    """

    sentinels: tuple[tuple[str, int], ...]
    master: str = DEFAULT_MASTER
    sentinel_password: str | None = None
    password: str | None = None
    db: int = 0

    @property
    def addresses(self) -> str:
        """The sentinels as ``REDIS_SENTINELS`` lists them."""
        return ",".join(_join(host, port) for host, port in self.sentinels)

    def describe(self) -> str:
        """Where Redis is, without passwords (for logs)."""
        return f"sentinel://{self.addresses}/{self.master}/{self.db}"


def parse_sentinels(raw: str) -> tuple[tuple[str, int], ...]:
    """``host:port,host:port`` (IPv6 as ``[::1]:26379``) into ``(host, port)`` pairs.

    Every entry must be well-formed: an empty entry (``a:1,,b:1``) or a duplicate is a typo
    that would otherwise quietly shrink the set of sentinels asked.
    """
    entries = raw.split(",")
    if len(entries) > MAX_SENTINELS:
        raise ValueError(f"at most {MAX_SENTINELS} sentinels, got {len(entries)} entries")
    pairs: list[tuple[str, int]] = []
    for number, entry in enumerate(entries, start=1):
        pair = _parse_entry(entry.strip(), number)
        if pair in pairs:
            raise ValueError(f"entry {number} ({_join(*pair)}) is listed twice")
        pairs.append(pair)
    return tuple(pairs)


def parse_master(raw: str) -> str:
    if not _MASTER.fullmatch(raw):
        raise ValueError(f"must be 1-64 letters, digits, '.', '_' or '-', got {raw[:80]!r}")
    return raw


def _parse_entry(entry: str, number: int) -> tuple[str, int]:
    where = f"entry {number}"
    if not entry:
        raise ValueError(f"{where} is empty (expected host:port,host:port)")
    shown = repr(entry[:80])
    if entry.startswith("["):
        host, sep, port_text = entry[1:].partition("]:")
        if not sep or not _IPV6.fullmatch(host) or ":" not in host:
            raise ValueError(f"{where}: {shown} is not [IPv6 address]:port")
    else:
        host, sep, port_text = entry.rpartition(":")
        if not sep:
            raise ValueError(f"{where}: {shown} has no port (expected host:port)")
        if ":" in host:
            raise ValueError(f"{where}: {shown}: write an IPv6 address in brackets, "
                             "[::1]:26379")
        if not _HOST.fullmatch(host):
            raise ValueError(f"{where}: {shown} is not a host name or IPv4 address")
    if not port_text.isascii() or not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"{where}: {shown}: the port must be a number from 1 to 65535")
    return host, int(port_text)


def _join(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
