"""The chart's transport settings, rendered by the real helm: Mailtrap's token from a value or
an existing Secret (as a file, to the workers only), a failover chain, and refusals."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from mailcore.config import Settings

from .conftest import CHART
from .test_chart import REQUIRED, by_kind, helm, pod_specs, projected_files, render


def configmap(docs: list[dict[str, Any]]) -> dict[str, str]:
    return dict(by_kind(docs, "ConfigMap")["mail-email-service"]["data"])


def test_the_token_from_an_existing_secret_reaches_only_the_workers(helm_binary: str) -> None:
    docs = render(helm_binary, *REQUIRED, "--set", "transports={smtp,mailtrap}",
                  "--set", "mailtrap.existingSecret=shop-mailtrap",
                  "--set", "mailtrap.existingSecretKey=token",
                  "--set", "failover.cooldownSeconds=10")
    specs = pod_specs(docs)
    assert projected_files(specs["mail-email-service-worker"])["mailtrap_api_token"] == (
        "shop-mailtrap", "token")
    for other in ("mail-email-service-ingress", "mail-email-service-operator"):
        assert "mailtrap_api_token" not in projected_files(specs[other])
    assert "mailtrap_api_token" not in next(iter(by_kind(docs, "Secret").values()))["data"]
    data = configmap(docs)
    assert data["TRANSPORTS"] == "smtp,mailtrap" and data["FAILOVER_COOLDOWN_SECONDS"] == "10"
    assert data["SMTP_HOST"] == "smtp.example.com"
    # What the workers read is a configuration the service accepts (the token as its file).
    settings = Settings.from_env({**data, "SECRETS_DIR": "/nonexistent",
                                  "MAILTRAP_API_TOKEN": "from-the-secret-file"})
    assert settings.transports == ("smtp", "mailtrap")
    assert settings.transport.mailtrap_base_url == "https://send.api.mailtrap.io"


def test_a_token_given_as_a_value_goes_into_the_charts_secret(helm_binary: str) -> None:
    docs = render(helm_binary, *REQUIRED, "--set", "transports={mailtrap}",
                  "--set", "mailtrap.apiToken=tok-123",
                  "--set-string", "mailtrap.sandboxInboxId=4242")
    secret = next(iter(by_kind(docs, "Secret").values()))
    assert base64.b64decode(secret["data"]["mailtrap_api_token"]).decode() == "tok-123"
    data = configmap(docs)
    assert "tok-123" not in str(data)
    assert data["TRANSPORTS"] == "mailtrap" and data["MAILTRAP_SANDBOX_INBOX_ID"] == "4242"
    assert "SMTP_HOST" not in data and "FAILOVER_COOLDOWN_SECONDS" not in data
    worker = pod_specs(docs)["mail-email-service-worker"]
    assert projected_files(worker)["mailtrap_api_token"] == (
        "mail-email-service", "mailtrap_api_token")


def test_default_install_is_smtp_only(helm_binary: str) -> None:
    data = configmap(render(helm_binary, *REQUIRED))
    assert not any(key.startswith(("MAILTRAP_", "TRANSPORT", "FAILOVER")) for key in data)


@pytest.mark.parametrize(("args", "complaint"), [
    (("--set", "transports={mailtrap}"), "mailtrap.apiToken or mailtrap.existingSecret"),
    (("--set", "transports={smtp,pigeon}"), "/transports/1"),
    (("--set", "transports={smtp,smtp}"), "/transports"),
    (("--set", "mailtrap.sandboxInboxId=abc"), "/mailtrap/sandboxInboxId"),
    (("--set", "mailtrap.baseUrl=ftp://proxy"), "/mailtrap/baseUrl"),
    (("--set", "mailtrap.token=x"), "additional properties 'token' not allowed"),
])
def test_bad_transport_values_are_refused(helm_binary: str, args: tuple[str, ...],
                                          complaint: str) -> None:
    result = helm(helm_binary, "template", "mail", str(CHART), *REQUIRED, *args, check=False)
    assert result.returncode != 0 and complaint in result.stderr, result.stderr


def test_staging_uses_the_safeguards_and_they_read_back(helm_binary: str) -> None:
    from .test_chart import values_file

    data = configmap(render(helm_binary, "-f", values_file("staging")))
    assert data["RECIPIENT_ALLOWLIST"] == "example.com,staging.example.com"
    assert data["SANDBOX_SUBJECTS"] == "load-test"
    settings = Settings.from_env({**data, "SECRETS_DIR": "/nonexistent"})
    assert settings.safeguards.recipient_allowlist == frozenset({"example.com",
                                                                 "staging.example.com"})
    assert settings.safeguards.sandbox_subjects == ("load-test",)
    prod = configmap(render(helm_binary, "-f", values_file("prod")))
    assert "RECIPIENT_ALLOWLIST" not in prod and "REDIRECT_ALL_TO" not in prod
    redirected = configmap(render(helm_binary, *REQUIRED,
                                  "--set", "config.redirectAllTo=qa@example.com"))
    assert redirected["REDIRECT_ALL_TO"] == "qa@example.com"
