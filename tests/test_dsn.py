"""Reading delivery reports: genuine Postfix DSNs (captured from Debian's Postfix 3.7 set to
bounce), a Gmail-style multi-recipient DSN, the RFC 5965 feedback report example, and three
non-standard formats read by flufl.bounce (sendmail's transcript, from flufl.bounce's own test
data; qmail's and Exim's standard texts); then hostile input of every shape."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailcore.dsn import (
    COMPLAINT,
    DSN,
    FEEDBACK,
    HARD,
    HEURISTIC,
    MAX_DIAGNOSTIC,
    NOT_A_REPORT,
    SOFT,
    parse_report,
)

REPORTS = Path(__file__).parent / "data" / "reports"


def sample(name: str) -> bytes:
    return (REPORTS / name).read_bytes()


@pytest.mark.parametrize(("name", "kind", "expected"), [
    ("postfix-local-5.1.1.eml", DSN, [("no-such-user@relay.example.net", HARD, "5.1.1")]),
    ("postfix-deferred-4.4.1.eml", DSN, [("someone@soft.example.net", SOFT, "4.4.1")]),
    # Upper-case domain lower-cased; "delayed" is soft; "delivered" is left out.
    ("gmail-two-recipients.eml", DSN, [("Ada.Lovelace@example.org", HARD, "5.1.1"),
                                       ("charles@example.org", SOFT, "4.2.2")]),
    ("arf-rfc5965.eml", FEEDBACK, [("user@example.com", COMPLAINT, None)]),
    ("sendmail-transcript.eml", HEURISTIC, [("foo@rbd.spb.ru", HARD, None)]),
    ("qmail.eml", HEURISTIC, [("mireille@example.org", HARD, None)]),
    ("exim.eml", HEURISTIC, [("grace@example.org", HARD, None)]),
])
def test_real_world_reports(name: str, kind: str, expected: list[tuple[str, str, str | None]]
                            ) -> None:
    report = parse_report(sample(name))
    assert report.kind == kind
    assert [(r.address, r.kind, r.status) for r in report.recipients] == expected


def test_postfix_fields() -> None:
    [entry] = parse_report(sample("postfix-local-5.1.1.eml")).recipients
    assert entry.original == "no-such-user@relay.example.net"
    assert entry.diagnostic == 'X-Postfix; unknown user: "no-such-user"'


def test_lf_and_crlf_line_ends_read_alike() -> None:
    # The sample is as it arrived over SMTP (CRLF); a file or LMTP hand-over may have LF.
    raw = sample("postfix-local-5.1.1.eml").replace(b"\r\n", b"\n")
    assert parse_report(raw).recipients == parse_report(sample("postfix-local-5.1.1.eml")
                                                         ).recipients


def dsn(*blocks: str, ctype: str = "message/delivery-status", charset: str = "") -> bytes:
    body = "\n\n".join(["Reporting-MTA: dns; mx.example.net", *blocks])
    return (f"From: MAILER-DAEMON@mx.example.net\nMIME-Version: 1.0\n"
            f"Content-Type: multipart/report; report-type=delivery-status; boundary=B\n\n"
            f"--B\nContent-Type: text/plain{charset}\n\nfailed\n\n"
            f"--B\nContent-Type: {ctype}\n\n{body}\n\n--B--\n").encode("utf-8", "surrogateescape")


def block(address: str, action: str = "failed", status: str = "5.1.1") -> str:
    return (f"Final-Recipient: rfc822; {address}\nAction: {action}\nStatus: {status}\n"
            f"Diagnostic-Code: smtp; 550 {status} nope")


def test_recipients_are_bounded() -> None:
    report = parse_report(dsn(*[block(f"user{i}@example.org") for i in range(5000)]), limit=50)
    assert report.kind == DSN and len(report.recipients) == 50


def test_failed_without_status_is_hard_and_garbage_status_too() -> None:
    report = parse_report(dsn("Final-Recipient: rfc822; a@example.org\nAction: failed",
                              block("b@example.org", status="x.y.z"),
                              block("c@example.org", status="4.7.1")))
    assert [(r.address, r.kind, r.status) for r in report.recipients] == [
        ("a@example.org", HARD, None), ("b@example.org", HARD, None),
        ("c@example.org", SOFT, "4.7.1")]


@pytest.mark.parametrize("address", [
    "", "not an address", "a@", "@b", "a@b@c", "<>", "x" * 300 + "@example.org",
    "ünï@example.org", "a@exa mple.org", "a\x00@example.org", "a b@example.org",
])
def test_addresses_that_are_not_plain_are_skipped(address: str) -> None:
    report = parse_report(dsn(block(address), block("ok@example.org")))
    assert [r.address for r in report.recipients] == ["ok@example.org"]


def test_long_diagnostics_are_shortened() -> None:
    report = parse_report(dsn(block("a@example.org") + " " + "y" * 100_000))
    assert len(report.recipients[0].diagnostic or "") == MAX_DIAGNOSTIC


@pytest.mark.parametrize("raw", [
    b"", b"\x00" * 1000, b"\xff\xfe" * 5000, b"hello", b"From: a@b\n\nplain mail, no report",
    b"Content-Type: multipart/report; boundary=\n\n--\n--",
    b"Content-Type: message/delivery-status\n\n\n\n",
    "Subject: =?utf-8?b?w6k=?=\nContent-Type: text/plain; charset=klingon\n\n\xe9t\xe9".encode(
        "latin-1"),
    b"Content-Type: multipart/mixed; boundary=a\n\n" + b"--a\nContent-Type: multipart/mixed; "
                                                       b"boundary=a\n\n" * 20_000,
    b"Content-Type: multipart/mixed; boundary=a\n\n" + b"--a\n\n" * 100_000,
    b"Content-Type: message/rfc822\n\n" * 10_000,
    b"X: " + b"y" * 1_000_000,
])
def test_hostile_input_never_raises(raw: bytes) -> None:
    report = parse_report(raw)
    assert report.kind in {NOT_A_REPORT, "malformed", HEURISTIC, DSN}
    assert len(report.recipients) <= 50


def test_nested_report_within_the_depth_limit_is_found() -> None:
    inner = dsn(block("deep@example.org")).decode()
    wrapped = ("MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=W\n\n--W\n"
               + inner + "\n--W--\n")
    report = parse_report(wrapped.encode())
    assert [r.address for r in report.recipients] == ["deep@example.org"]


def test_report_deeper_than_the_limit_is_not_read() -> None:
    raw = dsn(block("deep@example.org")).decode()
    for depth in range(12):
        raw = (f"MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=W{depth}\n\n"
               f"--W{depth}\n{raw}\n--W{depth}--\n")
    assert parse_report(raw.encode()).kind in {NOT_A_REPORT, HEURISTIC}


def test_wrong_charsets_and_8bit_fields() -> None:
    raw = dsn(block("a@example.org") + "\nX-Note: \udce9t\udce9", charset="; charset=bogus")
    assert [r.address for r in parse_report(raw).recipients] == ["a@example.org"]


def test_delivery_status_as_an_unsplit_part_is_still_read() -> None:
    # base64-encoded delivery-status: Python does not split it into blocks.
    import base64

    fields = ("Reporting-MTA: dns; mx\n\n" + block("b64@example.org")).encode()
    raw = (b"MIME-Version: 1.0\nContent-Type: multipart/report; boundary=B\n\n--B\n"
           b"Content-Type: message/delivery-status\nContent-Transfer-Encoding: base64\n\n"
           + base64.encodebytes(fields) + b"\n--B--\n")
    report = parse_report(raw)
    assert report.kind == DSN
