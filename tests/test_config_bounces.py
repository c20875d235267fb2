"""The bounce settings: a domain needs a key, the key a length, the domain a DNS shape (special-use
names such as ``.test`` allowed); the key may come from a secret file."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailcore.config import ConfigError

from .support import make_settings

KEY = "0123456789abcdef0123"


def test_off_by_default() -> None:
    settings = make_settings()
    assert settings.bounces.domain is None and settings.bounces.secret is None
    assert settings.bounces.mailtrap_webhook_secret is None


@pytest.mark.parametrize(("domain", "expected"), [
    ("bounces.example.com", "bounces.example.com"), ("Bounces.Example.COM.", "bounces.example.com"),
    ("bounce.test", "bounce.test"), ("bounces.bücher.example", "bounces.xn--bcher-kva.example"),
])
def test_domains(domain: str, expected: str) -> None:
    assert make_settings(BOUNCE_DOMAIN=domain, BOUNCE_SECRET=KEY).bounces.domain == expected


@pytest.mark.parametrize("domain", ["localhost", "a b.example", "-x.example", "x..example",
                                    "bounces@example.com", "x" * 64 + ".example", "a.b_c.example"])
def test_bad_domains(domain: str) -> None:
    with pytest.raises(ConfigError, match=r"^BOUNCE_DOMAIN: "):
        make_settings(BOUNCE_DOMAIN=domain, BOUNCE_SECRET=KEY)


def test_a_domain_needs_a_key_of_16_bytes() -> None:
    with pytest.raises(ConfigError, match=r"^BOUNCE_SECRET: required when BOUNCE_DOMAIN"):
        make_settings(BOUNCE_DOMAIN="bounces.example.com")
    with pytest.raises(ConfigError, match=r"^BOUNCE_SECRET: must be at least 16 bytes"):
        make_settings(BOUNCE_DOMAIN="bounces.example.com", BOUNCE_SECRET="short")


def test_keys_from_secret_files(tmp_path: Path) -> None:
    (tmp_path / "bounce_secret").write_text(KEY + "\n")
    (tmp_path / "mailtrap_webhook_secret").write_text("whsec")
    settings = make_settings(SECRETS_DIR=str(tmp_path), BOUNCE_DOMAIN="bounces.example.com")
    assert settings.bounces.secret_bytes == KEY.encode()
    assert settings.bounces.mailtrap_webhook_secret == "whsec"


@pytest.mark.parametrize(("name", "value"), [("BOUNCES_PORT", "0"), ("BOUNCES_HTTP_PORT", "x"),
                                             ("BOUNCES_MAX_MESSAGE_BYTES", "100"),
                                             ("BOUNCES_MAX_RECIPIENTS", "0"),
                                             ("BOUNCES_LMTP", "maybe")])
def test_bounds(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=f"^{name}: "):
        make_settings(**{name: value})
