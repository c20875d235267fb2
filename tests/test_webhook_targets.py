"""The webhook SSRF guard: URL rules, address rules, and real POSTs that must not get through."""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest

from mailcore.webhook_settings import WebhookSettings
from mailcore.webhook_targets import (
    InvalidWebhookTarget,
    IPAddress,
    TargetPolicy,
    parse_host_patterns,
    parse_networks,
)
from workers.webhook_http import MAX_RESPONSE_BYTES, post

from .support import make_settings

POLICY = TargetPolicy(allowed_hosts=("hooks.example.com", "*.svc.cluster.local", "*.partner.io"),
                      cluster_hosts=("*.svc.cluster.local",))


@pytest.mark.parametrize("url", [
    "https://hooks.example.com/in", "https://hooks.example.com:8443/in?x=1",
    "http://api.team-a.svc.cluster.local/hooks", "https://a.b.partner.io",
    "https://HOOKS.example.com./in",
])
def test_allowed_urls(url: str) -> None:
    target = POLICY.check_url(url)
    assert target.host in {"hooks.example.com", "api.team-a.svc.cluster.local", "a.b.partner.io"}


@pytest.mark.parametrize("url", [
    # Not on the allow-list, or only looking like it.
    "https://evil.example.net/", "https://hooks.example.com.evil.net/",
    "https://partner.io/", "https://svc.cluster.local/", "https://xhooks.example.com/",
    # User-info tricks: the host is what follows the last @.
    "https://hooks.example.com@evil.net/", "https://hooks.example.com:pw@evil.net/",
    "https://evil.net@hooks.example.com/", "https://@hooks.example.com/",
    "https://hooks.example.com\\@evil.net/",
    # IP addresses in every spelling (none is allow-listed; odd spellings never parse).
    "http://127.0.0.1/", "http://2130706433/", "http://0177.0.0.1/", "http://0x7f.0.0.1/",
    "http://0x7f000001/", "http://127.1/", "http://127.0.1/", "http://017700000001/",
    "http://[::1]/", "http://[::ffff:127.0.0.1]/", "http://[::ffff:7f00:1]/",
    "http://[0:0:0:0:0:ffff:127.0.0.1]/", "http://169.254.169.254/latest/meta-data/",
    "http://[fd00:ec2::254]/", "http://0/", "http://0.0.0.0/", "http://10.0.0.1/",
    # Local names.
    "http://localhost/", "http://localhost.localdomain/", "http://ip6-localhost/",
    "http://metadata.google.internal/",
    # Schemes and shapes.
    "ftp://hooks.example.com/", "file:///etc/passwd", "gopher://hooks.example.com/",
    "javascript:alert(1)", "hooks.example.com/in", "//hooks.example.com/in", "https:///in",
    "http://hooks.example.com/in",  # https required off the cluster
    "https://hooks.example.com:99999/", "https://hooks.example.com:-1/",
    "https://hooks.example.com/#frag",
    # Encodings: unicode hosts (homographs), control characters, spaces, percent-encoding.
    "https://h\u043e\u043eks.example.com/", "https://hooks.exämple.com/", "https://hooks.example.com\u3002/",
    "https://hooks.example.com/\r\nX-Injected: 1", "https://hooks.example.com /",
    "https://hooks%2eexample.com/", "https://hooks.example.com\x00.evil.net/",
    "https://" + "a" * 64 + ".partner.io/", "https://hooks.example.com/" + "a" * 3000, "",
])
def test_refused_urls(url: str) -> None:
    with pytest.raises(InvalidWebhookTarget):
        POLICY.check_url(url)


@pytest.mark.parametrize("value", [None, 42, ["https://hooks.example.com/"], {"url": "x"}, b"x"])
def test_a_url_must_be_a_string(value: object) -> None:
    with pytest.raises(InvalidWebhookTarget, match="string"):
        POLICY.check_url(value)


PUBLIC_TARGET = POLICY.check_url("https://hooks.example.com/in")
CLUSTER_TARGET = POLICY.check_url("http://api.team-a.svc.cluster.local/hooks")


@pytest.mark.parametrize("address", [
    "127.0.0.1", "127.255.255.254", "0.0.0.0", "0.1.2.3", "169.254.169.254", "169.254.0.1",
    "::1", "::", "fe80::1", "::ffff:127.0.0.1", "::ffff:169.254.169.254", "64:ff9b::7f00:1",
    "2002:7f00:1::", "224.0.0.1", "ff02::1", "240.0.0.1", "255.255.255.255",
])
def test_never_allowed_addresses(address: str) -> None:
    for target in (PUBLIC_TARGET, CLUSTER_TARGET):
        with pytest.raises(InvalidWebhookTarget, match="resolves to"):
            POLICY.check_address(target, ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ["10.0.0.1", "172.16.5.4", "192.168.1.1", "100.64.0.1",
                                     "fd00::1", "::ffff:10.0.0.1"])
def test_private_addresses_only_for_cluster_hosts(address: str) -> None:
    with pytest.raises(InvalidWebhookTarget, match="private"):
        POLICY.check_address(PUBLIC_TARGET, ipaddress.ip_address(address))
    POLICY.check_address(CLUSTER_TARGET, ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ["93.184.216.34", "2606:2800:220:1::1", "8.8.8.8"])
def test_public_addresses_pass(address: str) -> None:
    POLICY.check_address(PUBLIC_TARGET, ipaddress.ip_address(address))


def test_allowed_networks_let_a_chosen_range_through() -> None:
    policy = TargetPolicy(("*.svc.cluster.local",), ("*.svc.cluster.local",),
                          parse_networks("127.0.0.1/32"))
    target = policy.check_url("http://r.ns.svc.cluster.local:8080/")
    policy.check_address(target, ipaddress.ip_address("127.0.0.1"))
    policy.check_address(target, ipaddress.ip_address("::ffff:127.0.0.1"))
    with pytest.raises(InvalidWebhookTarget):
        policy.check_address(target, ipaddress.ip_address("127.0.0.2"))


@pytest.mark.parametrize("raw", ["a b", "*.", "https://x", "*.*.x", "x/y", "ex*ample.com"])
def test_host_patterns_are_checked(raw: str) -> None:
    with pytest.raises(ValueError):
        parse_host_patterns(raw)


def test_settings_refuse_bad_lists() -> None:
    from mailcore.config import ConfigError

    for name, value in [("WEBHOOKS_ALLOWED_HOSTS", "a b"), ("WEBHOOKS_ALLOWED_NETWORKS", "x"),
                        ("WEBHOOKS_MIN_BACKOFF_SECONDS", "900000")]:
        with pytest.raises(ConfigError, match=name):
            make_settings(**{name: value})
    assert make_settings().webhooks == WebhookSettings()


# --- real POSTs: what the guard does at delivery time -------------------------------------------

class _Receiver(BaseHTTPRequestHandler):
    hits: ClassVar[list[str]] = []
    redirect_to = ""

    def do_POST(self) -> None:
        self.hits.append(self.path)
        self.rfile.read(int(self.headers.get("content-length", "0")))
        if self.path.startswith("/redirect"):
            self.send_response(307)
            self.send_header("Location", self.redirect_to)
            self.end_headers()
            return
        body = b"x" * (MAX_RESPONSE_BYTES * 100)
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[ThreadingHTTPServer]:
    _Receiver.hits = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _resolver(*addresses: str) -> object:
    def resolve(host: str, port: int) -> list[IPAddress]:
        return [ipaddress.ip_address(a) for a in addresses]
    return resolve


def test_a_dns_name_resolving_to_loopback_is_refused_before_connecting(
        receiver: ThreadingHTTPServer) -> None:
    port = receiver.server_address[1]
    policy = TargetPolicy(("*.svc.cluster.local",), ("*.svc.cluster.local",))
    for addresses in (["127.0.0.1"], ["10.0.0.1", "127.0.0.1"], ["::ffff:127.0.0.1"]):
        result = post(policy, f"http://rebind.ns.svc.cluster.local:{port}/x", b"{}", {},
                      connect_timeout=1, read_timeout=1,
                      resolver=_resolver(*addresses))  # type: ignore[arg-type]
        assert not result.delivered and result.permanent and "resolves to" in result.error
    assert _Receiver.hits == []


def test_redirects_are_not_followed_and_bodies_not_read(receiver: ThreadingHTTPServer) -> None:
    port = receiver.server_address[1]
    _Receiver.redirect_to = "http://169.254.169.254/latest/meta-data/"
    policy = TargetPolicy(("r.svc.cluster.local",), ("r.svc.cluster.local",),
                          parse_networks("127.0.0.1/32"))
    resolver = _resolver("127.0.0.1")
    moved = post(policy, f"http://r.svc.cluster.local:{port}/redirect", b"{}", {},
                 connect_timeout=1, read_timeout=1, resolver=resolver)  # type: ignore[arg-type]
    assert not moved.delivered and moved.status == 307 and "not followed" in moved.error
    assert not moved.permanent  # a failed attempt, retried like any other
    fine = post(policy, f"http://r.svc.cluster.local:{port}/ok", b"{}", {},
                connect_timeout=1, read_timeout=1, resolver=resolver)  # type: ignore[arg-type]
    assert fine.delivered and fine.status == 200
    assert _Receiver.hits == ["/redirect", "/ok"]  # one request each: nothing followed


def test_a_silent_receiver_times_out_quickly() -> None:
    import socket
    import time

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)  # accepts the connection, never answers
    try:
        policy = TargetPolicy(("127.0.0.1",), ("127.0.0.1",), parse_networks("127.0.0.1/32"))
        started = time.monotonic()
        result = post(policy, f"http://127.0.0.1:{listener.getsockname()[1]}/", b"{}", {},
                      connect_timeout=0.5, read_timeout=0.3)
        assert not result.delivered and result.status is None
        assert time.monotonic() - started < 5
    finally:
        listener.close()


def test_a_real_name_for_the_loopback_is_refused_after_resolving(
        receiver: ThreadingHTTPServer) -> None:
    # Even allow-listed as a cluster host, `localhost` resolves (through the real resolver,
    # /etc/hosts) to loopback, which only WEBHOOKS_ALLOWED_NETWORKS could admit.
    policy = TargetPolicy(("localhost",), ("localhost",))
    result = post(policy, f"http://localhost:{receiver.server_address[1]}/", b"{}", {},
                  connect_timeout=1, read_timeout=1)
    assert not result.delivered and result.permanent and "loopback" in result.error
    assert _Receiver.hits == []


def test_an_unresolvable_name_is_a_failed_attempt_not_a_refusal() -> None:
    policy = TargetPolicy(("*.invalid",), ("*.invalid",))
    result = post(policy, "http://hooks.example.invalid/", b"{}", {}, connect_timeout=1,
                  read_timeout=1)
    assert not result.delivered and not result.permanent and "resolve" in result.error
