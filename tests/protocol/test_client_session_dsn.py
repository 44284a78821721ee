"""The sans-I/O client passes DSN parameters (RFC 3461 §5.2) on only to a server that
offers DSN: RET/ENVID on MAIL, NOTIFY/ORCPT on RCPT, pipelined or one at a time."""

from __future__ import annotations

from mta.protocol.client_events import Transaction
from tests.protocol.test_client_session import (
    EHLO_PIPELINING,
    EHLO_PLAIN,
    MESSAGE,
    OK,
    SIZE,
    WIRE,
    check,
    done,
    handshake,
    mail,
)

EHLO_DSN_PIPELINING = EHLO_PIPELINING.replace(b"250 8BITMIME", b"250-8BITMIME\r\n250 DSN")
EHLO_DSN_PLAIN = EHLO_PLAIN.replace(b"250 SIZE 1000", b"250-SIZE 1000\r\n250 DSN")
RCPT_DSN = {
    "c@d.test": " NOTIFY=SUCCESS ORCPT=rfc822;c@d.test",
    "e@d.test": " NOTIFY=NEVER ORCPT=rfc822;o+2Be@d.test",
}


def dsn_tx() -> Transaction:
    return Transaction(
        "a@b.test",
        ["c@d.test", "e@d.test"],
        MESSAGE,
        mail_dsn=" RET=HDRS ENVID=id+2B1",
        rcpt_dsn=RCPT_DSN,
    )


def test_dsn_parameters_pipelined_to_a_dsn_server() -> None:
    transcript = [
        *handshake(EHLO_DSN_PIPELINING),
        (
            mail(b"SIZE=%d" % SIZE, b"RET=HDRS", b"ENVID=id+2B1")
            + b"RCPT TO:<c@d.test> NOTIFY=SUCCESS ORCPT=rfc822;c@d.test\r\n"
            + b"RCPT TO:<e@d.test> NOTIFY=NEVER ORCPT=rfc822;o+2Be@d.test\r\n"
            + b"DATA\r\n",
            b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.1.5 Ok\r\n354 go on\r\n",
        ),
        (WIRE, OK),
    ]
    _, events = check(transcript, (dsn_tx(),))
    assert events[1:] == [done(("c@d.test", OK), ("e@d.test", OK))]


def test_dsn_parameters_one_at_a_time_to_a_dsn_server() -> None:
    transcript = [
        *handshake(EHLO_DSN_PLAIN),
        (mail(b"SIZE=%d" % SIZE, b"RET=HDRS", b"ENVID=id+2B1"), b"250 2.1.0 Ok\r\n"),
        (b"RCPT TO:<c@d.test> NOTIFY=SUCCESS ORCPT=rfc822;c@d.test\r\n", b"250 2.1.5 Ok\r\n"),
        (b"RCPT TO:<e@d.test> NOTIFY=NEVER ORCPT=rfc822;o+2Be@d.test\r\n", b"250 2.1.5 Ok\r\n"),
        (b"DATA\r\n", b"354 go on\r\n"),
        (WIRE, OK),
    ]
    check(transcript, (dsn_tx(),))


def test_no_dsn_parameters_to_a_server_without_dsn() -> None:
    transcript = [
        *handshake(),
        (
            mail(b"SIZE=%d" % SIZE) + b"RCPT TO:<c@d.test>\r\nRCPT TO:<e@d.test>\r\nDATA\r\n",
            b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.1.5 Ok\r\n354 go on\r\n",
        ),
        (WIRE, OK),
    ]
    check(transcript, (dsn_tx(),))
