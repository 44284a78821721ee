"""BDAT (RFC 3030 CHUNKING) in the sans-I/O server session, on both parser backends.

What a client relies on: the octets a ``BDAT n`` announces are the message's, exactly, with
no dot-unstuffing and nothing in them read as a command or as the end of the message; every
chunk is answered only once its octets are in, refused ones too, so the session never falls
out of step; SIZE and the bare-line-ending and NUL rules hold across chunks; a transaction
is DATA or BDAT, never both.  Transcripts are compared byte for byte, fed whole, pipelined
and split at every offset.
"""

from __future__ import annotations

import pytest

from mta.protocol import replies
from mta.protocol.events import DataAborted, DataChunk, DataEnd, DataStart, TransactionReset
from mta.protocol.session import ParserBackend, ServerSession, State
from tests.protocol.sessions import new_session
from tests.protocol.test_session import QID, Transcript, collect, greeted, pump, run
from tests.protocol.test_session import session as session  # the fixture

ENVELOPE = b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\n"
QUEUED = replies.queued(QID)
OK_SENDER, OK_RCPT = replies.OK_SENDER, replies.OK_RECIPIENT

# A chunk whose octets would end DATA early and smuggle a second message if they were read
# as DATA or as commands: for BDAT they are just the message.
TRICKY = b"Subject: x\r\n\r\n..kept\r\n.\r\nMAIL FROM:<evil@x.test>\r\nRSET\r\n"


def bdat(payload: bytes, last: bool = False) -> bytes:
    return b"BDAT %d%s\r\n" % (len(payload), b" LAST" if last else b"") + payload


def test_ehlo_advertises_chunking(session: ServerSession) -> None:
    t = run(session, b"EHLO client.test\r\n")
    assert b"250-CHUNKING\r\n" in t.replies[-1] or t.replies[-1].endswith(b"250 CHUNKING\r\n")


def test_one_chunk_is_the_whole_message_byte_for_byte(session: ServerSession) -> None:
    t = run(greeted(session), ENVELOPE + bdat(TRICKY, last=True))
    assert t.replies == [OK_SENDER, OK_RCPT, QUEUED]
    assert t.data == TRICKY  # no dot removed, no terminator, no command
    assert [type(e) for e in t.events if not isinstance(e, DataChunk)][-2:] == [
        DataStart,
        DataEnd,
    ]
    assert t.of(DataEnd) == [DataEnd(len(TRICKY))]
    assert session.state is State.READY


def test_chunks_are_answered_each_and_joined(session: ServerSession) -> None:
    t = run(greeted(session), ENVELOPE, bdat(b"Subject: a\r\n"), bdat(b"\r\nbody\r\n", last=True))
    assert t.replies == [OK_SENDER, OK_RCPT, replies.chunk_received(12), QUEUED]
    assert t.data == b"Subject: a\r\n\r\nbody\r\n"


def test_bdat_0_last_ends_the_message(session: ServerSession) -> None:
    t = run(greeted(session), ENVELOPE + bdat(b"Subject: a\r\n\r\nb\r\n") + b"BDAT 0 LAST\r\n")
    assert t.replies[-2:] == [replies.chunk_received(17), QUEUED]
    assert t.data == b"Subject: a\r\n\r\nb\r\n"


def test_last_is_case_insensitive(session: ServerSession) -> None:
    t = run(greeted(session), ENVELOPE + b"bdat 3 last\r\nx\r\n")
    assert t.replies[-1] == QUEUED


def _transcript(parser: ParserBackend, pieces: list[bytes]) -> tuple[list[bytes], bytes]:
    session = greeted(new_session(parser))
    t = run(session, *pieces)
    return t.replies, t.data


WHOLE = ENVELOPE + bdat(b"Subject: s\r\n\r\nline one\r") + bdat(b"\n.\r\nline two\r\n", last=True)
WHOLE += b"MAIL FROM:<c@x.test>\r\nRCPT TO:<d@y.test>\r\n" + bdat(TRICKY, last=True) + b"QUIT\r\n"


def test_pipelined_and_split_at_every_offset_give_the_same_transcript(
    parser: ParserBackend,
) -> None:
    """Two transactions, a CRLF split across two chunks, QUIT: fed whole, byte by byte and
    cut at every offset, the replies and the message octets are the same, byte for byte."""
    expected_replies, expected_data = _transcript(parser, [WHOLE])
    assert expected_replies == [
        OK_SENDER,
        OK_RCPT,
        replies.chunk_received(23),
        QUEUED,
        OK_SENDER,
        OK_RCPT,
        QUEUED,
        replies.closing("mx.test"),
    ]
    assert expected_data == b"Subject: s\r\n\r\nline one\r\n.\r\nline two\r\n" + TRICKY
    assert _transcript(parser, [WHOLE[i : i + 1] for i in range(len(WHOLE))]) == (
        expected_replies,
        expected_data,
    )
    for cut in range(1, len(WHOLE)):
        assert _transcript(parser, [WHOLE[:cut], WHOLE[cut:]]) == (
            expected_replies,
            expected_data,
        ), cut


def test_the_twins_agree_on_bdat_transcripts(backends: list[ParserBackend]) -> None:
    pieces = [WHOLE[i : i + 7] for i in range(0, len(WHOLE), 7)]
    results = [_transcript(parser, pieces) for parser in backends]
    assert all(r == results[0] for r in results)


@pytest.mark.parametrize(
    ("before", "refusal"),
    [
        (b"", replies.NEED_MAIL),
        (b"MAIL FROM:<a@x.test>\r\n", replies.NEED_RCPT),
    ],
)
def test_bdat_out_of_sequence_consumes_its_chunk_then_refuses(
    session: ServerSession, before: bytes, refusal: bytes
) -> None:
    # The chunk says QUIT: it must be consumed as octets, never run as a command.
    t = run(greeted(session), before + bdat(b"QUIT\r\n", last=True) + b"NOOP\r\n")
    assert t.replies[-2:] == [refusal, replies.OK]
    assert t.of(DataStart) == [] and t.data == b""
    assert not session.closing


def test_bdat_before_helo_consumes_its_chunk(session: ServerSession) -> None:
    t = run(session, bdat(b"QUIT\r\n") + b"NOOP\r\n")
    assert t.replies[1:] == [replies.NEED_HELO, replies.OK]


@pytest.mark.parametrize(
    "line", [b"BDAT\r\n", b"BDAT x\r\n", b"BDAT -1\r\n", b"BDAT 5 MORE\r\n", b"BDAT 1 LAST x\r\n"]
)
def test_bdat_syntax_error_closes_the_session(session: ServerSession, line: bytes) -> None:
    """Without a count the octets that follow cannot be told from commands: close."""
    t = run(greeted(session), ENVELOPE + line + b"MAIL FROM:<evil@x.test>\r\n")
    assert t.replies[-1] == replies.bdat_syntax("mx.test")
    assert session.closing


def test_huge_count_is_a_syntax_error(session: ServerSession) -> None:
    t = run(greeted(session), ENVELOPE + b"BDAT 1234567890123456789\r\n")
    assert t.replies[-1] == replies.bdat_syntax("mx.test")


@pytest.mark.parametrize(
    ("command", "refusal"),
    [
        (b"DATA\r\n", replies.DATA_AFTER_BDAT),
        (b"RCPT TO:<c@y.test>\r\n", replies.RCPT_AFTER_BDAT),
        (b"MAIL FROM:<c@x.test>\r\n", replies.NESTED_MAIL),
        (b"STARTTLS\r\n", replies.STARTTLS_IN_TRANSACTION),
    ],
)
def test_between_chunks_only_bdat_goes_on(
    parser: ParserBackend, command: bytes, refusal: bytes
) -> None:
    session = greeted(new_session(parser, starttls=True))
    t = run(session, ENVELOPE + bdat(b"Subject: a\r\n") + command + bdat(b"\r\nb\r\n", True))
    assert t.replies[-2:] == [refusal, QUEUED]
    assert t.data == b"Subject: a\r\n\r\nb\r\n"


def test_rset_between_chunks_drops_the_message(session: ServerSession) -> None:
    t = run(greeted(session), ENVELOPE + bdat(b"Subject: a\r\n") + b"RSET\r\n")
    assert t.replies[-1] == replies.RESET
    assert isinstance(t.events[-1], TransactionReset)
    t = run(session, bdat(b"x\r\n", last=True))  # the chunk that follows is refused whole
    assert t.replies == [replies.NEED_MAIL]


def test_size_counts_every_chunk(parser: ParserBackend) -> None:
    session = greeted(new_session(parser, max_message_size=20))
    t = run(session, ENVELOPE + bdat(b"a" * 12 + b"\r\n") + bdat(b"b" * 12 + b"\r\n", last=True))
    assert t.replies[-2:] == [replies.chunk_received(14), replies.TOO_BIG]
    assert t.of(DataAborted) == [DataAborted("too_big")]
    assert t.of(DataEnd) == []
    assert len(t.data) <= 20
    # the transaction is over; the session is in step for the next one
    t = run(session, ENVELOPE + bdat(b"ok\r\n", last=True))
    assert t.replies == [OK_SENDER, OK_RCPT, QUEUED]


def test_after_a_failed_chunk_later_chunks_are_consumed_and_refused(parser: ParserBackend) -> None:
    session = greeted(new_session(parser, max_message_size=10))
    t = run(session, ENVELOPE + bdat(b"x" * 11) + bdat(b"RSET\r\n", last=True) + b"NOOP\r\n")
    assert t.replies[-3:] == [replies.TOO_BIG, replies.NEED_MAIL, replies.OK]


def test_crlf_split_between_chunks_is_one_line_end(session: ServerSession) -> None:
    t = run(greeted(session), ENVELOPE + bdat(b"a: b\r\n\r\nx\r") + bdat(b"\ny\r\n", last=True))
    assert t.replies[-1] == QUEUED
    assert t.data == b"a: b\r\n\r\nx\r\ny\r\n"


@pytest.mark.parametrize("payload", [b"a: b\r\n\r\nx\n", b"a: b\r\n\r\nx\r", b"a\rb\r\n"])
def test_bare_line_endings_across_chunks_reject_the_message(
    session: ServerSession, payload: bytes
) -> None:
    t = run(greeted(session), ENVELOPE + bdat(payload[:3]) + bdat(payload[3:], last=True))
    assert t.replies[-1] == replies.BARE_LINE_ENDING_DATA
    assert t.of(DataAborted) == [DataAborted("bare_line_ending")]


def test_bare_line_endings_normalised_when_configured(parser: ParserBackend) -> None:
    session = greeted(new_session(parser, normalize_bare_line_endings=True))
    t = run(session, ENVELOPE + bdat(b"a\nb\r", last=True))
    assert t.replies[-1] == QUEUED
    assert t.data == b"a\r\nb\r\n"
    assert t.of(DataEnd) == [DataEnd(6)]


def test_nul_in_a_chunk_rejects_the_message(session: ServerSession) -> None:
    t = run(greeted(session), ENVELOPE + bdat(b"a\x00b\r\n", last=True))
    assert t.replies[-1] == replies.NUL_IN_DATA


def test_a_first_chunk_the_server_refuses_is_consumed_then_answered(
    session: ServerSession,
) -> None:
    """The server could not open the message (disk trouble): the chunk's octets are read
    and dropped, then the refusal is the answer, and the transaction is over."""
    session = greeted(session)
    session.receive_data(ENVELOPE + bdat(b"QUIT\r\n") + b"NOOP\r\n")
    transcript = Transcript()
    while (event := session.next_event()) is not None:
        transcript.events.append(event)
        if isinstance(event, DataStart):
            session.reject(replies.LOCAL_ERROR)
        else:
            session.accept()
    collect(session, transcript)
    assert transcript.replies == [OK_SENDER, OK_RCPT, replies.LOCAL_ERROR, replies.OK]
    assert session.state is State.READY and not session.closing


def test_the_end_waits_for_the_durable_commit(session: ServerSession) -> None:
    """As after DATA: nothing after BDAT LAST is processed until the 250 is decided."""
    session = greeted(session)
    session.receive_data(ENVELOPE + bdat(b"x\r\n", last=True) + b"NOOP\r\n")
    transcript = Transcript()
    pump(session, transcript, accept_end=False)
    assert isinstance(transcript.events[-1], DataEnd)
    assert session.waiting and session.next_event() is None
    session.accept(QUEUED)
    pump(session, transcript)
    collect(session, transcript)
    assert transcript.replies[-2:] == [QUEUED, replies.OK]


def test_a_timeout_mid_chunk_closes(session: ServerSession) -> None:
    t = run(greeted(session), ENVELOPE + b"BDAT 100\r\npartial")
    assert session.receiving_message
    session.timeout()
    collect(session, t)
    assert t.replies[-1].startswith(b"421 ")
