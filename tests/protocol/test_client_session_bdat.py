"""The client session's BDAT (RFC 3030 CHUNKING) data phase, with no sockets.

Transcripts played every way the server's bytes can arrive (one reply at a time, byte by
byte, all at once, with trailing bytes: ``check`` of test_client_session.py): a server
that offers CHUNKING gets ``BDAT <octets> LAST`` and the message as it is (no dot-stuffing,
no end line), pipelined with MAIL and RCPT when it offers PIPELINING; a refused chunk ends
the transaction with RSET; LMTP gets one reply per accepted recipient after the last chunk;
``chunking=False`` sends DATA as before.  A stored message goes as one BDAT counting all
its octets, streamed in chunks.
"""

from __future__ import annotations

import pytest

from mta.protocol.client_events import SendMessage, Transaction, TransactionDone
from mta.protocol.client_session import ClientSession, State
from tests.protocol.test_client_session import (
    GREETING,
    MESSAGE,
    OK,
    SIZE,
    WIRE,
    check,
    done,
    mail,
    per_reply,
    play,
    rcpt,
    tx,
)
from tests.protocol.test_dot_stuff_stream import BIG, Stored, stream

EHLO_CHUNKING = b"250-sink.test\r\n250-PIPELINING\r\n250-SIZE 1000000\r\n250 CHUNKING\r\n"
EHLO_CHUNKING_ONLY = b"250-sink.test\r\n250-SIZE 1000000\r\n250 CHUNKING\r\n"
BDAT = b"BDAT %d LAST\r\n" % SIZE
MAIL_OK = b"250 2.1.0 Ok\r\n"
RCPT_OK = b"250 2.1.5 Ok\r\n"


def handshake(ehlo: bytes = EHLO_CHUNKING, verb: bytes = b"EHLO") -> list[tuple[bytes, bytes]]:
    return [(b"", GREETING), (verb + b" mx.test\r\n", ehlo)]


def test_pipelined_mail_rcpt_and_bdat_last_go_out_in_one_write_undotted() -> None:
    transcript = [
        *handshake(),
        (mail(b"SIZE=%d" % SIZE) + rcpt("c@d.test") + BDAT + MESSAGE, MAIL_OK + RCPT_OK),
        (b"", b"250 2.0.0 Ok: %d octets, queued as X1\r\n" % SIZE),
    ]
    session, events = check(transcript, (tx(),))
    assert events[1:] == [done(("c@d.test", b"250 2.0.0 Ok: %d octets, queued as X1\r\n" % SIZE))]
    assert session.reusable
    assert b".dot" in MESSAGE and b"..dot" not in transcript[2][0]  # not stuffed


def test_without_pipelining_bdat_follows_the_rcpt_replies() -> None:
    transcript = [
        *handshake(EHLO_CHUNKING_ONLY),
        (mail(b"SIZE=%d" % SIZE), MAIL_OK),
        (rcpt("c@d.test"), b"550 5.1.1 no such user\r\n"),
        (rcpt("e@d.test"), RCPT_OK),
        (BDAT + MESSAGE, OK),
    ]
    _, events = check(transcript, (tx("c@d.test", "e@d.test"),))
    assert events[1:] == [done(("c@d.test", b"550 5.1.1 no such user\r\n"), ("e@d.test", OK))]


def test_binary_octets_are_counted_exactly() -> None:
    message = b"Subject: bin\r\n\r\n\x00\xff\r\n.\r\nbare\nlf\r\n"
    transcript = [
        *handshake(),
        (
            mail(b"SIZE=%d" % len(message))
            + rcpt("c@d.test")
            + b"BDAT %d LAST\r\n" % len(message)
            + message,
            MAIL_OK + RCPT_OK,
        ),
        (b"", OK),
    ]
    _, events = check(transcript, (tx(message=message),))
    assert events[1:] == [done(("c@d.test", OK))]


def test_empty_message_is_bdat_0_last() -> None:
    transcript = [
        *handshake(),
        (mail(b"SIZE=0") + rcpt("c@d.test") + b"BDAT 0 LAST\r\n", MAIL_OK + RCPT_OK),
        (b"", OK),
    ]
    _, events = check(transcript, (tx(message=b""),))
    assert events[1:] == [done(("c@d.test", OK))]


@pytest.mark.parametrize("ehlo", [EHLO_CHUNKING, EHLO_CHUNKING_ONLY])
def test_a_refused_chunk_ends_the_transaction_with_rset(ehlo: bytes) -> None:
    full = b"452 4.3.1 insufficient storage\r\n"
    pipelined = b"PIPELINING" in ehlo
    commands = [(mail(b"SIZE=%d" % SIZE), MAIL_OK), (rcpt("a@d.test"), RCPT_OK)]
    if pipelined:
        commands = [(commands[0][0] + commands[1][0] + BDAT + MESSAGE, MAIL_OK + RCPT_OK)]
        commands.append((b"", full))
    else:
        commands.append((BDAT + MESSAGE, full))
    transcript = [*handshake(ehlo), *commands, (b"RSET\r\n", OK)]
    session, events = check(transcript, (tx("a@d.test"),))
    assert events[1:] == [done(("a@d.test", full))]
    assert session.reusable


def test_refused_sender_the_pipelined_chunk_decides_nothing_then_rset() -> None:
    refused = b"553 5.7.1 sender rejected\r\n"
    transcript = [
        *handshake(),
        (
            mail(b"SIZE=%d" % SIZE) + rcpt("c@d.test") + BDAT + MESSAGE,
            refused + b"503 5.5.1 need RCPT\r\n503 5.5.1 need MAIL\r\n",
        ),
        (b"RSET\r\n", OK),
    ]
    session, events = check(transcript, (tx(),))
    assert events[1:] == [done(("c@d.test", refused))]
    assert session.reusable


def test_every_recipient_refused_the_pipelined_chunk_decides_nothing_then_rset() -> None:
    no_user = b"550 5.1.1 no such user\r\n"
    transcript = [
        *handshake(),
        (
            mail(b"SIZE=%d" % SIZE) + rcpt("c@d.test") + BDAT + MESSAGE,
            MAIL_OK + no_user + b"554 5.5.1 no valid recipients\r\n",
        ),
        (b"RSET\r\n", OK),
    ]
    _, events = check(transcript, (tx(),))
    assert events[1:] == [done(("c@d.test", no_user))]


def test_every_recipient_refused_one_at_a_time_sends_no_chunk() -> None:
    no_user = b"550 5.1.1 no such user\r\n"
    transcript = [
        *handshake(EHLO_CHUNKING_ONLY),
        (mail(b"SIZE=%d" % SIZE), MAIL_OK),
        (rcpt("c@d.test"), no_user),
        (b"RSET\r\n", OK),
    ]
    _, events = check(transcript, (tx(),))
    assert events[1:] == [done(("c@d.test", no_user))]


def test_lmtp_one_reply_per_accepted_recipient_after_the_last_chunk() -> None:
    """RFC 2033 §4.2 with RFC 3030: the replies after BDAT LAST are per recipient."""
    full = b"452 4.2.2 mailbox full\r\n"
    no_user = b"550 5.1.1 no such user\r\n"
    recipients = ("alice@d.test", "bob@d.test", "carol@d.test")
    transcript = [
        *handshake(verb=b"LHLO"),
        (
            mail(b"SIZE=%d" % SIZE) + b"".join(rcpt(r) for r in recipients) + BDAT + MESSAGE,
            MAIL_OK + RCPT_OK + no_user + RCPT_OK,
        ),
        (b"", b"250 2.0.0 alice\r\n" + full),
    ]
    session, events = check(transcript, (tx(*recipients),), lmtp=True)
    assert events[1:] == [
        done(
            ("alice@d.test", b"250 2.0.0 alice\r\n"),
            ("bob@d.test", no_user),
            ("carol@d.test", full),
        )
    ]
    assert session.reusable  # per-recipient replies end the transaction: no RSET


def test_chunking_off_sends_data() -> None:
    transcript = [
        *handshake(),
        (
            mail(b"SIZE=%d" % SIZE) + rcpt("c@d.test") + b"DATA\r\n",
            MAIL_OK + RCPT_OK + b"354 go on\r\n",
        ),
        (WIRE, OK),
    ]
    _, events = check(transcript, (tx(),), chunking=False)
    assert events[1:] == [done(("c@d.test", OK))]


def test_two_transactions_over_one_connection() -> None:
    batch = mail(b"SIZE=%d" % SIZE) + rcpt("c@d.test") + BDAT + MESSAGE
    transcript = [*handshake(), (batch, MAIL_OK + RCPT_OK), (b"", OK)] * 1
    transcript += [(batch, MAIL_OK + RCPT_OK), (b"", OK)]
    _, events = check(transcript, (tx(), tx()))
    assert events[1:] == [done(("c@d.test", OK)), done(("c@d.test", OK))]


# -- a stored message: one BDAT counting every octet, streamed in chunks -----------------------


def ready(ehlo: bytes = EHLO_CHUNKING, *, lmtp: bool = False) -> ClientSession:
    session, _ = play(handshake(ehlo, b"LHLO" if lmtp else b"EHLO"), per_reply, lmtp=lmtp)
    assert session.state is State.READY
    return session


@pytest.mark.parametrize("ehlo", [EHLO_CHUNKING, EHLO_CHUNKING_ONLY])
@pytest.mark.parametrize("chunk_size", [1, 4096, len(BIG)])
def test_a_stored_message_goes_as_one_counted_chunk_streamed_byte_exact(
    ehlo: bytes, chunk_size: int
) -> None:
    session = ready(ehlo)
    message = Stored(BIG)
    assert session.start_transaction(Transaction("a@b.test", ["c@d.test"], message)) is None
    head = f"MAIL FROM:<a@b.test> SIZE={len(BIG)}\r\n".encode()
    if b"PIPELINING" in ehlo:
        assert session.data_to_send() == head + rcpt("c@d.test")
        session.receive_data(MAIL_OK + RCPT_OK)
    else:
        assert session.data_to_send() == head
        session.receive_data(MAIL_OK)
        assert session.next_event() is None and session.data_to_send() == rcpt("c@d.test")
        session.receive_data(RCPT_OK)
    assert session.next_event() == SendMessage()
    assert stream(session, message, chunk_size) == b"BDAT %d LAST\r\n" % len(BIG) + BIG
    assert session.state is State.MESSAGE and session.next_event() is None
    session.receive_data(OK)
    assert session.next_event() == done(("c@d.test", OK))
    assert session.reusable


def test_a_stored_message_is_not_sent_when_every_recipient_is_refused() -> None:
    session = ready()
    message = Stored(BIG)
    session.start_transaction(Transaction("a@b.test", ["c@d.test"], message))
    session.data_to_send()
    session.receive_data(MAIL_OK + b"550 5.1.1 no such user\r\n")
    assert session.next_event() is None and session.data_to_send() == b"RSET\r\n"
    session.receive_data(OK)
    event = session.next_event()
    assert isinstance(event, TransactionDone) and event.outcomes[0].reply.code == 550


def test_a_stored_message_to_lmtp_waits_for_a_reply_per_recipient() -> None:
    session = ready(lmtp=True)
    message = Stored(BIG)
    session.start_transaction(Transaction("a@b.test", ["c@d.test", "e@d.test"], message))
    session.data_to_send()
    session.receive_data(MAIL_OK + RCPT_OK + RCPT_OK)
    assert session.next_event() == SendMessage()
    stream(session, message, 4096)
    session.receive_data(OK)
    assert session.next_event() is None  # e@d.test's reply is still due
    session.receive_data(b"452 4.2.2 mailbox full\r\n")
    assert session.next_event() == done(
        ("c@d.test", OK), ("e@d.test", b"452 4.2.2 mailbox full\r\n")
    )
