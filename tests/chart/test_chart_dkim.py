"""The chart's DKIM values, rendered by the real helm: keys from an existing Secret reach the
workers only, as /run/secrets/dkim/<domain>/<selector>.pem, with the DKIM_* the service reads
back; bad values are refused."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mailcore.config import Settings
from mailcore.dkim_signing import load_keys

from ..dkim_keys import write_ed25519_key, write_rsa_key
from .conftest import CHART
from .test_chart import REQUIRED, by_kind, helm, pod_specs, projected_files, render

KEYS = ("--set", "dkim.existingSecret=shop-dkim",
        "--set", "dkim.keys[0].domain=example.com", "--set", "dkim.keys[0].selector=mail",
        "--set", "dkim.keys[1].domain=example.com",
        "--set", "dkim.keys[1].selector=mail-ed25519",
        "--set", "dkim.keys[2].domain=shop.example", "--set", "dkim.keys[2].selector=mail",
        "--set", "dkim.keys[2].secretKey=shop-rsa.pem")


def worker_env(docs: list[dict[str, Any]]) -> dict[str, str]:
    [container] = pod_specs(docs)["mail-email-service-worker"]["containers"]
    return {item["name"]: item["value"] for item in container.get("env", [])}


def test_keys_from_an_existing_secret_reach_only_the_workers(
        helm_binary: str, tmp_path: Path) -> None:
    docs = render(helm_binary, *REQUIRED, *KEYS)
    specs = pod_specs(docs)
    files = projected_files(specs["mail-email-service-worker"])
    assert {path: ref for path, ref in files.items() if path.startswith("dkim/")} == {
        "dkim/example.com/mail.pem": ("shop-dkim", "example.com.mail.pem"),
        "dkim/example.com/mail-ed25519.pem": ("shop-dkim", "example.com.mail-ed25519.pem"),
        "dkim/shop.example/mail.pem": ("shop-dkim", "shop-rsa.pem"),
    }
    for other in ("mail-email-service-ingress", "mail-email-service-operator"):
        assert not [p for p in projected_files(specs[other]) if p.startswith("dkim/")]
        assert "DKIM" not in str(specs[other])
    configmap = by_kind(docs, "ConfigMap")["mail-email-service"]["data"]
    assert not [key for key in configmap if key.startswith("DKIM_")]
    env = worker_env(docs)
    assert env["DKIM_DOMAINS"] == "example.com,shop.example"
    assert env["DKIM_KEYS_DIR"] == "/run/secrets/dkim"
    # The workers' environment and files are a configuration the service accepts: the keys
    # written where the projection puts them (under a stand-in for /run/secrets) load.
    for path in files:
        if path.startswith("dkim/"):
            writer = write_ed25519_key if "ed25519" in path else write_rsa_key
            writer(tmp_path / path)
    settings = Settings.from_env({**configmap, **env, "SECRETS_DIR": "/nonexistent",
                                  "DKIM_KEYS_DIR": str(tmp_path / "dkim")})
    keys = load_keys(settings.dkim)
    assert {d: [k.selector for k in found] for d, found in keys.items()} == {
        "example.com": ["mail", "mail-ed25519"], "shop.example": ["mail"]}


def test_no_keys_no_dkim(helm_binary: str) -> None:
    docs = render(helm_binary, *REQUIRED)
    assert "DKIM" not in str(pod_specs(docs)["mail-email-service-worker"])


@pytest.mark.parametrize(("args", "complaint"), [
    (KEYS[2:], "dkim.existingSecret is required"),
    ((*KEYS, "--set", "dkim.keys[3].domain=x.example", "--set", "dkim.keys[3].selector=other"),
     "selector \"other\" is neither dkim.selector"),
    (("--set", "dkim.selector=bad_selector"), "/dkim/selector"),
    (("--set", "dkim.keys[0].domain=not a domain", "--set", "dkim.keys[0].selector=mail"),
     "/dkim/keys/0/domain"),
    (("--set", "dkim.key=x"), "additional properties 'key' not allowed"),
])
def test_bad_dkim_values_are_refused(helm_binary: str, args: tuple[str, ...],
                                     complaint: str) -> None:
    result = helm(helm_binary, "template", "mail", str(CHART), *REQUIRED, *args, check=False)
    assert result.returncode != 0 and complaint in result.stderr, result.stderr
