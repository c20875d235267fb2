"""The chart's one-click unsubscribe and suppression values, rendered by the real helm: the
secrets reach the ingress (verifies) and the workers (sign) as files, never the operator, the
environment or the ConfigMap; the configuration is one the service accepts; bad values fail."""

from __future__ import annotations

import base64

import pytest

from mailcore.config import Settings

from .conftest import CHART
from .test_chart import REQUIRED, by_kind, helm, pod_specs, projected_files, render

SECRETS = "a" * 40 + "," + "b" * 40
LINKS = ("--set", "unsubscribe.publicBaseUrl=https://mail.example.com",
         "--set-string", "unsubscribe.secrets=" + SECRETS.replace(",", "\\,"),
         "--set", "unsubscribe.streams={bulk,newsletters}")


def test_secrets_are_files_for_the_ingress_and_workers_only(helm_binary: str) -> None:
    docs = render(helm_binary, *REQUIRED, *LINKS)
    specs = pod_specs(docs)
    for name in ("mail-email-service-ingress", "mail-email-service-worker"):
        files = projected_files(specs[name])
        assert files["unsubscribe_secrets"] == ("mail-email-service", "unsubscribe_secrets")
    assert "unsubscribe_secrets" not in projected_files(specs["mail-email-service-operator"])
    [secret] = by_kind(docs, "Secret").values()
    assert base64.b64decode(secret["data"]["unsubscribe_secrets"]).decode() == SECRETS
    configmap = by_kind(docs, "ConfigMap")["mail-email-service"]["data"]
    assert "a" * 40 not in str(configmap) and "a" * 40 not in str(specs)
    assert configmap["PUBLIC_BASE_URL"] == "https://mail.example.com"
    assert configmap["UNSUBSCRIBE_STREAMS"] == "bulk,newsletters"
    assert configmap["SUPPRESSION_IMPORT_MAX_LINES"] == "10000"
    # What the pods read is a configuration the service accepts.
    settings = Settings.from_env({**configmap, "JWT_SECRET": "j" * 40,
                                  "UNSUBSCRIBE_SECRETS": SECRETS, "SECRETS_DIR": "/nonexistent"})
    assert settings.suppressions.unsubscribe_enabled
    assert settings.suppressions.unsubscribe_streams == ("bulk", "newsletters")


def test_an_existing_secret_is_referenced(helm_binary: str) -> None:
    docs = render(helm_binary, *REQUIRED, "--set",
                  "unsubscribe.publicBaseUrl=https://mail.example.com",
                  "--set", "unsubscribe.existingSecret=shop-unsub",
                  "--set", "unsubscribe.existingSecretKey=keys")
    files = projected_files(pod_specs(docs)["mail-email-service-worker"])
    assert files["unsubscribe_secrets"] == ("shop-unsub", "keys")
    [secret] = by_kind(docs, "Secret").values()
    assert "unsubscribe_secrets" not in secret["data"]


def test_off_by_default(helm_binary: str) -> None:
    docs = render(helm_binary, *REQUIRED)
    configmap = by_kind(docs, "ConfigMap")["mail-email-service"]["data"]
    assert "PUBLIC_BASE_URL" not in configmap
    for name, spec in pod_specs(docs).items():
        if name.startswith("mail-email-service-") and "volumes" in spec:
            assert "unsubscribe_secrets" not in projected_files(spec)


@pytest.mark.parametrize("values", [
    ("--set", "unsubscribe.publicBaseUrl=https://mail.example.com"),
    ("--set", "unsubscribe.secrets=" + "a" * 40),
    ("--set", "unsubscribe.publicBaseUrl=ftp://x"),
    ("--set", "unsubscribe.streams={Bulk}"),
    ("--set", "suppressions.importMaxLines=0"),
    ("--set", "unsubscribe.extra=1"),
])
def test_bad_values_are_refused(helm_binary: str, values: tuple[str, ...]) -> None:
    result = helm(helm_binary, "template", "mail", str(CHART), *REQUIRED, *values, check=False)
    assert result.returncode != 0
