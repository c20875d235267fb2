"""One webhook POST, through the SSRF guard.

The URL is checked (:meth:`TargetPolicy.check_url`), its host resolved once and *every* address
checked (:meth:`TargetPolicy.check_address`); the connection then goes to the first address,
never to a second lookup (no DNS rebinding between check and connect), with the URL's host as
``Host`` and as the TLS server name (certificates are verified against it). Redirects are not
followed (a 3xx is a failed attempt), connect and read timeouts are short, and at most
:data:`MAX_RESPONSE_BYTES` of the answer are read, then dropped: nothing of it is stored.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import urllib3
from urllib3.exceptions import HTTPError

from mailcore.webhook_targets import InvalidWebhookTarget, IPAddress, TargetPolicy

#: Bytes of a receiver's answer read (and thrown away) before the connection is closed.
MAX_RESPONSE_BYTES = 256
USER_AGENT = "email-service-webhooks/1"

Resolver = Callable[[str, int], list[IPAddress]]


def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address ``host`` has (IPv4 and IPv6), in the resolver's order."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses: list[IPAddress] = []
    for *_, sockaddr in infos:
        address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if address not in addresses:
            addresses.append(address)
    return addresses


@dataclass(frozen=True)
class PostResult:
    """How an attempt went.

    Parameters:
      delivered: the receiver answered 2xx.
      status: its status code (None: no answer).
      error: why not, in a line (empty when delivered).
      permanent: retrying cannot help (the URL is no longer allowed).
    """

    delivered: bool
    status: int | None = None
    error: str = ""
    permanent: bool = False


def post(policy: TargetPolicy, url: str, body: bytes, headers: Mapping[str, str], *,
         connect_timeout: float, read_timeout: float,
         resolver: Resolver = resolve) -> PostResult:
    """POST ``body`` to ``url`` once (see the module's docstring)."""
    try:
        target = policy.check_url(url)
        try:
            addresses = resolver(target.host.strip("[]"), target.port)
        except (OSError, UnicodeError) as exc:
            return PostResult(False, error=f"cannot resolve {target.host}: {exc}")
        if not addresses:
            return PostResult(False, error=f"{target.host} has no address")
        for address in addresses:
            policy.check_address(target, address)
    except InvalidWebhookTarget as exc:
        return PostResult(False, error=exc.message, permanent=True)
    pool_class: Any = (urllib3.HTTPSConnectionPool if target.scheme == "https"
                       else urllib3.HTTPConnectionPool)
    options: dict[str, Any] = {}
    if target.scheme == "https":
        options = {"server_hostname": target.host, "assert_hostname": target.host,
                   "cert_reqs": "CERT_REQUIRED"}
    pool = pool_class(str(addresses[0]), target.port, maxsize=1, block=False, retries=False,
                      timeout=urllib3.Timeout(connect=connect_timeout, read=read_timeout),
                      **options)
    try:
        response = pool.urlopen(
            "POST", target.path, body=body, redirect=False, retries=False,
            assert_same_host=False, preload_content=False,
            headers={**headers, "Host": target.host_header, "User-Agent": USER_AGENT,
                     "Content-Type": "application/json", "Connection": "close"})
        try:
            response.read(MAX_RESPONSE_BYTES)
        except HTTPError:
            pass  # the status is what counts
        finally:
            response.close()
    except HTTPError as exc:
        return PostResult(False, error=f"{type(exc).__name__}: {exc}"[:500])
    finally:
        pool.close()
    status = int(response.status)
    if 200 <= status < 300:
        return PostResult(True, status=status)
    what = "a redirect (not followed)" if 300 <= status < 400 else "not 2xx"
    return PostResult(False, status=status, error=f"answered {status}, {what}")
