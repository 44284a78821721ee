"""The sans-I/O ServerSession: transcripts in, events and replies out, no sockets.

Every test runs against both parser backends (the ``parser`` fixture), passed to the session
as the server passes the one it chose.  The helper :func:`run` plays the part of the I/O
layer: it feeds the bytes, accepts every decision (a message end with ``250 ... queued as
QID``) and checks that every reply carries an enhanced status code (RFC 2034 §3).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import pytest

from mta.protocol import replies
from mta.protocol.errors import SessionUsageError
from mta.protocol.events import (
    DataAborted,
    DataChunk,
    DataEnd,
    DataStart,
    Event,
    MailFrom,
    RcptTo,
    TransactionReset,
)
from mta.protocol.session import ParserBackend, ServerSession
from tests.protocol.sessions import HOST, new_session

QID = "QID"

# RFC 2034 §3: every 2xx/4xx/5xx line carries "class.subject.detail" of the same class,
# except the greeting and the replies to HELO/EHLO; 354 is not a completion reply.
_ENHANCED = re.compile(rb"^([245])\d\d[ -]\1\.\d{1,3}\.\d{1,3} \S")
_REPLY_LINE = re.compile(rb"^\d{3}[ -][^\r\n]*\r\n$")


@pytest.fixture
def session(parser: ParserBackend) -> ServerSession:
    s = new_session(parser, max_message_size=1000, max_recipients=5, max_errors=10)
    assert s._parser is parser
    return s


# ----- the transcript helper -----------------------------------------------------------


@dataclass
class Transcript:
    events: list[Event] = field(default_factory=list)
    replies: list[bytes] = field(default_factory=list)

    @property
    def codes(self) -> list[int]:
        return [int(r[:3]) for r in self.replies]

    @property
    def data(self) -> bytes:
        return b"".join(e.data for e in self.events if isinstance(e, DataChunk))

    def of(self, kind: type) -> list[Event]:
        return [e for e in self.events if isinstance(e, kind)]


def split_replies(out: bytes) -> list[bytes]:
    """Group reply lines into replies (``250-a`` ... ``250 z`` is one reply)."""
    result: list[bytes] = []
    current = b""
    for line in out.splitlines(keepends=True):
        assert _REPLY_LINE.match(line), line
        current += line
        if line[3:4] == b" ":
            result.append(current)
            current = b""
    assert current == b"", f"unfinished multi-line reply {current!r}"
    return result


def check_enhanced(reply: bytes) -> None:
    first = reply.split(b"\r\n", 1)[0]
    if first.startswith((b"220 ", b"354 ")):
        return
    if first[:4] in (b"250 ", b"250-") and first[4:].startswith(HOST.encode()):
        return  # the answer to HELO/EHLO
    for line in reply.splitlines():
        assert _ENHANCED.match(line), f"no enhanced status code: {line!r}"


def pump(session: ServerSession, transcript: Transcript, accept_end: bool = True) -> None:
    """Take every event, accepting each decision, until the session needs more."""
    while (event := session.next_event()) is not None:
        transcript.events.append(event)
        if isinstance(event, (MailFrom, RcptTo, DataStart)):
            session.accept()
        elif isinstance(event, DataEnd):
            if not accept_end:
                return
            session.accept(replies.queued(QID))


def collect(session: ServerSession, transcript: Transcript) -> None:
    for reply in split_replies(session.data_to_send()):
        check_enhanced(reply)
        transcript.replies.append(reply)


def run(session: ServerSession, *chunks: bytes, accept_end: bool = True) -> Transcript:
    """Feed ``chunks`` one after the other, auto-accepting; return events and replies."""
    transcript = Transcript()
    pump(session, transcript, accept_end)
    for chunk in chunks:
        session.receive_data(chunk)
        pump(session, transcript, accept_end)
    collect(session, transcript)
    return transcript


def greeted(session: ServerSession, ehlo: bytes = b"EHLO client.test\r\n") -> ServerSession:
    t = run(session, ehlo)
    assert t.codes[-1] == 250
    return session


def code_of(reply: bytes) -> bytes:
    """``"503 5.5.1"``: the basic and the enhanced code."""
    return reply[:9]


TRANSACTION = b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n"


# ----- greeting, EHLO, HELO --------------------------------------------------------------


def test_greeting_is_sent_first(session: ServerSession) -> None:
    out = session.data_to_send()
    assert out == b"220 mx.test ESMTP mta\r\n"
    assert session.data_to_send() == b""
    assert session.next_event() is None


def test_ehlo_advertises_exactly_our_extensions(parser: ParserBackend) -> None:
    session = new_session(parser, max_message_size=12345)
    t = run(session, b"EHLO client.test\r\n")
    ehlo = t.replies[1]
    lines = ehlo.split(b"\r\n")[:-1]
    assert lines[0] == b"250-mx.test"
    assert all(line.startswith(b"250-") for line in lines[:-1])
    assert lines[-1].startswith(b"250 ")
    keywords = sorted(line[4:] for line in lines[1:])
    assert keywords == sorted(
        [
            b"PIPELINING",
            b"SIZE 12345",
            b"8BITMIME",
            b"ENHANCEDSTATUSCODES",
            b"SMTPUTF8",
            b"CHUNKING",
            b"DSN",
        ]
    )
    assert session.esmtp
    assert session.helo == "client.test"


def test_helo_answers_one_line_and_is_not_esmtp(session: ServerSession) -> None:
    t = run(session, b"HELO client.test\r\nMAIL FROM:<a@x.test> SIZE=10\r\n")
    assert t.replies[1] == b"250 mx.test\r\n"
    assert not session.esmtp
    assert code_of(t.replies[2]) == b"555 5.5.4"  # no ESMTP parameters after HELO
    assert t.of(MailFrom) == []


def test_helo_then_plain_transaction(session: ServerSession) -> None:
    t = run(session, b"HELO c\r\n", TRANSACTION, b"hi\r\n.\r\n")
    assert t.codes == [220, 250, 250, 250, 354, 250]
    assert t.replies[-1] == b"250 2.0.0 Ok: queued as QID\r\n"


def test_verbs_are_case_insensitive(session: ServerSession) -> None:
    t = run(session, b"ehlo c\r\nmail from:<a@x.test>\r\nrcpt to:<b@y.test>\r\nnoop\r\n")
    assert t.codes == [220, 250, 250, 250, 250]
    assert t.of(MailFrom) == [MailFrom("a@x.test", {})]


# ----- a whole transaction ------------------------------------------------------------


def test_full_transaction_events_and_replies(session: ServerSession) -> None:
    t = run(
        greeted(session),
        TRANSACTION,
        b"Subject: hi\r\n\r\nhello\r\n.\r\n",
        b"QUIT\r\n",
    )
    assert t.replies == [
        b"250 2.1.0 Ok\r\n",
        b"250 2.1.5 Ok\r\n",
        b"354 End data with <CR><LF>.<CR><LF>\r\n",
        b"250 2.0.0 Ok: queued as QID\r\n",
        b"221 2.0.0 mx.test Bye\r\n",
    ]
    kinds = [type(e) for e in t.events if not isinstance(e, DataChunk)]
    assert kinds == [MailFrom, RcptTo, DataStart, DataEnd]
    assert t.data == b"Subject: hi\r\n\r\nhello\r\n"
    assert t.of(DataEnd) == [DataEnd(len(t.data))]
    assert session.closing


def test_second_transaction_on_same_connection(session: ServerSession) -> None:
    t = run(greeted(session), TRANSACTION, b"one\r\n.\r\n", TRANSACTION, b"two\r\n.\r\n")
    assert t.codes == [250, 250, 354, 250, 250, 250, 354, 250]
    assert [e.sender for e in t.of(MailFrom)] == ["a@x.test", "a@x.test"]  # type: ignore[union-attr]
    assert len(t.of(DataEnd)) == 2


def test_session_keeps_sender_and_recipients(session: ServerSession) -> None:
    greeted(session)
    run(session, b"MAIL FROM:<a@x.test> BODY=8BITMIME\r\nRCPT TO:<b@y.test>\r\n")
    assert session.sender == "a@x.test"
    assert session.mail_params == {"BODY": "8BITMIME"}
    assert session.recipients == [("b@y.test", {})]
    assert session.in_transaction


# ----- command order (503) ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("before", "command", "expected"),
    [
        (b"", b"MAIL FROM:<a@x.test>", b"503 5.5.1 Error: send HELO/EHLO first\r\n"),
        (b"", b"RCPT TO:<a@x.test>", b"503 5.5.1 Error: send HELO/EHLO first\r\n"),
        (b"", b"DATA", b"503 5.5.1 Error: send HELO/EHLO first\r\n"),
        (b"EHLO c\r\n", b"RCPT TO:<a@x.test>", b"503 5.5.1 Error: need MAIL command\r\n"),
        (b"EHLO c\r\n", b"DATA", b"503 5.5.1 Error: need MAIL command\r\n"),
        (
            b"EHLO c\r\nMAIL FROM:<a@x.test>\r\n",
            b"DATA",
            b"503 5.5.1 Error: need RCPT command\r\n",
        ),
        (
            b"EHLO c\r\nMAIL FROM:<a@x.test>\r\n",
            b"MAIL FROM:<b@x.test>",
            b"503 5.5.1 Error: nested MAIL command\r\n",
        ),
        (
            b"EHLO c\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\n",
            b"MAIL FROM:<b@x.test>",
            b"503 5.5.1 Error: nested MAIL command\r\n",
        ),
    ],
)
def test_bad_sequence(
    session: ServerSession, before: bytes, command: bytes, expected: bytes
) -> None:
    run(session, before)
    t = run(session, command + b"\r\n")
    assert t.replies == [expected]
    assert t.events == []  # the command was not executed


def test_nested_mail_keeps_the_first_sender(session: ServerSession) -> None:
    run(greeted(session), b"MAIL FROM:<a@x.test>\r\nMAIL FROM:<evil@x.test>\r\n")
    assert session.sender == "a@x.test"


# ----- syntax (501) ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        b"MAIL FROM:a@x.test",
        b"MAIL FROM:<a@>",
        b"MAIL FROM:<@x.test>",
        b"MAIL FROM:<a@x..test>",
        b"MAIL FROM:<a b@x.test>",
        b"MAIL FROM:<a@x.test",
        b"MAIL TO:<a@x.test>",
        b"MAIL FROM:<a@x.test>junk",
        b"MAIL",
        b"MAIL FROM:<user>",
    ],
)
def test_bad_sender_syntax_is_501(session: ServerSession, command: bytes) -> None:
    t = run(greeted(session), command + b"\r\n")
    assert [code_of(r)[:5] for r in t.replies] == [b"501 5"]
    assert t.events == []
    assert session.sender is None


@pytest.mark.parametrize(
    "command",
    [b"RCPT TO:b@y.test", b"RCPT TO:<b@>", b"RCPT FROM:<b@y.test>", b"RCPT", b"RCPT TO:<a,b@y>"],
)
def test_bad_recipient_syntax_is_501(session: ServerSession, command: bytes) -> None:
    run(greeted(session), b"MAIL FROM:<a@x.test>\r\n")
    t = run(session, command + b"\r\n")
    assert [code_of(r)[:5] for r in t.replies] == [b"501 5"]
    assert t.events == []
    assert session.recipients == []


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        (b"EHLO", b"501 5.5.4"),
        (b"EHLO   ", b"501 5.5.4"),
        (b"HELO", b"501 5.5.4"),
        (b"RSET now", b"501 5.5.4"),
        (b"VRFY", b"501 5.5.4"),
    ],
)
def test_argument_syntax(session: ServerSession, command: bytes, expected: bytes) -> None:
    t = run(session, command + b"\r\n")
    assert code_of(t.replies[-1]) == expected
    assert session.state.value == "connected"


def test_data_with_argument_is_501_and_starts_no_data(session: ServerSession) -> None:
    run(greeted(session), b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\n")
    t = run(session, b"DATA now\r\nNOOP\r\n")
    assert t.replies == [b"501 5.5.4 Syntax: DATA\r\n", b"250 2.0.0 Ok\r\n"]
    assert t.events == []


def test_failed_ehlo_does_not_greet(session: ServerSession) -> None:
    t = run(session, b"EHLO\r\nMAIL FROM:<a@x.test>\r\n")
    assert [code_of(r) for r in t.replies[1:]] == [b"501 5.5.4", b"503 5.5.1"]


# ----- unknown and unimplemented -------------------------------------------------------------


@pytest.mark.parametrize("command", [b"FOO", b"MAIL:FROM", b"\x00\xff", b"HELLO x"])
def test_unknown_command_is_500(session: ServerSession, command: bytes) -> None:
    t = run(greeted(session), command + b"\r\n")
    assert t.replies == [b"500 5.5.2 Error: command not recognized\r\n"]


def test_empty_line_is_500(session: ServerSession) -> None:
    t = run(greeted(session), b"\r\n")
    assert [code_of(r) for r in t.replies] == [b"500 5.5.2"]


@pytest.mark.parametrize("command", [b"STARTTLS", b"AUTH PLAIN AGFAAGI=", b"EXPN staff", b"ETRN x"])
def test_unimplemented_command_is_502(session: ServerSession, command: bytes) -> None:
    t = run(greeted(session), command + b"\r\n")
    assert t.replies == [b"502 5.5.1 Error: command not implemented\r\n"]
    assert t.events == []


def test_bdat_payload_is_data_not_commands(session: ServerSession) -> None:
    # BDAT is offered (CHUNKING): its payload is the message, never a command
    # (test_session_bdat.py has the rest).
    t = run(greeted(session), TRANSACTION[:-6], b"BDAT 6 LAST\r\nNOOP\r\n")
    assert t.codes[-1:] == [250]
    assert t.data == b"NOOP\r\n"


# ----- line length ---------------------------------------------------------------------


def test_line_too_long(parser: ParserBackend) -> None:
    session = greeted(new_session(parser, max_line_length=512))
    t = run(session, b"NOOP " + b"x" * 600 + b"\r\nNOOP\r\n")
    assert t.replies == [b"500 5.5.2 Error: line too long\r\n", b"250 2.0.0 Ok\r\n"]


def test_line_at_the_limit_is_accepted(parser: ParserBackend) -> None:
    session = greeted(new_session(parser, max_line_length=512))
    line = b"NOOP " + b"x" * (512 - 7) + b"\r\n"
    assert len(line) == 512
    t = run(session, line, b"NOOP " + b"x" * (512 - 6) + b"\r\n")
    assert [code_of(r) for r in t.replies] == [b"250 2.0.0", b"500 5.5.2"]


def test_long_line_in_many_chunks_is_not_kept(parser: ParserBackend) -> None:
    session = greeted(new_session(parser, max_line_length=512))
    transcript = Transcript()
    session.receive_data(b"MAIL FROM:<")
    for _ in range(2000):  # 2 MB without a line end
        session.receive_data(b"a" * 1024)
        pump(session, transcript)
        assert session.buffered <= 512 + 1024
    collect(session, transcript)
    assert transcript.replies == []  # nothing is answered before the line ends
    t = run(session, b"a@x.test>\r\nMAIL FROM:<b@x.test>\r\n")
    assert [code_of(r) for r in t.replies] == [b"500 5.5.2", b"250 2.1.0"]
    assert t.of(MailFrom) == [MailFrom("b@x.test", {})]  # the long MAIL never ran
    assert session.errors == 1


def test_long_line_byte_by_byte_stays_bounded(parser: ParserBackend) -> None:
    session = greeted(new_session(parser, max_line_length=512))
    transcript = Transcript()
    for _ in range(3000):
        session.receive_data(b"z")
        pump(session, transcript)
        assert session.buffered <= 513
    t = run(session, b"\r\nQUIT\r\n")
    assert [code_of(r) for r in t.replies] == [b"500 5.5.2", b"221 2.0.0"]


# ----- bare CR / bare LF in commands ----------------------------------------------------------


@pytest.mark.parametrize(
    "line",
    [
        b"MAIL FROM:<a@x.test>\n",
        b"MAIL FROM:<a@x.test>\r\r\n",
        b"MAIL FROM:<a@x.test>\rNOOP\r\n",
        b"MAIL FROM:<a@x.test>\n\r\n",
        b"MAIL FROM:<a\r@x.test>\r\n",
        b"\n",
    ],
)
def test_bare_line_ending_in_command_is_refused(session: ServerSession, line: bytes) -> None:
    t = run(greeted(session), line, b"RCPT TO:<b@y.test>\r\n")
    assert code_of(t.replies[0]) == b"500 5.5.2"
    assert b"bare" in t.replies[0]
    assert t.of(MailFrom) == []  # the command was NOT executed
    assert code_of(t.replies[-1]) == b"503 5.5.1"  # so there is no transaction for RCPT


def test_bare_lf_quit_does_not_close(session: ServerSession) -> None:
    t = run(greeted(session), b"QUIT\nNOOP\r\n")
    assert [code_of(r) for r in t.replies] == [b"500 5.5.2", b"250 2.0.0"]
    assert not session.closing


# ----- sizes -------------------------------------------------------------------------------


def test_message_too_big_is_refused_after_the_terminator(parser: ParserBackend) -> None:
    session = greeted(new_session(parser, max_message_size=100))
    t = run(session, TRANSACTION, b"x" * 80 + b"\r\n", b"y" * 80 + b"\r\n")
    assert t.codes == [250, 250, 354]  # no reply before the end of the data
    assert not session.closing
    t2 = run(session, b".\r\nMAIL FROM:<c@x.test>\r\n")
    assert t2.replies[0] == b"552 5.3.4 Error: message file too big\r\n"
    assert t2.of(DataAborted) == [DataAborted("too_big")]
    assert t.of(DataEnd) == [] and t2.of(DataEnd) == []
    assert code_of(t2.replies[1]) == b"250 2.1.0"  # the session is ready for the next one
    kept = len(t.data) + len(t2.data)
    assert kept <= 100  # nothing past the limit is handed out


def test_message_exactly_at_the_limit_is_accepted(parser: ParserBackend) -> None:
    session = greeted(new_session(parser, max_message_size=100))
    body = b"x" * 98 + b"\r\n"
    t = run(session, TRANSACTION, body + b".\r\n")
    assert t.of(DataEnd) == [DataEnd(100)]
    assert t.data == body
    t = run(greeted(new_session(parser, max_message_size=100)), TRANSACTION, b"x" + body + b".\r\n")
    assert t.of(DataAborted) == [DataAborted("too_big")]


def test_size_parameter_above_limit_is_552_at_mail(parser: ParserBackend) -> None:
    session = greeted(new_session(parser, max_message_size=1000))
    t = run(session, b"MAIL FROM:<a@x.test> SIZE=1001\r\nMAIL FROM:<a@x.test> SIZE=1000\r\n")
    assert code_of(t.replies[0]) == b"552 5.3.4"
    assert t.of(MailFrom) == [MailFrom("a@x.test", {"SIZE": "1000"})]


@pytest.mark.parametrize("param", [b"SIZE", b"SIZE=", b"SIZE=abc", b"SIZE=-1", b"BODY=BINARYMIME"])
def test_bad_size_and_body_params(session: ServerSession, param: bytes) -> None:
    t = run(greeted(session), b"MAIL FROM:<a@x.test> " + param + b"\r\n")
    assert code_of(t.replies[0])[:5] in (b"501 5", b"555 5")
    assert t.of(MailFrom) == []


def test_too_many_recipients_is_452(parser: ParserBackend) -> None:
    session = greeted(new_session(parser, max_recipients=2))
    rcpts = b"".join(b"RCPT TO:<r%d@y.test>\r\n" % i for i in range(3))
    t = run(session, b"MAIL FROM:<a@x.test>\r\n" + rcpts + b"DATA\r\n.\r\n")
    assert t.codes == [250, 250, 250, 452, 354, 250]
    assert code_of(t.replies[3]) == b"452 4.5.3"
    assert len(t.of(RcptTo)) == 2


# ----- addresses -------------------------------------------------------------------------


def test_null_sender_is_accepted(session: ServerSession) -> None:
    t = run(greeted(session), b"MAIL FROM:<>\r\n")
    assert t.of(MailFrom) == [MailFrom("", {})]
    assert code_of(t.replies[0]) == b"250 2.1.0"


def test_null_recipient_is_refused(session: ServerSession) -> None:
    t = run(greeted(session), b"MAIL FROM:<>\r\nRCPT TO:<>\r\n")
    assert code_of(t.replies[1]) == b"501 5.1.3"
    assert t.of(RcptTo) == []


@pytest.mark.parametrize("name", [b"postmaster", b"Postmaster", b"POSTMASTER"])
def test_postmaster_without_domain_is_accepted(session: ServerSession, name: bytes) -> None:
    t = run(greeted(session), b"MAIL FROM:<a@x.test>\r\nRCPT TO:<" + name + b">\r\n")
    assert t.of(RcptTo) == [RcptTo(name.decode(), {})]
    assert code_of(t.replies[1]) == b"250 2.1.5"


def test_source_route_is_dropped(session: ServerSession) -> None:
    t = run(greeted(session), b"MAIL FROM:<a@x.test>\r\nRCPT TO:<@r.test:b@y.test>\r\n")
    assert t.of(RcptTo) == [RcptTo("b@y.test", {})]


def test_rcpt_parameters_other_than_dsn_are_unsupported(session: ServerSession) -> None:
    t = run(greeted(session), b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test> FOO=BAR\r\n")
    assert code_of(t.replies[1]) == b"555 5.5.4"
    assert t.of(RcptTo) == []


@pytest.mark.parametrize("param", [b"FOO=bar", b"AUTH=<>", b"SMTPUTF8=yes"])
def test_unsupported_mail_parameters_are_555(session: ServerSession, param: bytes) -> None:
    t = run(greeted(session), b"MAIL FROM:<a@x.test> " + param + b"\r\n")
    assert t.replies == [b"555 5.5.4 Unsupported option\r\n"]
    assert t.of(MailFrom) == []


def test_supported_mail_parameters(session: ServerSession) -> None:
    t = run(greeted(session), b"MAIL FROM:<a@x.test> SIZE=10 BODY=8BITMIME SMTPUTF8\r\n")
    assert t.of(MailFrom) == [
        MailFrom("a@x.test", {"SIZE": "10", "BODY": "8BITMIME", "SMTPUTF8": None})
    ]


# ----- SMTPUTF8 (RFC 6531) ------------------------------------------------------------------

UTF8_SENDER = "jörg@bücher.test".encode()
UTF8_RECIPIENT = "δοκιμή@παράδειγμα.test".encode()


def test_utf8_sender_needs_smtputf8(session: ServerSession) -> None:
    t = run(greeted(session), b"MAIL FROM:<" + UTF8_SENDER + b">\r\n")
    assert t.replies == [b"553 5.6.7 Address needs SMTPUTF8\r\n"]
    assert t.of(MailFrom) == []


def test_utf8_recipient_needs_smtputf8(session: ServerSession) -> None:
    t = run(greeted(session), b"MAIL FROM:<a@x.test>\r\nRCPT TO:<" + UTF8_RECIPIENT + b">\r\n")
    assert code_of(t.replies[1]) == b"553 5.6.7"
    assert t.of(RcptTo) == []


def test_utf8_addresses_with_smtputf8(session: ServerSession) -> None:
    t = run(
        greeted(session),
        b"MAIL FROM:<" + UTF8_SENDER + b"> SMTPUTF8\r\nRCPT TO:<" + UTF8_RECIPIENT + b">\r\n",
    )
    assert t.of(MailFrom) == [MailFrom("jörg@bücher.test", {"SMTPUTF8": None})]
    assert t.of(RcptTo) == [RcptTo("δοκιμή@παράδειγμα.test", {})]
    assert t.codes == [250, 250]


def test_invalid_utf8_address_is_501(session: ServerSession) -> None:
    t = run(greeted(session), b"MAIL FROM:<j\xf6rg@x.test> SMTPUTF8\r\n")
    assert code_of(t.replies[0])[:5] == b"501 5"


# ----- error budget, timeout, shutdown, QUIT ------------------------------------------------


def test_too_many_errors_close_the_session(parser: ParserBackend) -> None:
    session = greeted(new_session(parser, max_errors=3))
    t = run(session, b"FOO\r\nRCPT TO:<b@y.test>\r\nBAR\r\nNOOP\r\n")
    assert [code_of(r) for r in t.replies] == [
        b"500 5.5.2",
        b"503 5.5.1",
        b"500 5.5.2",
        b"421 4.7.0",
    ]
    assert session.closing
    later = run(session, b"NOOP\r\nEHLO c\r\n")
    assert later.replies == [] and later.events == []
    assert session.buffered == 0


def test_rejected_decisions_count_as_errors(parser: ParserBackend) -> None:
    session = greeted(new_session(parser, max_errors=2))
    session.receive_data(b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nRCPT TO:<c@y.test>\r\n")
    while (event := session.next_event()) is not None:
        if isinstance(event, RcptTo):
            session.reject(replies.RELAY_DENIED)
        else:
            session.accept()
    out = split_replies(session.data_to_send())
    assert [code_of(r) for r in out] == [b"250 2.1.0", b"554 5.7.1", b"554 5.7.1", b"421 4.7.0"]
    assert session.closing


def test_timeout_says_421_and_closes(session: ServerSession) -> None:
    run(greeted(session), b"MAIL FROM:<a@x.test>\r\n")
    session.timeout()
    assert session.closing
    t = run(session, b"RCPT TO:<b@y.test>\r\n")
    assert t.replies == [b"421 4.4.2 mx.test Error: timeout exceeded\r\n"]
    assert t.events == []


def test_shutdown_when_idle_closes_at_once(session: ServerSession) -> None:
    greeted(session)
    session.request_shutdown()
    assert session.closing
    t = run(session, b"MAIL FROM:<a@x.test>\r\n")
    assert [code_of(r) for r in t.replies] == [b"421 4.3.2"]
    assert t.events == []


def test_shutdown_before_ehlo_closes_at_once(session: ServerSession) -> None:
    session.request_shutdown()
    t = run(session, b"EHLO c\r\n")
    assert [r[:3] for r in t.replies] == [b"220", b"421"]
    assert session.closing


def test_shutdown_during_transaction_lets_it_finish(session: ServerSession) -> None:
    run(greeted(session), TRANSACTION)
    session.request_shutdown()
    assert not session.closing
    assert session.data_to_send() == b""
    t = run(session, b"body\r\n.\r\nMAIL FROM:<again@x.test>\r\n")
    assert t.of(DataEnd) == [DataEnd(6)]
    assert [code_of(r) for r in t.replies] == [b"250 2.0.0", b"421 4.3.2"]
    assert t.of(MailFrom) == []
    assert session.closing


def test_shutdown_while_message_is_committing(session: ServerSession) -> None:
    t = run(greeted(session), TRANSACTION, b"body\r\n.\r\n", accept_end=False)
    assert t.of(DataEnd)
    session.request_shutdown()
    assert not session.closing
    session.accept(replies.queued("Q1"))
    out = split_replies(session.data_to_send())
    assert [code_of(r) for r in out] == [b"250 2.0.0", b"421 4.3.2"]
    assert session.closing


def test_quit_says_221_and_ignores_the_rest(session: ServerSession) -> None:
    t = run(greeted(session), b"QUIT\r\nNOOP\r\nMAIL FROM:<a@x.test>\r\n")
    assert t.replies == [b"221 2.0.0 mx.test Bye\r\n"]
    assert session.closing
    assert t.events == []


# ----- RSET, VRFY, HELP, NOOP --------------------------------------------------------------


def test_rset_resets_the_transaction(session: ServerSession) -> None:
    t = run(greeted(session), b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nRSET\r\n")
    assert t.events[-1] == TransactionReset()
    assert t.replies[-1] == b"250 2.0.0 Ok\r\n"
    assert session.sender is None and session.recipients == []
    t = run(session, b"RCPT TO:<b@y.test>\r\nDATA\r\nMAIL FROM:<c@x.test>\r\n")
    assert [code_of(r) for r in t.replies] == [b"503 5.5.1", b"503 5.5.1", b"250 2.1.0"]


def test_rset_without_transaction_emits_nothing(session: ServerSession) -> None:
    t = run(greeted(session), b"RSET\r\n")
    assert t.events == []
    assert t.codes == [250]


def test_ehlo_in_a_transaction_resets_it(session: ServerSession) -> None:
    t = run(greeted(session), b"MAIL FROM:<a@x.test>\r\nEHLO again\r\nRCPT TO:<b@y.test>\r\n")
    assert TransactionReset() in t.events
    assert code_of(t.replies[-1]) == b"503 5.5.1"


def test_vrfy_help_noop(session: ServerSession) -> None:
    t = run(greeted(session), b"VRFY user\r\nHELP\r\nNOOP\r\n")
    assert [code_of(r) for r in t.replies] == [b"252 2.0.0", b"214 2.0.0", b"250 2.0.0"]
    assert session.errors == 0


# ----- PIPELINING (RFC 2920) ----------------------------------------------------------------


def test_pipelined_batch_is_answered_in_order_in_one_write(session: ServerSession) -> None:
    session.data_to_send()  # the greeting
    session.receive_data(
        b"EHLO c\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nRCPT TO:<c@y.test>\r\nDATA\r\n"
    )
    transcript = Transcript()
    pump(session, transcript)
    out = session.data_to_send()
    got = split_replies(out)
    assert got[0].startswith(b"250-mx.test\r\n")
    assert got[1:] == [
        b"250 2.1.0 Ok\r\n",
        b"250 2.1.5 Ok\r\n",
        b"250 2.1.5 Ok\r\n",
        b"354 End data with <CR><LF>.<CR><LF>\r\n",
    ]
    assert [type(e) for e in transcript.events] == [MailFrom, RcptTo, RcptTo, DataStart]


def test_decision_holds_back_the_rest_of_the_batch(session: ServerSession) -> None:
    session.data_to_send()
    session.receive_data(b"EHLO c\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nNOOP\r\n")
    assert session.next_event() == MailFrom("a@x.test", {})
    # Nothing after the MAIL decision is answered until it is made.
    out = session.data_to_send()
    assert out.startswith(b"250-mx.test")
    assert session.waiting
    assert session.next_event() is None
    assert session.data_to_send() == b""
    session.reject(replies.reply(550, "5.7.1 sender refused"))
    assert session.next_event() is None  # RCPT now has no transaction: 503, then NOOP 250
    got = split_replies(session.data_to_send())
    assert [code_of(r) for r in got] == [b"550 5.7.1", b"503 5.5.1", b"250 2.0.0"]


def test_batch_after_message_end_waits_for_the_commit(session: ServerSession) -> None:
    run(greeted(session), TRANSACTION)
    session.receive_data(b"hello\r\n.\r\nMAIL FROM:<b@x.test>\r\nRCPT TO:<c@y.test>\r\n")
    events = []
    while (event := session.next_event()) is not None:
        events.append(event)
    assert events == [DataChunk(b"hello\r\n"), DataEnd(7)]
    assert session.waiting
    assert session.data_to_send() == b""  # nothing of the next command is answered
    assert session.next_event() is None
    assert session.data_to_send() == b""
    assert session.buffered == len(b"MAIL FROM:<b@x.test>\r\nRCPT TO:<c@y.test>\r\n")
    session.accept(replies.queued("Q1"))
    assert session.next_event() == MailFrom("b@x.test", {})
    session.accept()
    assert session.next_event() == RcptTo("c@y.test", {})
    session.accept()
    got = split_replies(session.data_to_send())
    assert got == [
        b"250 2.0.0 Ok: queued as Q1\r\n",
        b"250 2.1.0 Ok\r\n",
        b"250 2.1.5 Ok\r\n",
    ]


def test_rejected_message_end_then_next_batch(session: ServerSession) -> None:
    run(greeted(session), TRANSACTION)
    session.receive_data(b"x\r\n.\r\nMAIL FROM:<b@x.test>\r\n")
    while session.next_event() is not None:
        pass
    session.reject(replies.LOCAL_ERROR)
    assert session.next_event() == MailFrom("b@x.test", {})
    session.accept()
    got = split_replies(session.data_to_send())
    assert [code_of(r) for r in got] == [b"451 4.3.0", b"250 2.1.0"]


def test_api_misuse_raises(session: ServerSession) -> None:
    with pytest.raises(SessionUsageError):
        session.accept()
    with pytest.raises(SessionUsageError):
        session.reject(replies.LOCAL_ERROR)
    run(greeted(session), TRANSACTION)
    session.receive_data(b"x\r\n.\r\n")
    while session.next_event() is not None:
        pass
    with pytest.raises(SessionUsageError):
        session.accept()  # a message end needs the reply with the queue id


# ----- DATA streaming ------------------------------------------------------------------

MESSAGE_WIRE = (
    b"Subject: test\r\n"
    b"\r\n"
    b"..leading dot\r\n"
    b".\tdot tab\r\n"
    b"...\r\n"
    b"a.b\r\n"
    b"..\r\n"
    b"\xc3\xa9t\xc3\xa9 8bit\r\n"
    b"last\r\n"
    b".\r\n"
)
MESSAGE_DECODED = (
    b"Subject: test\r\n"
    b"\r\n"
    b".leading dot\r\n"
    b"\tdot tab\r\n"
    b"..\r\n"
    b"a.b\r\n"
    b".\r\n"
    b"\xc3\xa9t\xc3\xa9 8bit\r\n"
    b"last\r\n"
)
WHOLE = b"EHLO c\r\n" + TRANSACTION + MESSAGE_WIRE + b"NOOP\r\n"


def without_chunks(events: list[Event]) -> list[Event]:
    return [e for e in events if not isinstance(e, DataChunk)]


def test_dot_unstuffing(session: ServerSession) -> None:
    t = run(session, WHOLE)
    assert t.data == MESSAGE_DECODED
    assert t.of(DataEnd) == [DataEnd(len(MESSAGE_DECODED))]
    assert t.codes == [220, 250, 250, 250, 354, 250, 250]


def test_empty_message(session: ServerSession) -> None:
    t = run(greeted(session), TRANSACTION, b".\r\n")
    assert t.data == b""
    assert t.of(DataEnd) == [DataEnd(0)]


def test_every_split_gives_the_same_result(parser: ParserBackend) -> None:
    reference = run(new_session(parser), WHOLE)
    assert reference.data == MESSAGE_DECODED
    for cut in range(1, len(WHOLE)):
        t = run(new_session(parser), WHOLE[:cut], WHOLE[cut:])
        assert t.data == MESSAGE_DECODED, cut
        assert t.replies == reference.replies, cut
        assert without_chunks(t.events) == without_chunks(reference.events), cut


def test_byte_by_byte_gives_the_same_result(parser: ParserBackend) -> None:
    reference = run(new_session(parser), WHOLE)
    t = run(new_session(parser), *(WHOLE[i : i + 1] for i in range(len(WHOLE))))
    assert t.data == MESSAGE_DECODED
    assert t.replies == reference.replies
    assert without_chunks(t.events) == without_chunks(reference.events)


def test_every_three_way_split_of_the_data(parser: ParserBackend) -> None:
    head = b"EHLO c\r\n" + TRANSACTION
    body = MESSAGE_WIRE
    for i in range(len(body)):
        for j in range(i, len(body), 7):
            t = run(new_session(parser), head + body[:i], body[i:j], body[j:])
            assert t.data == MESSAGE_DECODED, (i, j)
            assert t.of(DataEnd) == [DataEnd(len(MESSAGE_DECODED))]


def test_big_message_is_streamed_in_chunks(parser: ParserBackend) -> None:
    session = greeted(new_session(parser, max_message_size=10_000_000))
    run(session, TRANSACTION)
    line = b"x" * 998 + b"\r\n"
    transcript = Transcript()
    for _ in range(1000):
        session.receive_data(line * 4)
        pump(session, transcript)
        assert session.buffered == 0  # handed out at once, never accumulated
    t = run(session, b".\r\n")
    assert len(transcript.of(DataChunk)) >= 1000
    assert transcript.data == line * 4000
    assert t.of(DataEnd) == [DataEnd(4_000_000)]


# ----- smuggling ----------------------------------------------------------------------------

SMUGGLE_ENDINGS = [b"\n.\n", b"\r.\r", b"\r\n.\n", b"\n.\r\n"]
SMUGGLED = b"MAIL FROM:<evil@x>\r\nRCPT TO:<v@y>\r\nDATA\r\nevil body\r\n"
NORMALIZED = {
    b"\n.\n": b"\r\n.\r\n",
    b"\r.\r": b"\r\n.\r\n",
    b"\r\n.\n": b"\r\n\r\n",  # the dot after a real CRLF is a stuffing dot: removed
    b"\n.\r\n": b"\r\n.\r\n",
}


def smuggling_input(ending: bytes) -> bytes:
    return (
        b"EHLO c\r\n"
        + TRANSACTION
        + b"Subject: hi\r\n\r\nreal body"
        + ending
        + SMUGGLED
        + b".\r\nQUIT\r\n"
    )


def assert_one_transaction(t: Transcript) -> None:
    """No second MAIL FROM before the real end of the data."""
    mails = [i for i, e in enumerate(t.events) if isinstance(e, MailFrom)]
    ends = [i for i, e in enumerate(t.events) if isinstance(e, (DataEnd, DataAborted))]
    assert len(mails) == 1 and len(ends) == 1
    assert mails[0] < ends[0]
    assert all(getattr(e, "sender", "") != "evil@x" for e in t.events)
    assert len(t.of(RcptTo)) == 1 and len(t.of(DataStart)) == 1


@pytest.mark.parametrize("ending", SMUGGLE_ENDINGS)
def test_smuggling_is_refused_by_default(parser: ParserBackend, ending: bytes) -> None:
    data = smuggling_input(ending)
    for chunks in ([data], [data[i : i + 1] for i in range(len(data))]):
        session = new_session(parser)
        t = run(session, *chunks)
        assert_one_transaction(t)
        assert t.of(DataAborted) == [DataAborted("bare_line_ending")]
        assert t.of(DataEnd) == []
        assert [code_of(r) for r in t.replies[-2:]] == [b"550 5.5.2", b"221 2.0.0"]
        assert b"bare" in t.replies[-2]
        assert t.codes.count(354) == 1


@pytest.mark.parametrize("ending", SMUGGLE_ENDINGS)
def test_smuggling_is_normalized_when_configured(parser: ParserBackend, ending: bytes) -> None:
    data = smuggling_input(ending)
    expected = b"Subject: hi\r\n\r\nreal body" + NORMALIZED[ending] + SMUGGLED
    for chunks in ([data], [data[i : i + 1] for i in range(len(data))]):
        session = new_session(parser, normalize_bare_line_endings=True)
        t = run(session, *chunks)
        assert_one_transaction(t)
        assert t.data == expected
        assert t.of(DataEnd) == [DataEnd(len(expected))]
        assert [code_of(r) for r in t.replies[-2:]] == [b"250 2.0.0", b"221 2.0.0"]
        assert re.search(rb"\r(?!\n)|(?<!\r)\n", t.data) is None  # only CRLF remains


def test_dot_after_bare_lf_does_not_end_data(session: ServerSession) -> None:
    t = run(greeted(session), TRANSACTION, b"a\n.\r\n")
    assert t.of(DataEnd) == [] and t.of(DataAborted) == []
    assert t.codes == [250, 250, 354]
    assert session.state.value == "data"  # still reading the message
    t = run(session, b".\r\n")
    assert t.of(DataAborted) == [DataAborted("bare_line_ending")]


def test_bare_cr_in_data_is_refused(session: ServerSession) -> None:
    t = run(greeted(session), TRANSACTION, b"a\rb\r\n.\r\nNOOP\r\n")
    assert t.of(DataAborted) == [DataAborted("bare_line_ending")]
    assert [code_of(r) for r in t.replies[-2:]] == [b"550 5.5.2", b"250 2.0.0"]
    assert not session.in_transaction


# ----- NUL: in DATA and in commands ---------------------------------------------------------

NUL_STRIPPED = {
    b"\r\n\x00.\r\n": b"\r\n.\r\n",  # the probe's vector: a line "." after stripping
    b"\r\n\x00\x00.\r\n": b"\r\n.\r\n",
    b"\r\n.\x00\r\n": b"\r\n\r\n",  # the dot at a real line start is a stuffing dot
}
NUL_ENDINGS = list(NUL_STRIPPED)


@pytest.mark.parametrize("ending", NUL_ENDINGS)
def test_nul_smuggling_is_refused_by_default(parser: ParserBackend, ending: bytes) -> None:
    """A next hop that drops NULs would see CRLF.CRLF and a second message; we refuse."""
    data = smuggling_input(ending)
    for chunks in ([data], [data[i : i + 1] for i in range(len(data))]):
        session = new_session(parser)
        t = run(session, *chunks)
        assert_one_transaction(t)
        assert t.of(DataAborted) == [DataAborted("nul")]
        assert t.of(DataEnd) == []
        assert [code_of(r) for r in t.replies[-2:]] == [b"550 5.5.2", b"221 2.0.0"]
        assert b"NUL" in t.replies[-2]


@pytest.mark.parametrize("ending", NUL_ENDINGS)
def test_nul_is_stripped_when_configured(parser: ParserBackend, ending: bytes) -> None:
    data = smuggling_input(ending)
    expected = b"Subject: hi\r\n\r\nreal body" + NUL_STRIPPED[ending] + SMUGGLED
    for chunks in ([data], [data[i : i + 1] for i in range(len(data))]):
        session = new_session(parser, strip_nul=True)
        t = run(session, *chunks)
        assert_one_transaction(t)  # the stripped line "." is text, dot-stuffed when sent on
        assert t.data == expected
        assert t.of(DataEnd) == [DataEnd(len(expected))]
        assert [code_of(r) for r in t.replies[-2:]] == [b"250 2.0.0", b"221 2.0.0"]


def test_nul_and_bare_lf_each_need_their_own_setting(parser: ParserBackend) -> None:
    body = b"a\x00b\nc\r\n.\r\n"
    for overrides, reason in [
        ({"strip_nul": True}, "bare_line_ending"),
        ({"normalize_bare_line_endings": True}, "nul"),
    ]:
        session = greeted(new_session(parser, **overrides))
        t = run(session, TRANSACTION, body)
        assert t.of(DataAborted) == [DataAborted(reason)]
    session = greeted(new_session(parser, strip_nul=True, normalize_bare_line_endings=True))
    t = run(session, TRANSACTION, body)
    assert t.data == b"ab\r\nc\r\n"


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b"MAIL FROM:<a\x00@x.test>", b"501 5.5.2"),
        (b"MAIL FROM:<a@x.test>\x00", b"501 5.5.2"),
        (b"EHLO c\x00.test", b"501 5.5.2"),
        (b"NOOP \x00", b"501 5.5.2"),
        (b"VRFY \x00", b"501 5.5.2"),
    ],
)
def test_nul_in_a_command_is_refused(session: ServerSession, line: bytes, expected: bytes) -> None:
    t = run(greeted(session), line + b"\r\n", b"NOOP\r\n")
    assert [code_of(r) for r in t.replies] == [expected, b"250 2.0.0"]
    assert t.of(MailFrom) == [] and t.of(RcptTo) == []


# ----- HELO/EHLO names that are unsafe to copy into headers and logs -------------------------


@pytest.mark.parametrize("verb", [b"EHLO", b"HELO"])
@pytest.mark.parametrize(
    "name",
    [
        b"a\x00b.test",
        b"a\x1b[31mb.test",
        b"a\x7fb.test",
        b"a\tb.test",
        b"a\x0bb.test",
        "a\u0085b.test".encode(),  # NEL, a C1 control, in UTF-8
        "a\u2028b.test".encode(),  # LINE SEPARATOR
        b"x" * 256,
        b"x\x00\x1b\x7f" + b"y" * 1900,  # the probe's name
    ],
    ids=["nul", "esc", "del", "tab", "vt", "nel", "u2028", "256", "probe"],
)
def test_unsafe_helo_is_refused(parser: ParserBackend, verb: bytes, name: bytes) -> None:
    session = new_session(parser)
    t = run(session, verb + b" " + name + b"\r\n", b"MAIL FROM:<a@x.test>\r\n")
    assert [code_of(r) for r in t.replies[1:]] == [b"501 5.5.2", b"503 5.5.1"]
    assert session.helo == "" and session.state.value == "connected"
    assert name not in t.replies[1]  # the name is not echoed


@pytest.mark.parametrize(
    "name",
    [b"x" * 255, b"[192.0.2.1]", b"[IPv6:2001:db8::1]", "b\u00fccher.test".encode(), b"\xff"],
)
def test_only_unsafe_helo_is_refused(parser: ParserBackend, name: bytes) -> None:
    """The limit is the unsafe, not the unusual: the same name with one control character
    added, or one octet too long, is refused."""
    session = greeted(new_session(parser), b"EHLO " + name + b"\r\n")
    assert session.helo == name.decode("utf-8", "replace")
    worse = name + b"x" if len(name) == 255 else name + b"\x1b"
    t = run(session, b"EHLO " + worse + b"\r\n")
    assert [code_of(r) for r in t.replies] == [b"501 5.5.2"]
    assert session.helo == name.decode("utf-8", "replace")  # the earlier name stands


# ----- every reply has an enhanced status code ----------------------------------------------


def test_every_reply_of_a_busy_session_has_an_enhanced_code(parser: ParserBackend) -> None:
    session = new_session(parser, max_errors=100, max_recipients=1, max_message_size=10)
    t = run(
        session,
        b"MAIL FROM:<a@x.test>\r\nEHLO c\r\nFOO\r\nSTARTTLS\r\nVRFY x\r\nHELP\r\nNOOP\r\n",
        b"MAIL FROM:<a@x.test> SIZE=99\r\nMAIL FROM:<a@x.test> X=1\r\nMAIL FROM:<bad>\r\n",
        b"MAIL FROM:<a@x.test>\r\nRCPT TO:<>\r\nRCPT TO:<b@y.test>\r\nRCPT TO:<c@y.test>\r\n",
        b"DATA x\r\nDATA\r\n" + b"z" * 20 + b"\r\n.\r\n",
        b"RSET x\r\nRSET\r\nQUIT\r\n",
    )
    assert len(t.replies) >= 20  # run() checked each of them
    assert {r[:1] for r in t.replies} == {b"2", b"3", b"4", b"5"}
