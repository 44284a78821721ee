"""The client session (mta/protocol/client_session.py) with no sockets.

Each conversation is a transcript of what the client must send and what the server
answers.  It is played with the server's bytes fed one reply at a time (as the I/O layer
sees them), byte by byte, all in one chunk (a server that answers ahead), with each reply
followed by the start of the next (trailing data), and at random cuts: the commands sent
and the events out must be the same every time, as h11's tests require of its parser.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable, Iterator
from itertools import pairwise
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mta.protocol.client import ProtocolError, Reply
from mta.protocol.client_events import (
    ClientEvent,
    HandshakeRefused,
    Ready,
    RecipientReply,
    StartTlsNow,
    Transaction,
    TransactionDone,
    TransactionNotSent,
)
from mta.protocol.client_session import TRANSITIONS, ClientSession, ClientUsageError, State
from mta.protocol.errors import SessionUsageError

GREETING = b"220 sink.test ESMTP\r\n"
EHLO_PIPELINING = b"250-sink.test\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250 8BITMIME\r\n"
EHLO_PLAIN = b"250-sink.test\r\n250 SIZE 1000\r\n"
EHLO_STARTTLS = b"250-sink.test\r\n250-STARTTLS\r\n250 PIPELINING\r\n"
MESSAGE = b"Subject: x\r\n\r\n.dot\r\n"
WIRE = b"Subject: x\r\n\r\n..dot\r\n.\r\n"
SIZE = len(MESSAGE)
OK = b"250 2.0.0 Ok\r\n"

Transcript = list[tuple[bytes, bytes]]  # (what the client sends, what the server answers)
Output = tuple[bytes, list[object]]  # everything sent, every event


def reply(data: bytes) -> Reply:
    code, text = data.rstrip(b"\r\n").split(b" ", 1)
    return Reply(int(code), (text.decode(),))


def tx(*recipients: str, message: bytes = MESSAGE, smtputf8: bool = False) -> Transaction:
    return Transaction("a@b.test", list(recipients) or ["c@d.test"], message, smtputf8=smtputf8)


def handshake(ehlo: bytes = EHLO_PIPELINING) -> Transcript:
    return [(b"", GREETING), (b"EHLO mx.test\r\n", ehlo)]


def mail(*params: bytes) -> bytes:
    return b"MAIL FROM:<a@b.test>" + b"".join(b" " + p for p in params) + b"\r\n"


def rcpt(address: str) -> bytes:
    return f"RCPT TO:<{address}>\r\n".encode()


# -- feeding the server's bytes ------------------------------------------------------------

_REPLY = re.compile(rb"(?:\d{3}-[^\n]*\n)*\d{3}[^\n]*\n")


def per_reply(data: bytes) -> list[bytes]:
    return _REPLY.findall(data)


def bytewise(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


def at_once(data: bytes) -> list[bytes]:
    return [data]


def with_trailing(data: bytes) -> list[bytes]:
    """Each reply with the first bytes of the next one."""
    cuts = [0]
    for part in per_reply(data):
        cuts.append(cuts[-1] + len(part))
    cuts = [0, *(min(c + 2, len(data)) for c in cuts[1:-1]), len(data)]
    return [data[a:b] for a, b in pairwise(cuts)]


CHUNKINGS = [per_reply, bytewise, at_once, with_trailing]


def play(
    transcript: Transcript,
    chunks: Callable[[bytes], list[bytes]],
    txs: tuple[Transaction, ...] = (),
    **options: bool,
) -> tuple[ClientSession, Output]:
    """Run a session against the server's side of ``transcript``, fed in ``chunks``:
    the handshake to its end, then each transaction in turn."""
    session = ClientSession("mx.test", **options)
    feed = iter(chunks(b"".join(answer for _, answer in transcript)))
    sent = bytearray()
    events: list[object] = []

    def step() -> ClientEvent:
        while (event := session.next_event()) is None:
            sent.extend(session.data_to_send())
            chunk = next(feed, None)
            assert chunk is not None, f"waits for a reply the server never sent: {sent!r}"
            session.receive_data(chunk)
        sent.extend(session.data_to_send())
        events.append(event)
        return event

    while isinstance(event := step(), StartTlsNow):
        session.tls_started()
    for transaction in txs if isinstance(event, Ready) else ():
        not_sent = session.start_transaction(transaction)
        if not_sent is not None:
            events.append(not_sent)
            continue
        step()
        if not session.usable:
            break
    assert next(feed, None) is None, "the server said more than the client asked for"
    return session, (bytes(sent), events)


def check(
    transcript: Transcript, txs: tuple[Transaction, ...] = (), **options: bool
) -> tuple[ClientSession, list[object]]:
    """Play ``transcript`` every way; the client must send exactly its commands and give
    the same events every time.  Returns the session (fed one reply at a time) and events."""
    expected_sent = b"".join(command for command, _ in transcript)
    session, (sent, events) = play(transcript, per_reply, txs, **options)
    assert sent == expected_sent
    for chunks in CHUNKINGS[1:]:
        assert play(transcript, chunks, txs, **options)[1] == (sent, events), chunks.__name__
    return session, events


def done(*outcomes: tuple[str, bytes]) -> TransactionDone:
    return TransactionDone([RecipientReply(r, reply(data)) for r, data in outcomes])


# -- the greeting and EHLO -------------------------------------------------------------------


def test_greeting_refused() -> None:
    session, events = check([(b"", b"554 5.3.2 not now\r\n")])
    assert events == [HandshakeRefused("greeting", reply(b"554 5.3.2 not now\r\n"))]
    assert session.state is State.CLOSED and not session.usable


def test_ehlo_then_ready() -> None:
    session, events = check(handshake())
    assert events == [Ready(tls=False, esmtp=True)]
    assert session.reusable and session.client.supports("PIPELINING")


def test_ehlo_refused_then_helo() -> None:
    session, events = check(
        [
            (b"", GREETING),
            (b"EHLO mx.test\r\n", b"502 5.5.1 Command not implemented\r\n"),
            (b"HELO mx.test\r\n", b"250 old.test\r\n"),
        ]
    )
    assert events == [Ready(tls=False, esmtp=False)]
    assert not session.client.esmtp


def test_any_reply_but_250_to_ehlo_means_helo() -> None:
    """As before the session existed: a 4xx to EHLO is tried with HELO too."""
    _, events = check(
        [
            (b"", GREETING),
            (b"EHLO mx.test\r\n", b"421 4.3.0 busy\r\n"),
            (b"HELO mx.test\r\n", b"250 old.test\r\n"),
        ]
    )
    assert events == [Ready(tls=False, esmtp=False)]


def test_helo_refused() -> None:
    refusal = b"550 5.7.1 go away\r\n"
    session, events = check(
        [(b"", GREETING), (b"EHLO mx.test\r\n", b"500 what\r\n"), (b"HELO mx.test\r\n", refusal)]
    )
    assert events == [HandshakeRefused("helo", reply(refusal))]
    assert not session.usable


def test_lhlo_refused_is_the_end_no_helo() -> None:
    """RFC 2033 §4.1: an LMTP server knows LHLO only."""
    refusal = b"500 5.5.1 unknown\r\n"
    session, events = check([(b"", GREETING), (b"LHLO mx.test\r\n", refusal)], lmtp=True)
    assert events == [HandshakeRefused("lhlo", reply(refusal))]
    assert not session.usable


# -- STARTTLS --------------------------------------------------------------------------------


def test_starttls_when_offered_then_ehlo_again() -> None:
    session, events = check(
        [
            *handshake(EHLO_STARTTLS),
            (b"STARTTLS\r\n", b"220 2.0.0 Ready to start TLS\r\n"),
            (b"EHLO mx.test\r\n", b"250-sink.test\r\n250 SIZE 500\r\n"),
        ]
    )
    assert events == [StartTlsNow(), Ready(tls=True, esmtp=True)]
    client = session.client
    assert session.tls and client.size_limit == 500  # RFC 3207 §4.2: forget the first EHLO
    assert not client.supports("STARTTLS") and not client.supports("PIPELINING")


def test_starttls_offered_again_after_tls_is_not_said_twice() -> None:
    _, events = check(
        [
            *handshake(EHLO_STARTTLS),
            (b"STARTTLS\r\n", b"220 go ahead\r\n"),
            (b"EHLO mx.test\r\n", EHLO_STARTTLS),
        ]
    )
    assert events == [StartTlsNow(), Ready(tls=True, esmtp=True)]


def test_no_starttls_when_not_offered_or_not_wanted() -> None:
    assert check(handshake())[1] == [Ready(tls=False, esmtp=True)]
    assert check(handshake(EHLO_STARTTLS), starttls=False)[1] == [Ready(tls=False, esmtp=True)]


def test_starttls_refused_carries_on_in_clear_text() -> None:
    session, events = check(
        [*handshake(EHLO_STARTTLS), (b"STARTTLS\r\n", b"454 4.7.0 TLS not available\r\n")]
    )
    assert events == [Ready(tls=False, esmtp=True)]
    assert session.reusable and session.client.supports("PIPELINING")


def test_tls_started_only_when_asked() -> None:
    session = ClientSession("mx.test")
    with pytest.raises(ClientUsageError):
        session.tls_started()


# -- transactions ----------------------------------------------------------------------------


def test_pipelined_transaction_is_one_write_then_the_message() -> None:
    transcript = [
        *handshake(),
        (
            mail(b"SIZE=%d" % SIZE) + rcpt("c@d.test") + b"DATA\r\n",
            b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 go on\r\n",
        ),
        (WIRE, b"250 2.0.0 Ok: queued as X1\r\n"),
    ]
    session, events = check(transcript, (tx(),))
    assert events[1:] == [done(("c@d.test", b"250 2.0.0 Ok: queued as X1\r\n"))]
    assert session.reusable


def test_pipelined_batch_goes_out_whole_before_any_reply() -> None:
    session, _ = play(handshake(), per_reply)
    session.start_transaction(tx("c@d.test", "e@d.test"))
    assert session.data_to_send() == (
        mail(b"SIZE=%d" % SIZE) + rcpt("c@d.test") + rcpt("e@d.test") + b"DATA\r\n"
    )
    assert not session.receive_data(b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n")
    assert session.next_event() is None and session.data_to_send() == b""


def test_one_command_at_a_time_without_pipelining() -> None:
    transcript = [
        *handshake(EHLO_PLAIN),
        (mail(b"SIZE=%d" % SIZE), b"250 2.1.0 Ok\r\n"),
        (rcpt("c@d.test"), b"250 2.1.5 Ok\r\n"),
        (rcpt("e@d.test"), b"250 2.1.5 Ok\r\n"),
        (b"DATA\r\n", b"354 go on\r\n"),
        (WIRE, b"250 2.0.0 Ok\r\n"),
    ]
    _, events = check(transcript, (tx("c@d.test", "e@d.test"),))
    assert events[1:] == [done(("c@d.test", OK), ("e@d.test", OK))]
    session, _ = play(handshake(EHLO_PLAIN), per_reply)
    session.start_transaction(tx())
    assert session.data_to_send() == mail(b"SIZE=%d" % SIZE)  # and nothing more yet
    assert session.next_event() is None and session.data_to_send() == b""


def test_mail_parameters_to_a_helo_server() -> None:
    transcript = [
        (b"", GREETING),
        (b"EHLO mx.test\r\n", b"500 no\r\n"),
        (b"HELO mx.test\r\n", b"250 old.test\r\n"),
        (mail(), b"250 Ok\r\n"),
        (rcpt("c@d.test"), b"250 Ok\r\n"),
        (b"DATA\r\n", b"354 go on\r\n"),
        (WIRE, b"250 Ok\r\n"),
    ]
    assert check(transcript, (tx(),))[1][1:] == [done(("c@d.test", b"250 Ok\r\n"))]


def test_some_recipients_refused() -> None:
    no_user = b"550 5.1.1 no such user\r\n"
    transcript = [
        *handshake(),
        (
            mail(b"SIZE=%d" % SIZE)
            + rcpt("a@d.test")
            + rcpt("b@d.test")
            + rcpt("c@d.test")
            + b"DATA\r\n",
            b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n" + no_user + b"250 2.1.5 Ok\r\n354 go on\r\n",
        ),
        (WIRE, OK),
    ]
    _, events = check(transcript, (tx("a@d.test", "b@d.test", "c@d.test"),))
    assert events[1:] == [done(("a@d.test", OK), ("b@d.test", no_user), ("c@d.test", OK))]


def test_all_recipients_refused_pipelined_data_refused_then_rset() -> None:
    no_user = b"550 5.1.1 no such user\r\n"
    full = b"452 4.2.2 mailbox full\r\n"
    transcript = [
        *handshake(),
        (
            mail(b"SIZE=%d" % SIZE) + rcpt("a@d.test") + rcpt("b@d.test") + b"DATA\r\n",
            b"250 2.1.0 Ok\r\n" + no_user + full + b"554 5.5.1 no valid recipients\r\n",
        ),
        (b"RSET\r\n", OK),
    ]
    session, events = check(transcript, (tx("a@d.test", "b@d.test"),))
    assert events[1:] == [done(("a@d.test", no_user), ("b@d.test", full))]
    assert session.reusable


def test_all_recipients_refused_yet_354_ends_the_empty_message_without_rset() -> None:
    no_user = b"550 5.1.1 no such user\r\n"
    transcript = [
        *handshake(),
        (
            mail(b"SIZE=%d" % SIZE) + rcpt("a@d.test") + b"DATA\r\n",
            b"250 2.1.0 Ok\r\n" + no_user + b"354 go on\r\n",
        ),
        (WIRE, b"554 5.5.1 no valid recipients\r\n"),
    ]
    session, events = check(transcript, (tx("a@d.test"),))
    assert events[1:] == [done(("a@d.test", no_user))]
    assert session.reusable


def test_all_recipients_refused_one_at_a_time_rset_and_no_data() -> None:
    no_user = b"550 5.1.1 no such user\r\n"
    transcript = [
        *handshake(EHLO_PLAIN),
        (mail(b"SIZE=%d" % SIZE), b"250 2.1.0 Ok\r\n"),
        (rcpt("a@d.test"), no_user),
        (rcpt("b@d.test"), no_user),
        (b"RSET\r\n", OK),
    ]
    _, events = check(transcript, (tx("a@d.test", "b@d.test"),))
    assert events[1:] == [done(("a@d.test", no_user), ("b@d.test", no_user))]


def test_sender_refused_pipelined_then_rset() -> None:
    later = b"451 4.3.0 try again later\r\n"
    transcript = [
        *handshake(),
        (
            mail(b"SIZE=%d" % SIZE) + rcpt("a@d.test") + rcpt("b@d.test") + b"DATA\r\n",
            later + b"503 5.5.1 need MAIL\r\n503 5.5.1 need MAIL\r\n503 5.5.1 need MAIL\r\n",
        ),
        (b"RSET\r\n", OK),
    ]
    session, events = check(transcript, (tx("a@d.test", "b@d.test"),))
    assert events[1:] == [done(("a@d.test", later), ("b@d.test", later))]
    assert session.reusable


def test_sender_refused_yet_354_ends_the_data_with_a_dot_then_rset() -> None:
    later = b"451 4.3.0 try again later\r\n"
    transcript = [
        *handshake(),
        (
            mail(b"SIZE=%d" % SIZE) + rcpt("a@d.test") + b"DATA\r\n",
            later + b"250 2.1.5 Ok\r\n354 go on\r\n",
        ),
        (b".\r\n", b"554 5.5.1 no transaction\r\n"),
        (b"RSET\r\n", OK),
    ]
    assert check(transcript, (tx("a@d.test"),))[1][1:] == [done(("a@d.test", later))]


def test_sender_refused_one_at_a_time_needs_no_rset() -> None:
    refused = b"553 5.7.1 sender rejected\r\n"
    transcript = [*handshake(EHLO_PLAIN), (mail(b"SIZE=%d" % SIZE), refused)]
    session, events = check(transcript, (tx("a@d.test", "b@d.test"),))
    assert events[1:] == [done(("a@d.test", refused), ("b@d.test", refused))]
    assert session.reusable


@pytest.mark.parametrize("pipelining", [True, False])
def test_data_refused_then_rset(pipelining: bool) -> None:
    no_user = b"550 5.1.1 no such user\r\n"
    refused = b"451 4.3.0 not now\r\n"
    recipients = ("a@d.test", "b@d.test")
    if pipelining:
        transcript = [
            *handshake(),
            (
                mail(b"SIZE=%d" % SIZE) + rcpt("a@d.test") + rcpt("b@d.test") + b"DATA\r\n",
                b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n" + no_user + refused,
            ),
        ]
    else:
        transcript = [
            *handshake(EHLO_PLAIN),
            (mail(b"SIZE=%d" % SIZE), b"250 2.1.0 Ok\r\n"),
            (rcpt("a@d.test"), b"250 2.1.5 Ok\r\n"),
            (rcpt("b@d.test"), no_user),
            (b"DATA\r\n", refused),
        ]
    transcript.append((b"RSET\r\n", OK))
    _, events = check(transcript, (tx(*recipients),))
    assert events[1:] == [done(("a@d.test", refused), ("b@d.test", no_user))]


def test_final_reply_decides_every_accepted_recipient() -> None:
    full = b"452 4.3.1 insufficient storage\r\n"
    transcript = [
        *handshake(),
        (
            mail(b"SIZE=%d" % SIZE) + rcpt("a@d.test") + rcpt("b@d.test") + b"DATA\r\n",
            b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.1.5 Ok\r\n354 go on\r\n",
        ),
        (WIRE, full),
    ]
    _, events = check(transcript, (tx("a@d.test", "b@d.test"),))
    assert events[1:] == [done(("a@d.test", full), ("b@d.test", full))]


def test_lmtp_one_reply_per_accepted_recipient() -> None:
    """RFC 2033 §4.2: after the message, one reply per recipient accepted, in order."""
    no_user = b"550 5.1.1 no such user\r\n"
    full = b"452 4.2.2 mailbox full\r\n"
    recipients = ("alice@d.test", "bob@d.test", "carol@d.test", "dave@d.test")
    transcript = [
        (b"", GREETING),
        (b"LHLO mx.test\r\n", EHLO_PIPELINING),
        (
            mail(b"SIZE=%d" % SIZE) + b"".join(rcpt(r) for r in recipients) + b"DATA\r\n",
            b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.1.5 Ok\r\n"
            + no_user
            + b"250 2.1.5 Ok\r\n354 go on\r\n",
        ),
        (WIRE, b"250 2.0.0 alice\r\n" + full + b"250 2.0.0 dave\r\n"),
    ]
    session, events = check(transcript, (tx(*recipients),), lmtp=True)
    assert events[1:] == [
        done(
            ("alice@d.test", b"250 2.0.0 alice\r\n"),
            ("bob@d.test", full),
            ("carol@d.test", no_user),
            ("dave@d.test", b"250 2.0.0 dave\r\n"),
        )
    ]
    assert session.reusable


def test_lmtp_single_recipient() -> None:
    transcript = [
        (b"", GREETING),
        (b"LHLO mx.test\r\n", EHLO_PIPELINING),
        (
            mail(b"SIZE=%d" % SIZE) + rcpt("a@d.test") + b"DATA\r\n",
            b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 go on\r\n",
        ),
        (WIRE, b"452 4.2.2 mailbox full\r\n"),
    ]
    _, events = check(transcript, (tx("a@d.test"),), lmtp=True)
    assert events[1:] == [done(("a@d.test", b"452 4.2.2 mailbox full\r\n"))]


def test_two_transactions_over_one_connection() -> None:
    batch = mail(b"SIZE=%d" % SIZE) + rcpt("c@d.test") + b"DATA\r\n"
    answers = b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 go on\r\n"
    transcript = [*handshake(), (batch, answers), (WIRE, OK), (batch, answers), (WIRE, OK)]
    _, events = check(transcript, (tx(), tx()))
    assert events[1:] == [done(("c@d.test", OK)), done(("c@d.test", OK))]


# -- checks before anything is sent ----------------------------------------------------------


def test_message_over_the_server_size_limit_is_not_sent() -> None:
    big = b"x" * 1001
    session, events = check(handshake(), (tx(message=big),))
    assert events[1:] == [TransactionNotSent("size", 1001, 1000)]
    assert session.reusable and session.data_to_send() == b""


def test_smtputf8_needed_but_not_offered_is_not_sent() -> None:
    session, events = check(handshake(), (tx(smtputf8=True),))
    assert events[1:] == [TransactionNotSent("smtputf8", SIZE, 1000)]
    assert session.reusable


def test_smtputf8_offered_is_asked_for() -> None:
    ehlo = b"250-sink.test\r\n250-PIPELINING\r\n250 SMTPUTF8\r\n"
    transcript = [
        *handshake(ehlo),
        (
            mail(b"SMTPUTF8") + rcpt("c@d.test") + b"DATA\r\n",
            b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 go on\r\n",
        ),
        (WIRE, OK),
    ]
    assert check(transcript, (tx(smtputf8=True),))[1][1:] == [done(("c@d.test", OK))]


# -- RSET, stray replies, garbage ------------------------------------------------------------


def test_rset_refused_makes_the_connection_unusable() -> None:
    no_user = b"550 5.1.1 no such user\r\n"
    transcript = [
        *handshake(),
        (
            mail(b"SIZE=%d" % SIZE) + rcpt("a@d.test") + b"DATA\r\n",
            b"250 2.1.0 Ok\r\n" + no_user + b"554 5.5.1 no valid recipients\r\n",
        ),
        (b"RSET\r\n", b"421 4.3.2 going down\r\n"),
    ]
    session, events = check(transcript, (tx("a@d.test"), tx()))  # the second is not tried
    assert events[1:] == [done(("a@d.test", no_user))]
    assert not session.usable and not session.reusable
    with pytest.raises(ClientUsageError):
        session.start_transaction(tx())


def test_a_reply_nobody_asked_for_makes_the_session_unfit_for_reuse() -> None:
    session, _ = play(handshake(), per_reply)
    assert session.reusable
    assert session.receive_data(b"421 4.3.2 shutting down\r\n")
    assert session.usable and not session.reusable


def test_garbage_is_the_peers_fault() -> None:
    session = ClientSession("mx.test")
    with pytest.raises(ProtocolError):
        session.receive_data(b"hello there\r\n")
    assert not issubclass(ProtocolError, SessionUsageError)


# -- the API used out of order ---------------------------------------------------------------


def test_transaction_before_the_handshake_is_a_usage_error() -> None:
    session = ClientSession("mx.test")
    with pytest.raises(ClientUsageError):
        session.start_transaction(tx())
    session.receive_data(GREETING)
    assert session.next_event() is None
    with pytest.raises(ClientUsageError):
        session.start_transaction(tx())


def test_transaction_during_a_transaction_is_a_usage_error() -> None:
    session, _ = play(handshake(), per_reply)
    session.start_transaction(tx())
    with pytest.raises(ClientUsageError):
        session.start_transaction(tx())


@pytest.mark.parametrize("state", ["ready", "closed"])
def test_waiting_for_replies_when_none_are_due_is_a_usage_error(state: str) -> None:
    session, _ = play(handshake(), per_reply)
    if state == "closed":
        session.connection_lost()
    with pytest.raises(ClientUsageError):
        session.next_event()


def test_quit_once() -> None:
    session, _ = play(handshake(), per_reply)
    assert session.quit() == b"QUIT\r\n"
    assert not session.usable
    with pytest.raises(ClientUsageError):
        session.quit()
    assert issubclass(ClientUsageError, SessionUsageError)


# -- the table -------------------------------------------------------------------------------


def test_every_state_has_a_row_and_a_way_on() -> None:
    assert set(TRANSITIONS) == set(State)
    waits_for_the_caller = {State.TLS, State.READY, State.STREAM, State.CLOSED}
    session = ClientSession("mx.test")
    for state in set(State) - waits_for_the_caller:
        assert TRANSITIONS[state], state
        assert state in session._handlers, state
    for state in waits_for_the_caller:  # next_event() there is a usage error, not a wait
        assert state not in session._handlers, state


# -- random cuts -----------------------------------------------------------------------------

LMTP_TRANSCRIPT = [
    (b"", GREETING),
    (b"LHLO mx.test\r\n", b"250-sink.test\r\n250-PIPELINING\r\n250 SIZE 1000\r\n"),
    (
        mail(b"SIZE=%d" % SIZE) + rcpt("a@d.test") + rcpt("b@d.test") + b"DATA\r\n",
        b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.1.5 Ok\r\n354 go on\r\n",
    ),
    (WIRE, b"250-2.0.0 first\r\n250 2.0.0 line\r\n452 4.2.2 full\r\n"),
]


def cut(data: bytes, cuts: list[int]) -> Iterator[bytes]:
    start = 0
    for c in sorted(set(cuts)):
        yield data[start:c]
        start = c
    yield data[start:]


@given(st.lists(st.integers(min_value=0, max_value=400), max_size=10))
def test_any_split_gives_the_same_conversation(cuts: list[int]) -> None:
    txs = (tx("a@d.test", "b@d.test"),)
    expected = play(LMTP_TRANSCRIPT, per_reply, txs, lmtp=True)[1]
    chunks = [c for c in cut(b"".join(a for _, a in LMTP_TRANSCRIPT), cuts) if c]
    assert play(LMTP_TRANSCRIPT, lambda _: chunks, txs, lmtp=True)[1] == expected


# -- what the client modules may import -----------------------------------------------------


@pytest.mark.parametrize("name", ["client", "client_events", "client_session"])
def test_the_client_modules_do_no_io_and_stay_below_delivery_and_queue(name: str) -> None:
    """DESIGN.md §2 and §6: mta.protocol is sans-I/O and imports run downhill."""
    source = (Path(__file__).parents[2] / "mta" / "protocol" / f"{name}.py").read_text()
    imported: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module)
    roots = {module.split(".")[0] for module in imported}
    assert not roots & {"asyncio", "socket", "ssl", "os", "time", "select", "selectors"}
    assert not {m for m in imported if m.startswith(("mta.delivery", "mta.queue"))}
