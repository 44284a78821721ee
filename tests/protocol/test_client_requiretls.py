"""REQUIRETLS in the client session (RFC 8689 §4.2.1): the MAIL parameter goes only to a
server that offers REQUIRETLS over TLS; otherwise nothing is sent and the transaction is
refused before it starts.  Played every way the client session's transcripts are."""

from __future__ import annotations

from mta.protocol.client_events import Transaction, TransactionNotSent
from tests.protocol.test_client_session import (
    MESSAGE,
    OK,
    SIZE,
    WIRE,
    check,
    done,
    handshake,
    mail,
    rcpt,
)

EHLO_REQUIRETLS = b"250-sink.test\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250 REQUIRETLS\r\n"
REQUIRED = Transaction("a@b.test", ["c@d.test"], MESSAGE, require_tls=True)


def test_requiretls_over_tls_to_a_server_that_offers_it_is_asked_for() -> None:
    transcript = [
        *handshake(EHLO_REQUIRETLS),
        (
            mail(b"SIZE=" + str(SIZE).encode(), b"REQUIRETLS") + rcpt("c@d.test") + b"DATA\r\n",
            b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 go on\r\n",
        ),
        (WIRE, OK),
    ]
    _, events = check(transcript, (REQUIRED,), tls=True)
    assert events[1:] == [done(("c@d.test", OK))]


def test_requiretls_without_tls_or_without_the_extension_is_not_sent() -> None:
    _, events = check(handshake(EHLO_REQUIRETLS), (REQUIRED,))  # offered, but no TLS
    assert events[1:] == [TransactionNotSent("requiretls", SIZE, 1000)]
    session, events = check(handshake(), (REQUIRED,), tls=True)  # TLS, not offered
    assert events[1:] == [TransactionNotSent("requiretls", SIZE, 1000)]
    assert session.reusable and session.data_to_send() == b""
