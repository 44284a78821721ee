"""Relaying through a smarthost (``delivery.relayhost``), end to end.

A client (smtplib) hands a message to ``mta serve``; its delivery agents pass it to a
CaptureSink.  What arrives must be what was sent, octet for octet, plus our one trace
header; the envelope must survive unchanged; and every attempt is logged per recipient.
"""

from __future__ import annotations

import re
import smtplib
from collections.abc import Callable

import pytest

from tests.delivery.sink import Captured, CaptureSink
from tests.helpers import QUEUE_STATES, MtaProcess, wait_until

pytestmark = pytest.mark.timeout(120)

Factory = Callable[..., MtaProcess]

RECEIVED = re.compile(
    rb"\AReceived: from client\.test \(\[127\.0\.0\.1\]\)\r\n"
    rb"\tby mx\.test \(mta\) with ESMTP id (?P<id>[0-9A-F]{19})"
    rb"(?:\r\n\tfor <(?P<for>[^>]*)>)?"
    rb"; (?P<date>[A-Z][a-z]{2}, \d{1,2} [A-Z][a-z]{2} \d{4} \d\d:\d\d:\d\d [+-]\d{4})\r\n"
)
LOG_LINE = re.compile(
    r"(?P<id>[0-9A-F]{19}): to=<(?P<to>[^>]*)>, relay=(?P<relay>\S+), "
    r"delay=(?P<delay>\d+(?:\.\d+)?), delays=[\d./]+, dsn=(?P<dsn>[245]\.\d{1,3}\.\d{1,3}), "
    r"status=(?P<status>sent|deferred|bounced) \((?P<reply>.*)\), tls=(?P<tls>[^,]+)$",
    re.MULTILINE,
)
LONG_LINE = b"x" * 990 + b"\r\n"  # RFC 5321 §4.5.3.1.6 allows 998 octets plus CRLF
TRICKY = (
    b"From: Alice <alice@sender.test>\r\n"
    b"To: Bob <bob@dest.test>\r\n"
    b"Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\n"
    b"Message-ID: <tricky-1@sender.test>\r\n"
    b"X-Folded: first part\r\n\tsecond part   \r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: 8bit\r\n"
    b"\r\n"
    b".a line that starts with a dot\r\n"
    b".\r\n"
    b"..\r\n"
    b"\r\n"
    b"\r\n"
    b"Gr\xc3\xbc\xc3\x9fe, 8-bit text \xe2\x82\xac and trailing blanks \t \r\n"
    + LONG_LINE
    + b"From the start of a line (mbox would mangle this)\r\n"
    b"last line without anything special\r\n"
)


@pytest.fixture
def relay(mta_factory: Factory, sink: CaptureSink) -> MtaProcess:
    return mta_factory(
        {"delivery": {"relayhost": f"127.0.0.1:{sink.port}", "min_backoff": 1, "max_backoff": 2}}
    )


def send(
    server: MtaProcess,
    sender: str,
    recipients: list[str],
    data: bytes,
    options: tuple[str, ...] = (),
) -> None:
    with smtplib.SMTP("127.0.0.1", server.port, local_hostname="client.test", timeout=30) as c:
        refused = c.sendmail(sender, recipients, data, mail_options=list(options))
    assert refused == {}


def split_trace(captured: Captured) -> tuple[re.Match[bytes], bytes]:
    match = RECEIVED.match(captured.data)
    assert match, captured.data[:300]
    return match, captured.data[match.end() :]


def test_message_arrives_byte_identical_with_one_trace_header(
    relay: MtaProcess, sink: CaptureSink
) -> None:
    send(relay, "alice@sender.test", ["bob@dest.test"], TRICKY, ("BODY=8BITMIME",))
    [got] = sink.wait_for(1)
    match, rest = split_trace(got)
    assert rest == TRICKY
    assert match["for"] == b"bob@dest.test"
    assert got.data.count(b"\r\nReceived: ") == 0  # exactly one trace header
    assert (got.mail_from, got.rcpt_tos) == ("alice@sender.test", ["bob@dest.test"])
    assert got.helo == "mx.test"
    assert got.mail_params == {"SIZE": str(len(got.data)), "BODY": "8BITMIME"}
    queue_id = match["id"].decode()
    wait_until(lambda: f"{queue_id}: removed" in relay.log())
    assert relay.queue_empty(("tmp", *QUEUE_STATES))


def test_large_message_and_null_sender(relay: MtaProcess, sink: CaptureSink) -> None:
    line = b"0123456789" * 7 + b"\r\n"
    body = b"Subject: big\r\n\r\n" + line * 30_000  # about 2 MB, streamed both ways
    send(relay, "", ["bob@dest.test"], body)
    [got] = sink.wait_for(1, timeout=30)
    _, rest = split_trace(got)
    assert rest == body
    assert got.mail_from == ""
    assert "BODY" not in got.mail_params  # 7-bit in, 7-bit out


def test_recipients_of_one_message_share_one_transaction(
    relay: MtaProcess, sink: CaptureSink
) -> None:
    rcpts = ["bob@dest.test", "carol@other.test", "dave@dest.test"]
    send(relay, "alice@sender.test", rcpts, b"Subject: three\r\n\r\nhello\r\n")
    [got] = sink.wait_for(1)
    assert got.rcpt_tos == rcpts
    match, rest = split_trace(got)
    assert match["for"] is None  # no "for" with several recipients: Bcc stays private
    assert rest == b"Subject: three\r\n\r\nhello\r\n"


def test_connection_is_reused_for_the_next_messages(relay: MtaProcess, sink: CaptureSink) -> None:
    for n in range(6):
        send(relay, "alice@sender.test", ["bob@dest.test"], b"Subject: %d\r\n\r\nx\r\n" % n)
        sink.wait_for(n + 1)
    # two delivery agents, each with its own connection cache
    assert sink.connections <= 2
    assert sink.transactions == 6


def test_opportunistic_starttls(mta_factory: Factory) -> None:
    with CaptureSink(tls=True) as tls_sink:
        relay = mta_factory({"delivery": {"relayhost": f"127.0.0.1:{tls_sink.port}"}})
        send(relay, "alice@sender.test", ["bob@dest.test"], TRICKY)
        [got] = tls_sink.wait_for(1)
    assert got.tls
    assert got.helo == "mx.test"  # EHLO again after STARTTLS
    assert split_trace(got)[1] == TRICKY


def test_per_recipient_log_lines(relay: MtaProcess, sink: CaptureSink) -> None:
    sink.rcpt_replies = {
        "later@dest.test": (451, "4.2.0 Mailbox busy"),
        "nobody@dest.test": (550, "5.1.1 No such user"),
    }
    rcpts = ["bob@dest.test", "later@dest.test", "nobody@dest.test"]
    send(relay, "alice@sender.test", rcpts, b"Subject: log\r\n\r\nx\r\n")
    [got] = sink.wait_for(1)
    queue_id = split_trace(got)[0]["id"].decode()

    def first_attempt() -> list[re.Match[str]] | None:
        lines = [m for m in LOG_LINE.finditer(relay.log()) if m["id"] == queue_id]
        return lines[:3] if len(lines) >= 3 else None

    lines = wait_until(first_attempt)
    by_rcpt = {m["to"]: m for m in lines}
    assert set(by_rcpt) == set(rcpts)
    relay_name = f"127.0.0.1[127.0.0.1]:{sink.port}"
    for m in lines:
        assert m["relay"] == relay_name
        assert 0 <= float(m["delay"]) < 60
    sent, later, nobody = (by_rcpt[r] for r in rcpts)
    assert (sent["status"], sent["dsn"], sent["reply"]) == ("sent", "2.0.0", "250 2.0.0 OK queued")
    assert (later["status"], later["dsn"]) == ("deferred", "4.2.0")
    assert later["reply"] == "451 4.2.0 Mailbox busy"
    assert (nobody["status"], nobody["dsn"]) == ("bounced", "5.1.1")
    assert nobody["reply"] == "550 5.1.1 No such user"
