"""Transport settings: TRANSPORT/TRANSPORTS, the Mailtrap token and hosts, and the replaced
order-confirmation service's variable names (aliases)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailcore.config import ConfigError, Settings
from mailcore.transports import transport_from_settings
from mailcore.transports.failover import FailoverTransport
from mailcore.transports.mailtrap import MailtrapTransport

BASE = {"SECRETS_DIR": "/nonexistent"}


def settings(**env: str) -> Settings:
    return Settings.from_env({**BASE, **env})


def test_a_mailtrap_token_without_an_smtp_host_selects_mailtrap() -> None:
    chosen = settings(MAILTRAP_API_TOKEN="tok")
    assert chosen.transports == ("mailtrap",) and chosen.worker.transport == "mailtrap"
    assert chosen.transport.mailtrap_base_url == "https://send.api.mailtrap.io"
    transport = transport_from_settings(chosen)
    assert isinstance(transport, MailtrapTransport)
    assert transport.url == "https://send.api.mailtrap.io/api/send"
    transport.close()


def test_an_smtp_host_keeps_smtp_even_with_a_token() -> None:
    assert settings(MAILTRAP_API_TOKEN="tok", SMTP_HOST="relay").transports == ("smtp",)
    assert settings().transports == ("smtp",)


def test_the_token_may_come_from_a_file_or_the_secrets_folder(tmp_path: Path) -> None:
    (tmp_path / "mailtrap_api_token").write_text("from-secrets\n")
    found = Settings.from_env({"SECRETS_DIR": str(tmp_path)})
    assert found.transport.mailtrap_api_token == "from-secrets"
    named = tmp_path / "token"
    named.write_text("from-file")
    chosen = settings(MAILTRAP_API_TOKEN_FILE=str(named))
    assert chosen.transport.mailtrap_api_token == "from-file" and chosen.transports == ("mailtrap",)


@pytest.mark.parametrize(("env", "url"), [
    ({"MAILTRAP_BULK": "true"}, "https://bulk.api.mailtrap.io/api/send"),
    ({"MAILTRAP_SANDBOX_INBOX_ID": "123"}, "https://sandbox.api.mailtrap.io/api/send/123"),
    ({"MAILTRAP_BASE_URL": "http://proxy:8080/"}, "http://proxy:8080/api/send"),
])
def test_hosts(env: dict[str, str], url: str) -> None:
    transport = transport_from_settings(settings(MAILTRAP_API_TOKEN="tok", **env))
    assert isinstance(transport, MailtrapTransport) and transport.url == url
    transport.close()


def test_transports_builds_an_ordered_failover_chain() -> None:
    chosen = settings(TRANSPORTS="smtp, mailtrap", MAILTRAP_API_TOKEN="tok",
                      FAILOVER_COOLDOWN_SECONDS="5")
    assert chosen.transports == ("smtp", "mailtrap") and chosen.worker.transport == "smtp"
    chain = transport_from_settings(chosen)
    assert isinstance(chain, FailoverTransport)
    assert [t.name for t in chain.transports] == ["smtp", "mailtrap"]
    assert chain.circuits["smtp"].cooldown == 5.0
    chain.close()


@pytest.mark.parametrize(("env", "message"), [
    ({"TRANSPORT": "mailtrap"}, "MAILTRAP_API_TOKEN: required when TRANSPORT names mailtrap"),
    ({"TRANSPORTS": "smtp,mailtrap"}, "MAILTRAP_API_TOKEN: required when TRANSPORTS"),
    ({"TRANSPORTS": "smtp,carrier-pigeon"}, "TRANSPORTS: 'carrier-pigeon' is not one of"),
    ({"TRANSPORTS": " , "}, "TRANSPORTS: name at least one transport"),
    ({"TRANSPORT": "smtp", "TRANSPORTS": "smtp"}, "TRANSPORTS: set either"),
    ({"TRANSPORT": "sendgrid"}, "TRANSPORT: must be one of smtp, outbox, mailtrap"),
    ({"MAILTRAP_API_TOKEN": "t", "MAILTRAP_BASE_URL": "ftp://x"}, "MAILTRAP_BASE_URL"),
    ({"MAILTRAP_API_TOKEN": "t", "MAILTRAP_API_TOKEN_FILE": "/x"}, "MAILTRAP_API_TOKEN: set"),
])
def test_bad_transport_settings_stop_with_one_line(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        settings(**env)


def test_seed_two_names_alone_configure_sender_brand_and_transport() -> None:
    chosen = settings(MAILTRAP_API_TOKEN="tok", EMAIL_SENDER="orders@shop.example",
                      COMPANY_NAME="Shop & Co", SUPPORT_EMAIL="help@shop.example")
    assert chosen.sender.email == "orders@shop.example"
    assert chosen.sender.name == "Shop & Co" and chosen.brand.name == "Shop & Co"
    assert chosen.brand.support_email == "help@shop.example"
    assert chosen.transports == ("mailtrap",)


def test_native_names_win_nothing_when_they_agree() -> None:
    chosen = settings(EMAIL_SENDER="a@shop.example", SENDER_EMAIL="a@shop.example",
                      COMPANY_NAME="Shop", BRAND_NAME="Shop", SENDER_NAME="Shop Sender")
    assert chosen.sender.email == "a@shop.example" and chosen.sender.name == "Shop Sender"


@pytest.mark.parametrize(("env", "message"), [
    ({"EMAIL_SENDER": "a@shop.example", "SENDER_EMAIL": "b@shop.example"},
     "EMAIL_SENDER: conflicts with SENDER_EMAIL"),
    ({"COMPANY_NAME": "Shop", "BRAND_NAME": "Other"}, "COMPANY_NAME: conflicts with BRAND_NAME"),
    ({"EMAIL_SENDER": "not an address"}, r"EMAIL_SENDER \(as SENDER_EMAIL\)"),
    ({"SUPPORT_EMAIL": "nobody"}, "SUPPORT_EMAIL"),
])
def test_alias_conflicts_and_bad_values_stop_at_start(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        settings(**env)
