"""Bounces (mta/qmgr/dsn.py): RFC 3464 ``multipart/report`` that mail readers can parse.

Every bounce is read back with Python's ``email`` package, as a recipient's software would.
"""

from __future__ import annotations

import email
import email.policy
import email.utils
from email.message import EmailMessage

import pytest

from mta.qmgr.dsn import build_bounce
from mta.queue.results import RecipientResult
from tests.qmgr.mime import decoded, subparts

ORIGINAL_HEADERS = (
    b"Received: from client.test ([127.0.0.1])\r\n\tby mx.test (mta) with ESMTP id X\r\n"
    b"From: Alice <alice@sender.test>\r\n"
    b"To: bob@dest.test, carol@dest.test\r\n"
    b"Subject: quarterly report\r\n"
    b"Message-ID: <original-1@sender.test>\r\n"
    b"\r\n"
)
NOW = 1_790_000_000.0


def failed(address: str, reply: str, dsn: str, remote_mta: str = "") -> RecipientResult:
    return RecipientResult(
        address=address,
        status="failed",
        dsn=dsn,
        reply=reply,
        relay="mx1.dest.test[192.0.2.1]:25",
        remote_mta=remote_mta,
    )


def bounce(results: list[RecipientResult], headers: bytes = ORIGINAL_HEADERS) -> EmailMessage:
    data = build_bounce(
        hostname="mx.test",
        queue_id="0195F3A2B7C4100A3F1",
        sender="alice@sender.test",
        arrival=NOW - 60,
        failed=results,
        original_headers=headers,
        now=NOW,
    )
    assert b"\n" not in data.replace(b"\r\n", b"")  # CRLF line ends only
    message = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    assert not message.defects
    return message


def parts(message: EmailMessage) -> tuple[EmailMessage, EmailMessage, EmailMessage]:
    assert message.get_content_type() == "multipart/report"
    assert message.get_param("report-type") == "delivery-status"
    human, status, original = subparts(message)
    return human, status, original


def status_blocks(status: EmailMessage) -> list[EmailMessage]:
    assert status.get_content_type() == "message/delivery-status"
    return subparts(status)


def test_bounce_headers() -> None:
    message = bounce([failed("bob@dest.test", "550 5.1.1 No such user", "5.1.1", "mx1.dest.test")])
    assert message["To"].addresses[0].addr_spec == "alice@sender.test"
    assert message["From"].addresses[0].addr_spec == "MAILER-DAEMON@mx.test"
    assert message["Subject"] == "Undelivered Mail Returned to Sender"
    assert message["Auto-Submitted"] == "auto-replied"  # RFC 3834: no auto-reply loops
    assert message["MIME-Version"] == "1.0"
    assert message["Message-ID"].endswith("@mx.test>")
    assert email.utils.parsedate_to_datetime(message["Date"]).timestamp() == int(NOW)


def test_three_parts_with_report_per_recipient() -> None:
    message = bounce(
        [
            failed("bob@dest.test", "550 5.1.1 No such user", "5.1.1", "mx1.dest.test"),
            failed("carol@dest.test", "554 5.7.1 Rejected for policy reasons", "5.7.1"),
        ]
    )
    human, status, original = parts(message)
    assert human.get_content_type() == "text/plain"
    text = human.get_content()
    assert "<bob@dest.test>: 550 5.1.1 No such user" in text
    assert "<carol@dest.test>: 554 5.7.1 Rejected for policy reasons" in text
    per_message, bob, carol = status_blocks(status)
    assert per_message["Reporting-MTA"] == "dns; mx.test"
    assert email.utils.parsedate_to_datetime(per_message["Arrival-Date"]).timestamp() == NOW - 60
    assert bob["Final-Recipient"] == "rfc822; bob@dest.test"
    assert bob["Action"] == "failed"
    assert bob["Status"] == "5.1.1"
    assert bob["Remote-MTA"] == "dns; mx1.dest.test"
    assert bob["Diagnostic-Code"] == "smtp; 550 5.1.1 No such user"
    assert carol["Final-Recipient"] == "rfc822; carol@dest.test"
    assert carol["Status"] == "5.7.1"
    assert carol["Remote-MTA"] is None  # not known: not invented
    assert original.get_content_type() == "text/rfc822-headers"


def test_original_headers_are_returned_without_the_body() -> None:
    message = bounce([failed("bob@dest.test", "550 5.1.1 No such user", "5.1.1")])
    _, _, original = parts(message)
    returned = decoded(original)
    assert (
        returned.replace(b"\r\n", b"\n")
        == ORIGINAL_HEADERS.rstrip(b"\r\n").replace(b"\r\n", b"\n") + b"\n"
    )
    headers = email.message_from_bytes(returned, policy=email.policy.default)
    assert headers["Subject"] == "quarterly report"
    assert headers["Message-ID"] == "<original-1@sender.test>"


def test_local_diagnostic_is_not_called_smtp() -> None:
    """Expiry and DNS failures have no SMTP reply to quote (RFC 3464 §2.3.6 diagnostic type)."""
    message = bounce(
        [failed("bob@dest.test", "message expired in the queue; last error: timeout", "4.4.7")]
    )
    _, status, _ = parts(message)
    [_, bob] = status_blocks(status)
    assert bob["Status"] == "4.4.7"
    assert bob["Action"] == "failed"
    assert bob["Diagnostic-Code"].startswith("x-mta; message expired in the queue")


@pytest.mark.parametrize("dsn", ["2.0.0", "", "garbage", "4garbage", "5.1"])
def test_status_is_always_a_failure_code(dsn: str) -> None:
    message = bounce([failed("bob@dest.test", "550 refused", dsn)])
    _, status, _ = parts(message)
    [_, bob] = status_blocks(status)
    assert bob["Status"] == "5.0.0"


def test_reply_with_line_breaks_cannot_inject_fields() -> None:
    message = bounce([failed("bob@dest.test", "550 5.1.1 bad\r\nAction: delivered", "5.1.1")])
    _, status, _ = parts(message)
    [_, bob] = status_blocks(status)
    assert bob.get_all("Action") == ["failed"]
    assert "\n" not in bob["Diagnostic-Code"]


def test_utf8_and_header_only_originals() -> None:
    headers = "Subject: Grüße\r\nFrom: <jürgen@sender.test>\r\n".encode()  # no empty line
    message = bounce([failed("jürgen@dest.test", "550 5.1.1 unbekannt", "5.1.1")], headers)
    human, status, original = parts(message)
    assert "jürgen@dest.test" in human.get_content()
    [_, rcpt] = status_blocks(status)
    assert rcpt["Final-Recipient"] == "rfc822; jürgen@dest.test"
    assert "Grüße".encode() in decoded(original)
