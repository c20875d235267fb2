"""One-click unsubscribe (RFC 8058): the signed token, hostile tokens, and the /u/{token}
endpoints through the real app (TestClient, a real Redis): nothing changes on GET, POST adds an
``unsubscribe`` suppression and the ``unsubscribed`` event, every bad token gets one answer."""

from __future__ import annotations

import base64
import html
import re
import uuid
from collections.abc import Iterator
from typing import Any, cast
from urllib.parse import urljoin

import pytest
from starlette.testclient import TestClient

from mailcore.config import ConfigError
from mailcore.lifecycle import decode_event, stream_key
from mailcore.suppressions import SyncSuppressionList
from mailcore.unsubscribe import make_token, unsubscribe_headers, verify_token
from service.app import create_app

from .support import RedisServer, app_settings, make_settings

SECRET = "s" * 40
OLD_SECRET = "o" * 40
OTHER = "x" * 40
MESSAGE = "0b3f9a52-6a8e-4a57-9d0f-3f2b8f1c9e11"


def token(address: str = "ada@example.com", scope: str = "bulk", secret: str = SECRET) -> str:
    return make_token(secret, address, scope, MESSAGE)


def test_a_token_round_trips_and_is_compact() -> None:
    made = token("Ada+news@Example.com")
    assert len(made) < 130 and all(c.isalnum() or c in "-_." for c in made)
    found = verify_token([SECRET], made)
    assert found is not None
    assert (found.address, found.scope, found.message_id) == ("ada@example.com", "bulk", MESSAGE)


def test_rotation_every_configured_secret_verifies() -> None:
    assert verify_token([SECRET, OLD_SECRET], token(secret=OLD_SECRET)) is not None
    assert verify_token([SECRET], token(secret=OLD_SECRET)) is None


def _tampered() -> list[str]:
    good = token()
    payload, mac = good.split(".")
    raw = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    other = base64.urlsafe_b64encode(raw.replace(b"ada@", b"eve@")).decode().rstrip("=")
    flipped = mac[:-1] + ("A" if mac[-1] != "A" else "B")
    return [f"{other}.{mac}", f"{payload}.{flipped}", good[:-1], good[:20], payload,
            f"{payload}.", f".{mac}", good + "A", good.replace(".", ".."), good + "." + mac,
            f"{payload}={'.'}{mac}", good.upper(), ""]


@pytest.mark.parametrize("bad", [
    *_tampered(), token(secret=OTHER), "A" * 10_000, "\u00e9" * 40 + "." + "A" * 22,
    "../../etc/passwd", "%00", "a.b", "bnVsbA.AAAAAAAAAAAAAAAAAAAAAA",
])
def test_every_bad_token_is_none(bad: str) -> None:
    assert verify_token([SECRET], bad) is None


def test_a_validly_signed_but_malformed_payload_is_refused() -> None:
    import hashlib
    import hmac

    for payload in [b"2\x1fbulk\x1fada@example.com\x1fm", b"1\x1fBULK\x1fada@example.com\x1fm",
                    b"1\x1fbulk\x1fno-at\x1fm", b"1\x1fbulk\x1fa@b", b"\xff\x1f"]:
        mac = hmac.new(SECRET.encode(), payload, hashlib.sha256).digest()[:16]
        forged = (base64.urlsafe_b64encode(payload).decode().rstrip("=") + "." +
                  base64.urlsafe_b64encode(mac).decode().rstrip("="))
        assert verify_token([SECRET], forged) is None


def test_headers_and_bad_arguments() -> None:
    headers = unsubscribe_headers("https://mail.example.com", SECRET, "ada@example.com", "bulk",
                                  MESSAGE)
    assert headers["List-Unsubscribe"].startswith("<https://mail.example.com/u/")
    assert headers["List-Unsubscribe"].endswith(">")
    assert headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    with pytest.raises(ValueError):
        make_token(SECRET, "ada@example.com", "a:b", MESSAGE)
    with pytest.raises(ValueError):
        make_token(SECRET, "ada@example.com", "bulk", "id\r\nX-Evil: 1")


@pytest.mark.parametrize("env", [
    {"UNSUBSCRIBE_SECRETS": SECRET},
    {"PUBLIC_BASE_URL": "https://mail.example.com", "UNSUBSCRIBE_SECRETS": "short"},
    {"PUBLIC_BASE_URL": "ftp://mail.example.com", "UNSUBSCRIBE_SECRETS": SECRET},
    {"PUBLIC_BASE_URL": "https://mail.example.com/?q=1", "UNSUBSCRIBE_SECRETS": SECRET},
    {"PUBLIC_BASE_URL": "https://mail.example.com/\"><x", "UNSUBSCRIBE_SECRETS": SECRET},
])
def test_settings_need_both_and_sane_values(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError):
        make_settings(JWT_SECRET=SECRET, **env)


def test_settings_read() -> None:
    settings = make_settings(JWT_SECRET=SECRET, PUBLIC_BASE_URL="https://mail.example.com/",
                             UNSUBSCRIBE_SECRETS=f"{SECRET}, {OLD_SECRET}")
    config = settings.suppressions
    assert config.public_base_url == "https://mail.example.com"
    assert config.unsubscribe_secrets == (SECRET, OLD_SECRET) and config.unsubscribe_enabled


# --- the endpoints -----------------------------------------------------------------------------

class Site:
    def __init__(self, client: TestClient, redis_server: RedisServer, prefix: str) -> None:
        self.client = client
        self.redis = redis_server.client()
        self.prefix = prefix
        self.list = SyncSuppressionList(self.redis, prefix)

    def events(self) -> list[dict[str, Any]]:
        entries = cast(list[tuple[bytes, dict[bytes, bytes]]],
                       self.redis.xrange(stream_key(self.prefix)))
        return [decode_event(fields[b"event"]) for _, fields in entries]


@pytest.fixture
def site(redis_server: RedisServer) -> Iterator[Site]:
    prefix = f"unsub-{uuid.uuid4().hex[:8]}"
    settings = app_settings(redis_server.url, KEY_PREFIX=prefix,
                            QUEUE_NAME=f"unsub-{uuid.uuid4().hex[:8]}",
                            PUBLIC_BASE_URL="https://mail.example.com",
                            UNSUBSCRIBE_SECRETS=f"{SECRET},{OLD_SECRET}",
                            WEBHOOKS_ENABLED="true")
    with TestClient(create_app(settings)) as client:
        yield Site(client, redis_server, prefix)


def test_get_shows_a_form_and_changes_nothing(site: Site) -> None:
    page = site.client.get(f"/u/{token()}")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert f'<form method="post" action="./{token()}">' in page.text
    assert "a***@example.com" in page.text and "ada@example.com" not in page.text
    assert page.headers["referrer-policy"] == "no-referrer"
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert site.list.get("ada@example.com", "bulk") is None and site.events() == []


def test_behind_a_path_prefix_the_form_posts_to_the_link(redis_server: RedisServer) -> None:
    """PUBLIC_BASE_URL may carry a path (an ingress serving the service under /mail): the
    confirmation page's button must post where the link pointed, not to the host's root."""
    settings = app_settings(redis_server.url, KEY_PREFIX=f"unsub-{uuid.uuid4().hex[:8]}",
                            PUBLIC_BASE_URL="https://shop.example.com/mail/",
                            UNSUBSCRIBE_SECRETS=SECRET)
    with TestClient(create_app(settings)) as client:
        page = client.get(f"/u/{token()}")
    assert page.status_code == 200
    action = re.search(r'<form method="post" action="([^"]+)">', page.text)
    assert action is not None
    link = f"https://shop.example.com/mail/u/{token()}"
    assert urljoin(link, html.unescape(action.group(1))) == link


def test_one_click_post_suppresses_and_announces(site: Site) -> None:
    # What a mail client sends (RFC 8058 section 3.2).
    answer = site.client.post(f"/u/{token()}", content=b"List-Unsubscribe=One-Click",
                              headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert answer.status_code == 200 and "Unsubscribed" in answer.text
    entry = site.list.get("ada@example.com", "bulk")
    assert entry is not None and entry.reason == "unsubscribe"
    assert entry.source_message_id == MESSAGE
    assert site.list.get("ada@example.com") is None  # the bulk stream only
    [announced] = site.events()
    assert announced["type"] == "message.unsubscribed"
    assert announced["recipient"] == "ada@example.com" and announced["stream"] == "bulk"
    assert announced["message_id"] == MESSAGE


def test_replay_after_delete_unsubscribes_again(site: Site) -> None:
    assert site.client.post(f"/u/{token()}").status_code == 200
    assert site.list.remove("ada@example.com", "bulk")
    assert site.client.post(f"/u/{token()}").status_code == 200
    assert site.list.get("ada@example.com", "bulk") is not None
    assert len(site.events()) == 2


def test_bad_tokens_all_get_the_same_answer(site: Site) -> None:
    answers = set()
    for bad in [*_tampered()[:-1], token(secret=OTHER), "A" * 5000, "%2e%2e", "x.y"]:
        for method in ("GET", "POST"):
            answer = site.client.request(method, f"/u/{bad}")
            answers.add((answer.status_code, answer.text))
    assert len(answers) == 1
    status, text = answers.pop()
    assert status == 404 and "not valid" in text
    assert site.events() == [] and site.list.page() == ([], None)


def test_an_old_secret_still_unsubscribes(site: Site) -> None:
    assert site.client.post(f"/u/{token(secret=OLD_SECRET)}").status_code == 200
    assert site.list.get("ada@example.com", "bulk") is not None


def test_without_secrets_every_token_is_invalid(redis_server: RedisServer) -> None:
    settings = app_settings(redis_server.url, KEY_PREFIX=f"unsub-{uuid.uuid4().hex[:8]}")
    with TestClient(create_app(settings)) as client:
        assert client.post(f"/u/{token()}").status_code == 404
