"""DKIM signing (mailcore.dkim_signing): signatures dkimpy verifies against the published keys,
the header set, key choice by From domain, and start-up errors that name the variable."""

from __future__ import annotations

import base64
import logging
from pathlib import Path

import dkim
import pytest

from mailcore.config import ConfigError, DkimSettings
from mailcore.dkim_signing import DkimSigner, load_keys
from mailcore.message import Recipient
from mailcore.mime import build_envelope
from mailcore.rendering import RenderedEmail

from .dkim_keys import dns_stub, records_of, write_ed25519_key, write_rsa_key
from .support import make_settings


@pytest.fixture(scope="module")
def keys_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("dkim")
    write_rsa_key(root / "example.com" / "mail.pem")
    write_ed25519_key(root / "example.com" / "mail-ed25519.pem")
    write_rsa_key(root / "rsa-only.example" / "mail.pem")
    return root


def settings(keys_dir: Path, **env: str) -> DkimSettings:
    return make_settings(**{"DKIM_KEYS_DIR": str(keys_dir), **env}).dkim


def records(keys_dir: Path) -> dict[str, str]:
    return records_of([
        ("mail._domainkey.example.com", keys_dir / "example.com" / "mail.pem"),
        ("mail-ed25519._domainkey.example.com", keys_dir / "example.com" / "mail-ed25519.pem"),
        ("mail._domainkey.rsa-only.example", keys_dir / "rsa-only.example" / "mail.pem"),
    ])


def message(sender: str = "shop@example.com") -> bytes:
    envelope = build_envelope(
        message_id="6f1c0b2e-0000-4000-8000-000000000001",
        rendered=RenderedEmail(subject="Your order A-1", html="<p>Thanks, Ada</p>",
                               text="Thanks, Ada"),
        sender=Recipient(email=sender, name="Shop"),
        to=[Recipient(email="ada@example.org", name="Ada")],
        cc=[Recipient(email="orders@example.org")],
        reply_to=Recipient(email="help@example.com"),
        headers={"List-Unsubscribe": "<https://shop.example.com/u/1>",
                 "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
                 "List-Id": "Shop orders <orders.shop.example.com>",
                 "Feedback-ID": "orders:shop:esp", "Auto-Submitted": "auto-generated",
                 "X-Campaign": "none"},
        tags=["orders"],
    )
    return envelope.raw


def signatures(signed: bytes) -> list[dict[bytes, bytes]]:
    from dkim.util import parse_tag_value

    checker = dkim.DKIM(signed)
    return [parse_tag_value(value) for name, value in checker.headers
            if name.lower() == b"dkim-signature"]


def verify_all(signed: bytes, published: dict[str, str]) -> list[bool]:
    """Each signature's verdict, in order (dkim.verify alone says whether the first holds)."""
    checker = dkim.DKIM(signed)

    def verdict(idx: int) -> bool:
        try:
            return bool(checker.verify(idx=idx, dnsfunc=dns_stub(published)))
        except dkim.DKIMException:  # a body hash mismatch raises rather than answering False
            return False

    return [verdict(i) for i in range(len(signatures(signed)))]


# --- signing and verifying ----------------------------------------------------------------------

def test_both_algorithms_sign_side_by_side_and_verify(keys_dir: Path) -> None:
    signer = DkimSigner.from_settings(settings(keys_dir, DKIM_DOMAINS="example.com"))
    assert signer is not None
    signed = signer.sign(message(), "example.com")
    found = signatures(signed)
    assert [(s[b"a"], s[b"s"], s[b"d"]) for s in found] == [
        (b"rsa-sha256", b"mail", b"example.com"),
        (b"ed25519-sha256", b"mail-ed25519", b"example.com")]
    assert verify_all(signed, records(keys_dir)) == [True, True]
    assert dkim.verify(signed, dnsfunc=dns_stub(records(keys_dir)))


def test_a_changed_body_or_header_fails_verification(keys_dir: Path) -> None:
    signer = DkimSigner.from_settings(settings(keys_dir, DKIM_DOMAINS="example.com"))
    assert signer is not None
    signed = signer.sign(message(), "example.com")
    assert verify_all(signed.replace(b"Thanks, Ada", b"Thanks, Eve", 1),
                      records(keys_dir)) == [False, False]
    assert verify_all(signed.replace(b"Subject: Your order", b"Subject: Their order"),
                      records(keys_dir)) == [False, False]
    # A second From added above the signed one: oversigning From makes that fail too.
    assert verify_all(b"From: Eve <eve@example.com>\r\n" + signed,
                      records(keys_dir)) == [False, False]
    # Against another published key (a rotated selector), nothing verifies.
    other = write_rsa_key(keys_dir / "elsewhere" / "mail.pem")
    wrong = records(keys_dir) | records_of([("mail._domainkey.example.com", other)])
    assert verify_all(signed, wrong)[0] is False


def test_the_header_set_includes_ours_and_list_unsubscribe_and_oversigns_from(
        keys_dir: Path) -> None:
    signer = DkimSigner.from_settings(settings(keys_dir, DKIM_DOMAINS="example.com"))
    assert signer is not None
    [rsa_sig, _] = signatures(signer.sign(message(), "example.com"))
    signed = [name.strip() for name in rsa_sig[b"h"].split(b":")]
    assert signed.count(b"from") == 2
    for name in (b"to", b"cc", b"subject", b"date", b"message-id", b"reply-to", b"mime-version",
                 b"content-type", b"list-unsubscribe", b"list-unsubscribe-post",
                 b"x-email-service-id", b"x-email-service-tags", b"list-id", b"feedback-id",
                 b"auto-submitted"):
        assert name in signed, name
    # A caller's own X-* header is not ours to vouch for.
    assert b"x-campaign" not in signed
    assert rsa_sig[b"c"] == b"relaxed/relaxed"


def test_the_from_domain_picks_the_key_and_subdomains_only_when_asked(keys_dir: Path) -> None:
    both = settings(keys_dir, DKIM_DOMAINS="example.com,rsa-only.example")
    signer = DkimSigner.from_settings(both)
    assert signer is not None
    [only] = signatures(signer.sign(message("a@rsa-only.example"), "rsa-only.example"))
    assert (only[b"d"], only[b"a"]) == (b"rsa-only.example", b"rsa-sha256")
    assert signer.keys_for("news.example.com") == ()
    parents = DkimSigner.from_settings(settings(keys_dir, DKIM_DOMAINS="example.com",
                                                DKIM_SUBDOMAINS="true"))
    assert parents is not None
    assert [k.domain for k in parents.keys_for("news.EXAMPLE.com")] == ["example.com"] * 2
    assert parents.keys_for("com") == () and parents.keys_for("example.org") == ()
    signed = parents.sign(message("a@news.example.com"), "news.example.com")
    assert verify_all(signed, records(keys_dir)) == [True, True]


def test_unsigned_domains_pass_unchanged_with_one_warning_each(
        keys_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    signer = DkimSigner.from_settings(settings(keys_dir, DKIM_DOMAINS="example.com"))
    assert signer is not None
    raw = message("a@other.example")
    with caplog.at_level(logging.WARNING, logger="email_service.dkim"):
        for _ in range(3):
            assert signer.sign(raw, "other.example") == raw
        signer.sign(message("a@third.example"), "third.example")
    warnings = [r.getMessage() for r in caplog.records if r.name == "email_service.dkim"]
    assert warnings == ["DKIM: mail from other.example goes out unsigned (not in DKIM_DOMAINS)",
                        "DKIM: mail from third.example goes out unsigned (not in DKIM_DOMAINS)"]


def test_shared_key_files_serve_every_domain_without_its_own(
        keys_dir: Path, tmp_path: Path) -> None:
    rsa_file = write_rsa_key(tmp_path / "rsa.pem")
    ed_file = write_ed25519_key(tmp_path / "ed.pem")
    keys = load_keys(settings(keys_dir, DKIM_DOMAINS="example.com,shared.example",
                              DKIM_PRIVATE_KEY_FILE=str(rsa_file),
                              DKIM_ED25519_KEY_FILE=str(ed_file)))
    assert [(k.selector, k.source) for k in keys["shared.example"]] == [
        ("mail", rsa_file), ("mail-ed25519", ed_file)]
    # The directory's own key wins for its domain.
    assert keys["example.com"][0].source == keys_dir / "example.com" / "mail.pem"
    assert keys["shared.example"][0].dns_record == records_of(
        [("x", rsa_file)])["x"]
    from cryptography.hazmat.primitives import serialization

    seed = keys["example.com"][1].private.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
        serialization.NoEncryption())
    assert "PRIVATE" not in repr(keys) and "private" not in repr(keys)
    assert base64.b64encode(seed).decode() not in repr(keys) and seed.hex() not in repr(keys)


def test_no_domains_means_no_signer(keys_dir: Path) -> None:
    assert DkimSigner.from_settings(settings(keys_dir)) is None


# --- start-up errors name the variable ----------------------------------------------------------

@pytest.mark.parametrize(("env", "starts"), [
    ({"DKIM_SELECTOR": "bad_selector"}, "DKIM_SELECTOR: 'bad_selector' is not a DKIM selector"),
    ({"DKIM_ED25519_SELECTOR": "-x"}, "DKIM_ED25519_SELECTOR: '-x' is not a DKIM selector"),
    ({"DKIM_RSA_SELECTOR": "mail-ed25519"}, "DKIM_ED25519_SELECTOR: must differ"),
    ({"DKIM_DOMAINS": "not a domain"}, "DKIM_DOMAINS:"),
])
def test_invalid_settings_stop_the_process_naming_the_variable(
        env: dict[str, str], starts: str) -> None:
    with pytest.raises(ConfigError) as caught:
        make_settings(DKIM_DOMAINS=env.pop("DKIM_DOMAINS", "example.com"), **env)
    assert str(caught.value).startswith(starts), caught.value


def test_unusable_keys_stop_the_process_naming_the_variable(
        keys_dir: Path, tmp_path: Path) -> None:
    def error(**env: str) -> str:
        with pytest.raises(ConfigError) as caught:
            load_keys(settings(keys_dir, **env))
        return str(caught.value)

    assert error(DKIM_DOMAINS="example.com", DKIM_PRIVATE_KEY_FILE=str(tmp_path / "none.pem")
                 ).startswith("DKIM_PRIVATE_KEY_FILE: cannot read")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
    assert error(DKIM_DOMAINS="example.com", DKIM_ED25519_KEY_FILE=str(garbage)).startswith(
        "DKIM_ED25519_KEY_FILE: ") and "not an unencrypted PEM private key" in error(
        DKIM_DOMAINS="example.com", DKIM_ED25519_KEY_FILE=str(garbage))
    small = write_rsa_key(tmp_path / "small.pem", bits=1024)
    assert error(DKIM_DOMAINS="x.example", DKIM_PRIVATE_KEY_FILE=str(small)) == (
        f"DKIM_PRIVATE_KEY_FILE: {str(small)!r} is a 1024-bit RSA key; DKIM keys need at "
        "least 2048 bits")
    swapped = write_ed25519_key(tmp_path / "dir" / "x.example" / "mail.pem")
    assert "holds a ed25519-sha256 key where the selector 'mail' names rsa-sha256" in error(
        DKIM_DOMAINS="x.example", DKIM_KEYS_DIR=str(swapped.parent.parent))
    assert error(DKIM_DOMAINS="example.com,nokey.example").startswith(
        f"DKIM_DOMAINS: no key for nokey.example: put one at {keys_dir}/nokey.example/mail.pem")


def test_the_worker_command_refuses_a_bad_key_in_one_line(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    from harness.env import service_env

    env = service_env("redis://127.0.0.1:1/0", 1, "secret", DKIM_DOMAINS="example.com",
                      DKIM_KEYS_DIR=str(tmp_path / "missing"),
                      DKIM_PRIVATE_KEY_FILE=str(tmp_path / "absent.pem"))
    result = subprocess.run([sys.executable, "-m", "email_service", "worker"], env=env,
                            capture_output=True, text=True, timeout=60, check=False,
                            cwd=os.getcwd())
    assert result.returncode == 2, result
    assert result.stderr.strip().splitlines() == [
        f"email-service: configuration error: DKIM_PRIVATE_KEY_FILE: cannot read "
        f"{str(tmp_path / 'absent.pem')!r} (No such file or directory)"]


def test_the_readme_openssl_recipe_makes_keys_and_records_that_verify(tmp_path: Path) -> None:
    import shutil
    import subprocess

    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")

    def sh(command: str) -> str:
        return subprocess.run(["bash", "-ec", command], cwd=tmp_path, capture_output=True,
                              text=True, check=True, timeout=60).stdout.strip()

    sh("mkdir -p dkim/example.com\n"
       "openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "
       "dkim/example.com/mail.pem\n"
       "openssl genpkey -algorithm ed25519 -out dkim/example.com/mail-ed25519.pem")
    published = {
        "mail._domainkey.example.com": sh(
            'echo "v=DKIM1; k=rsa; p=$(openssl pkey -in dkim/example.com/mail.pem -pubout '
            '-outform DER | base64 -w0)"'),
        "mail-ed25519._domainkey.example.com": sh(
            'echo "v=DKIM1; k=ed25519; p=$(openssl pkey -in dkim/example.com/mail-ed25519.pem '
            '-pubout -outform DER | tail -c 32 | base64 -w0)"'),
    }
    signer = DkimSigner.from_settings(settings(tmp_path / "dkim", DKIM_DOMAINS="example.com"))
    assert signer is not None
    assert verify_all(signer.sign(message(), "example.com"), published) == [True, True]
