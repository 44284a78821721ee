"""Sending a stored message in chunks, with no sockets: the streaming dot-stuffer
(mta/protocol/dot_stuff.py) and the client session's STREAM phase (client_session.py).

The stuffer must give, for every way of cutting a message, exactly the bytes the
whole-message ``dot_stuff`` gives: cut at every point, and at every pair of points, of
messages built to put CRLF, a lone CR, a dot and the end of the message at the edges.
"""

from __future__ import annotations

from collections.abc import Generator, Iterable
from itertools import combinations, pairwise

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mta.protocol.client import Reply
from mta.protocol.client_events import (
    RecipientReply,
    SendMessage,
    Transaction,
    TransactionDone,
    TransactionNotSent,
)
from mta.protocol.client_session import ClientSession, ClientUsageError, State
from mta.protocol.dot_stuff import DotStuffer, dot_stuff

MESSAGES = [
    b"",
    b".",
    b"..",
    b"\r\n",
    b"\r\n.",
    b".\r\n",
    b"\r\n.\r\n",
    b"a\r\n.b\r\n..c\r\n",
    b"Subject: x\r\n\r\n.dot\r\nend\r\n",
    b"no newline at the end",
    b"ends with a lone CR\r",
    b"ends with a lone LF\n",
    b"bare LF\n.then a dot\r\n",
    b"bare CR\r.then a dot\r\n",
    b"\r\r\n.\n\r\n.\r",
    b".a\r\n\r\n.\r\n.\r\n..\r\n",
]


def stuffed_in(chunks: Iterable[bytes]) -> bytes:
    stuffer = DotStuffer()
    return b"".join(stuffer.feed(c) for c in chunks) + stuffer.end()


def cut(message: bytes, points: Iterable[int]) -> list[bytes]:
    edges = [0, *points, len(message)]
    return [message[a:b] for a, b in pairwise(edges)]


@pytest.mark.parametrize("message", MESSAGES)
def test_every_single_and_double_cut_gives_the_whole_message_bytes(message: bytes) -> None:
    whole = dot_stuff(message)
    positions = range(len(message) + 1)
    for point in positions:
        assert stuffed_in(cut(message, [point])) == whole, point
    for points in combinations(positions, 2):
        assert stuffed_in(cut(message, points)) == whole, points


@pytest.mark.parametrize("message", MESSAGES)
def test_one_octet_at_a_time_and_empty_chunks_between(message: bytes) -> None:
    octets = [message[i : i + 1] for i in range(len(message))]
    assert stuffed_in(octets) == dot_stuff(message)
    assert stuffed_in(c for octet in octets for c in (b"", octet, b"")) == dot_stuff(message)


@given(
    st.lists(st.sampled_from([b"\r", b"\n", b".", b"a", b"\r\n", b"\r\n."]), max_size=60),
    st.lists(st.integers(min_value=0, max_value=200), max_size=8),
)
def test_random_messages_cut_at_random(parts: list[bytes], points: list[int]) -> None:
    message = b"".join(parts)
    points = sorted({min(p, len(message)) for p in points})
    assert stuffed_in(cut(message, points)) == dot_stuff(message)


def test_a_stuffer_ends_one_message_and_starts_the_next_at_a_line_start() -> None:
    stuffer = DotStuffer()
    assert stuffer.feed(b"x") + stuffer.end() == b"x\r\n.\r\n"
    assert stuffer.feed(b".y\r\n") + stuffer.end() == b"..y\r\n.\r\n"


# -- the client session's STREAM phase ---------------------------------------------------------

GREETING = b"220 sink.test ESMTP\r\n"
EHLO_PIPELINING = b"250-sink.test\r\n250-PIPELINING\r\n250 SIZE 100000\r\n"
EHLO_PLAIN = b"250-sink.test\r\n250 SIZE 100000\r\n"
OK = b"250 2.0.0 Ok\r\n"
BIG = b"Subject: big\r\n\r\n" + b"".join(b".line %d\r\n" % i for i in range(2000))


class Stored:
    """A StoredMessage held in memory, as the queue's MessageFile is on disk; counts the
    octets it handed out and whether the reader closed it."""

    def __init__(self, message: bytes, length: int | None = None) -> None:
        self.message = message
        self.message_length = len(message) if length is None else length
        self.closed = False

    def iter_message(self, chunk_size: int) -> Generator[bytes, None, None]:
        try:
            for start in range(0, len(self.message), chunk_size):
                yield self.message[start : start + chunk_size]
        finally:
            self.closed = True


def ready(ehlo: bytes = EHLO_PIPELINING, *, lmtp: bool = False) -> ClientSession:
    session = ClientSession("mx.test", lmtp=lmtp, starttls=False)
    session.receive_data(GREETING)
    assert session.next_event() is None
    session.data_to_send()
    session.receive_data(ehlo)
    session.next_event()
    assert session.state is State.READY
    return session


def stream(session: ClientSession, message: Stored, chunk_size: int) -> bytes:
    """What the I/O layer does after SendMessage: every chunk through message_data()."""
    sent = b"".join(session.message_data(c) for c in message.iter_message(chunk_size))
    return sent + session.end_message()


@pytest.mark.parametrize("chunk_size", [1, 7, 4096, len(BIG)])
def test_a_stored_message_is_sent_in_chunks_after_354_and_its_reply_decides(
    chunk_size: int,
) -> None:
    session = ready()
    message = Stored(BIG)
    tx = Transaction("a@b.test", ["c@d.test"], message)
    assert session.start_transaction(tx) is None
    assert session.data_to_send() == (
        f"MAIL FROM:<a@b.test> SIZE={len(BIG)}\r\nRCPT TO:<c@d.test>\r\nDATA\r\n".encode()
    )
    session.receive_data(b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 go ahead\r\n")
    assert session.next_event() == SendMessage()
    assert session.state is State.STREAM and session.data_to_send() == b""
    assert stream(session, message, chunk_size) == dot_stuff(BIG)
    assert session.state is State.MESSAGE and session.next_event() is None
    session.receive_data(OK)
    assert session.next_event() == TransactionDone(
        [RecipientReply("c@d.test", Reply(250, ("2.0.0 Ok",)))]
    )
    assert session.reusable


def test_the_size_checks_use_the_stored_length() -> None:
    session = ready()
    huge = Stored(b"small in memory", length=200_000)  # over the server's SIZE 100000
    not_sent = session.start_transaction(Transaction("a@b.test", ["c@d.test"], huge))
    assert not_sent == TransactionNotSent("size", 200_000, 100_000)
    assert session.data_to_send() == b"" and session.reusable


def test_the_message_is_never_ended_short_of_its_length() -> None:
    session = ready()
    message = Stored(BIG)
    session.start_transaction(Transaction("a@b.test", ["c@d.test"], message))
    session.data_to_send()
    session.receive_data(b"250 Ok\r\n250 Ok\r\n354 go\r\n")
    assert session.next_event() == SendMessage()
    session.message_data(BIG[:100])
    with pytest.raises(ClientUsageError, match="not sent"):
        session.end_message()
    with pytest.raises(ClientUsageError, match="more message data"):
        session.message_data(BIG[100:] + b"x")
    with pytest.raises(ClientUsageError, match="nothing to wait for"):
        session.next_event()
    session.message_data(BIG[100:])
    session.end_message()
    with pytest.raises(ClientUsageError, match="state message"):
        session.message_data(b"late")


def test_message_data_only_after_354() -> None:
    session = ready()
    with pytest.raises(ClientUsageError, match="state ready"):
        session.message_data(b"x")
    with pytest.raises(ClientUsageError, match="state ready"):
        session.end_message()


def test_one_at_a_time_and_lmtp_replies_per_recipient_after_a_streamed_message() -> None:
    session = ready(b"250-lmtp.test\r\n250 SIZE 100000\r\n", lmtp=True)
    message = Stored(BIG)
    tx = Transaction("a@b.test", ["x@d.test", "y@d.test", "z@d.test"], message)
    session.start_transaction(tx)
    for reply in (b"250 Ok\r\n", b"250 Ok\r\n", b"550 5.1.1 no\r\n", b"250 Ok\r\n"):
        session.data_to_send()
        session.receive_data(reply)
        assert session.next_event() is None
    assert session.data_to_send() == b"DATA\r\n"
    session.receive_data(b"354 go\r\n")
    assert session.next_event() == SendMessage()
    assert stream(session, message, 1000) == dot_stuff(BIG)
    session.receive_data(b"250 2.0.0 x ok\r\n")
    assert session.next_event() is None  # LMTP: one reply per accepted recipient
    session.receive_data(b"452 4.2.2 full\r\n")
    done = session.next_event()
    assert isinstance(done, TransactionDone)
    assert [(o.recipient, o.reply.code) for o in done.outcomes] == [
        ("x@d.test", 250),
        ("y@d.test", 550),
        ("z@d.test", 452),
    ]


def test_a_354_nobody_wanted_gets_the_empty_message_not_the_stored_one() -> None:
    session = ready()
    message = Stored(BIG)
    session.start_transaction(Transaction("a@b.test", ["c@d.test"], message))
    session.data_to_send()
    session.receive_data(b"250 Ok\r\n550 5.1.1 no such user\r\n354 go\r\n")
    assert session.next_event() is None
    assert session.data_to_send() == b".\r\n"
    session.receive_data(b"554 5.5.1 no valid recipients\r\n")
    done = session.next_event()
    assert isinstance(done, TransactionDone) and done.outcomes[0].reply.code == 550


def test_an_early_reply_during_the_stream_is_kept_for_the_end() -> None:
    """A server may answer before the message is over (and then close): the reply is kept
    and read once the message is ended, never taken as the answer to something else."""
    session = ready(EHLO_PLAIN)
    message = Stored(BIG)
    session.start_transaction(Transaction("a@b.test", ["c@d.test"], message))
    for reply in (b"250 Ok\r\n", b"250 Ok\r\n", b"354 go\r\n"):
        session.data_to_send()
        session.receive_data(reply)
        event = session.next_event()
    assert event == SendMessage()
    session.receive_data(b"552 5.3.4 too big after all\r\n")
    stream(session, message, 4096)
    done = session.next_event()
    assert isinstance(done, TransactionDone) and done.outcomes[0].reply.code == 552
