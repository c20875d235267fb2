"""Standard Webhooks signatures, checked with the reference package (``standardwebhooks``)."""

from __future__ import annotations

import time

import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from mailcore.webhook_signing import new_secret, secret_key, signed_headers


def test_the_reference_package_verifies_our_signature() -> None:
    secret = new_secret()
    body = b'{"type":"message.sent","timestamp":"2026-01-01T00:00:00.000Z","data":{}}'
    headers = signed_headers([secret], "evt_1", int(time.time()), body)
    assert Webhook(secret).verify(body, headers) == {
        "type": "message.sent", "timestamp": "2026-01-01T00:00:00.000Z", "data": {}}
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(body, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body + b" ", headers)
    with pytest.raises(WebhookVerificationError):  # the id is signed too
        Webhook(secret).verify(body, {**headers, "webhook-id": "evt_2"})


def test_during_a_rotation_either_secret_verifies() -> None:
    old, new = new_secret(), new_secret()
    body = b"{}"
    headers = signed_headers([new, old], "evt_1", int(time.time()), body)
    assert headers["webhook-signature"].count("v1,") == 2
    Webhook(old).verify(body, headers)
    Webhook(new).verify(body, headers)


@pytest.mark.parametrize("secret", ["", "whsec_", "sk_abc", "whsec_not base64!",
                                    "whsec_" + "QUJD", "whsec_" + "A" * 200])
def test_malformed_secrets_are_refused(secret: str) -> None:
    with pytest.raises(ValueError):
        secret_key(secret)


def test_the_readmes_verification_by_hand_accepts_ours_and_refuses_forgeries() -> None:
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme[readme.index("## Webhooks"):]
    snippet = re.search(r"or by hand:\n\n```python\n(.*?)```", section, re.S)
    assert snippet, "the README's hand-written verification snippet"
    namespace: dict[str, object] = {}
    exec(snippet.group(1), namespace)  # noqa: S102 (our own README's example)
    verify = namespace["verify"]
    assert callable(verify)
    old, new = new_secret(), new_secret()
    body = b'{"type":"message.sent"}'
    headers = signed_headers([new, old], "evt_1", int(time.time()), body)
    assert verify(old, body, headers) and verify(new, body, headers)
    assert not verify(new_secret(), body, headers)
    assert not verify(new, body + b" ", headers)
    stale = signed_headers([new], "evt_1", int(time.time()) - 3600, body)
    assert not verify(new, body, stale)
