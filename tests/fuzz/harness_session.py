"""Fuzz harness ``session``: the server session, every decision answered by the fuzzer.

Input layout (a seed is a six-octet header and then a client's transcript)::

    flags(2, little-endian)  answers(2)  chunk lengths(2)  transcript...

``flags`` choose the listener's rules and the limits (:data:`FLAGS`); bit *i* of
``answers`` (cycled) says whether the *i*-th decision is accepted or rejected; the two chunk
lengths, cycled, cut the transcript (0: the rest at once).  The limits are those of a
default configuration (``mta.server.context.session_limits``), with the flags applied.

A session is run on every backend under test; their events and replies must be the same.
Checked on the way, for every batch of output and every event (:class:`Checker`): nothing
raises, each reply is well formed (three digits, ``-`` or space, CRLF, at most 512 octets a
line, one code per multi-line reply, an enhanced status code where RFC 2034 asks for one),
nothing follows ``221``/``421``, decision events leave the session waiting, message text
flows only between an accepted DATA (or first BDAT chunk) and its end, an accepted message
is no bigger than the limit and holds no bare line end or NUL, recipients stay within the
limit, and neither STARTTLS nor AUTH is offered where it must not be.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from mta.config import Config
from mta.protocol import replies
from mta.protocol.events import (
    AuthRequest,
    DataAborted,
    DataChunk,
    DataEnd,
    DataStart,
    Event,
    MailFrom,
    RcptTo,
    StartTls,
    TransactionReset,
)
from mta.protocol.session import ServerSession, SessionLimits, State
from mta.server.context import session_limits
from tests.fuzz.registry import SMTP_TOKENS, backends, harness

BACKENDS = backends()
HOST = "mx.fuzz.test"
DEFAULT_LIMITS = session_limits(Config(hostname=HOST))
HEADER = 6
# Flag bits: SessionLimits fields switched on, then the harness's own.
FLAGS = (
    "starttls",
    "require_tls",
    "auth",
    "auth_plaintext",
    "require_auth",
    "normalize_bare_line_endings",
    "strip_nul",
)
SMALL_LIMITS = 1 << 7  # limits small enough for the fuzzer to reach them
SHUTDOWN = 1 << 8  # request_shutdown() after the chunk numbered by bits 12-15
TIMEOUT = 1 << 9  # timeout() after the last chunk
TEMPORARY = 1 << 10  # rejections are 4xx instead of 5xx
REFUSE = 1 << 11  # the connection is refused (421) instead of greeted

ACCEPT_REPLIES = {"end": replies.queued("QID")}  # the others take the session's own reply
REJECT_REPLIES = {
    "mail": (replies.INSUFFICIENT_STORAGE, replies.reply(550, "5.7.1 Sender rejected")),
    "rcpt": (replies.reply(450, "4.7.1 Try later"), replies.RELAY_DENIED),
    "data": (replies.reply(451, "4.3.0 Not now"), replies.reply(554, "5.5.1 No valid rcpt")),
    "end": (replies.LOCAL_ERROR, replies.reply(554, "5.7.1 Message rejected")),
    "starttls": (replies.TLS_UNAVAILABLE, replies.TLS_UNAVAILABLE),
    "auth": (replies.reply(454, "4.7.0 Temporary authentication failure"), replies.AUTH_FAILED),
}
OTHER_REJECTION = (replies.reply(454, "4.7.0 Not now"), replies.reply(554, "5.7.1 Refused"))
DECISION_EVENTS = (MailFrom, RcptTo, DataStart, DataEnd, StartTls, AuthRequest)

_LINE = re.compile(rb"(\d{3})([ -])([^\r\n]*)\r\n")
_ENHANCED = re.compile(rb"([245])\.\d{1,3}\.\d{1,3}( |$)")
CLOSING_CODES = (b"221", b"421")


def limits_for(flags: int) -> SessionLimits:
    on = {name: bool(flags & (1 << bit)) for bit, name in enumerate(FLAGS)}
    limits = dataclasses.replace(DEFAULT_LIMITS, **on)
    if flags & SMALL_LIMITS:
        small = {"max_message_size": 64, "max_recipients": 2, "max_line_length": 40}
        limits = dataclasses.replace(limits, max_errors=3, **small)
    return limits


def cut(transcript: bytes, lengths: bytes) -> list[bytes]:
    chunks, start, i = [], 0, 0
    while start < len(transcript):
        length = lengths[i % len(lengths)] or len(transcript)
        chunks.append(transcript[start : start + length])
        start += length
        i += 1
    return chunks


@dataclass
class Checker:
    """The invariants of one session, checked as it runs (see the module docstring)."""

    session: ServerSession
    limits: SessionLimits
    closed: bool = False
    in_data: bool = False
    message: bytearray = field(default_factory=bytearray)
    recipients: int = 0
    greeted: bool = False
    ehlo_expected: int = 0  # replies to HELO/EHLO carry no enhanced status code

    def output(self, data: bytes) -> None:
        if self.closed:
            assert not data, f"sent after closing: {data!r}"
            return
        pos = 0
        while pos < len(data):
            pos = self._reply(data, pos)

    def _reply(self, data: bytes, pos: int) -> int:
        """Check the reply at ``pos`` (all its lines); return where the next one starts."""
        first: bytes | None = None
        while True:
            line = _LINE.match(data, pos)
            assert line, f"malformed reply at {pos}: {data!r}"
            assert line.end() - pos <= 512, f"reply line over 512 octets: {data!r}"
            code, more, text = line.groups()
            assert first is None or code == first, f"codes differ in one reply: {data!r}"
            if first is None:
                self._first_line(code, text, data)
            first, pos = code, line.end()
            if more == b" ":
                break
        if first in CLOSING_CODES:
            assert pos == len(data), f"a reply after {first!r}: {data!r}"
            assert self.session.closing, "221/421 sent but the session stays open"
            self.closed = True
        return pos

    def _first_line(self, code: bytes, text: bytes, data: bytes) -> None:
        if not self.greeted:
            self.greeted = True
            assert code in (b"220", b"421", b"554"), data
            return
        if code[0] in b"3":
            return  # 354 and AUTH's 334: no enhanced status code (RFC 2034 §3, RFC 4954)
        if code == b"250" and text == HOST.encode():
            return  # the reply to HELO/EHLO names the host instead
        enhanced = _ENHANCED.match(text)
        assert enhanced and enhanced.group(1) == code[:1], f"no enhanced status: {data!r}"

    def event(self, event: Event) -> None:
        session = self.session
        assert not self.closed, f"event after closing: {event!r}"
        if isinstance(event, DECISION_EVENTS):
            assert session.waiting, f"decision event without a pending decision: {event!r}"
        if isinstance(event, MailFrom):
            assert session.state is State.READY and not self.in_data
            # the listener's rules (RFC 3207 §4, RFC 4954): no MAIL before TLS or AUTH
            if self.limits.require_tls:
                assert session.tls, "MAIL asked for a decision without TLS"
            if self.limits.require_auth:
                assert session.authenticated, "MAIL asked for a decision without AUTH"
        elif isinstance(event, AuthRequest):
            assert session.authenticated is None, "a second AUTH"
            assert session.state is State.READY, "AUTH outside READY"
            assert session.tls or self.limits.auth_plaintext, "AUTH without TLS"
        elif isinstance(event, RcptTo):
            assert session.state in (State.MAIL, State.RCPT)
            assert self.recipients < self.limits.max_recipients
        elif isinstance(event, DataChunk):
            assert self.in_data and event.data, event
            self.message += event.data
        elif isinstance(event, DataEnd):
            self._message_end(event)
        elif isinstance(event, DataAborted):
            assert self.in_data, event
            self.in_data = False
        elif isinstance(event, TransactionReset):  # RSET or EHLO between BDAT chunks
            self.in_data = False

    def _message_end(self, event: DataEnd) -> None:
        assert self.in_data, event
        self.in_data = False
        message = bytes(self.message)
        assert event.size == len(message) <= self.limits.max_message_size, event
        assert b"\x00" not in message, message
        assert b"\r" not in message.replace(b"\r\n", b""), message
        assert b"\n" not in message.replace(b"\r\n", b""), message

    def answered(self, decision: str, accepted: bool) -> None:
        if decision == "data" and accepted:
            self.in_data = True
            self.message.clear()
        elif decision == "rcpt" and accepted:
            self.recipients += 1
        elif decision == "mail":
            self.recipients = 0
        elif decision == "starttls" and accepted:
            assert self.session.tls and self.session.state is State.CONNECTED
        elif decision == "auth":
            assert (self.session.authenticated is not None) == accepted

    def ehlo_keywords(self, data: bytes) -> None:
        """STARTTLS only when offered and not yet in TLS; AUTH only under TLS or where
        plaintext AUTH is allowed (RFC 4954 §4, the issue's "AUTH only over TLS")."""
        if not data.startswith(b"250-" + HOST.encode()):
            return
        keywords = {line[4:].split(b" ")[0].upper() for line in data.split(b"\r\n")[1:]}
        tls, limits = self.session.tls, self.limits
        if b"STARTTLS" in keywords:
            assert limits.starttls and not tls, data
        if b"AUTH" in keywords:
            assert limits.auth and (tls or limits.auth_plaintext), data

    def finish(self) -> None:
        session = self.session
        assert len(session.recipients) <= self.limits.max_recipients
        assert session.errors < self.limits.max_errors or session.closing
        if session.closing:
            assert self.closed, "closing without a 221/421"


def run(parser: Any, flags: int, answers: int, chunks: list[bytes]) -> list[Any]:
    """One session; the transcript of events and output, for comparing backends."""
    limits = limits_for(flags)
    session = ServerSession(limits, parser, greet=False)
    if flags & REFUSE:
        session.refuse(replies.too_many_connections(HOST))
    else:
        session.greet()
    checker = Checker(session, limits)
    log: list[Any] = []
    decisions = 0

    def flush() -> None:
        out = session.data_to_send()
        checker.output(out)
        checker.ehlo_keywords(out)
        if out:
            log.append(out)

    flush()
    for index, chunk in enumerate(chunks):
        session.receive_data(chunk)
        while (event := session.next_event()) is not None or session.waiting:
            if event is not None:
                checker.event(event)
                log.append(event)
                continue
            flush()  # what was said before the decision, under the state it was said in
            decision = session._pending.value  # type: ignore[union-attr]
            accepted = bool(answers >> (decisions % 16) & 1)
            decisions += 1
            answer(session, decision, accepted, bool(flags & TEMPORARY))
            checker.answered(decision, accepted)
            flush()
        flush()
        if flags & SHUTDOWN and index == flags >> 12:
            session.request_shutdown()
            flush()
    if flags & TIMEOUT:
        session.timeout()
        flush()
    checker.finish()
    return log


def answer(session: ServerSession, decision: str, accepted: bool, temporary: bool) -> None:
    if accepted:
        session.accept(ACCEPT_REPLIES.get(decision))
    else:
        session.reject(REJECT_REPLIES.get(decision, OTHER_REJECTION)[0 if temporary else 1])


VERBS = (b"EHLO ", b"HELO ", b"MAIL ", b"RCPT ", b"DATA\r\n", b"RSET\r\n", b"NOOP\r\n")
VERBS += (b"QUIT\r\n", b"VRFY ", b"HELP\r\n", b"STARTTLS\r\n", b"AUTH PLAIN ", b"AUTH LOGIN")
VERBS += (b"BDAT 5\r\n", b"BDAT 0 LAST\r\n", b" LAST\r\n")


@harness("session", lambda: seeds(), max_len=8192, dictionary=SMTP_TOKENS + VERBS)
def one_input(data: bytes) -> None:
    head = data[:HEADER].ljust(HEADER, b"\x00")
    flags = int.from_bytes(head[:2], "little")
    answers = int.from_bytes(head[2:4], "little")
    chunks = cut(data[HEADER:], head[4:6])
    reference, *others = [run(parser, flags, answers, chunks) for parser in BACKENDS]
    for parser, log in zip(BACKENDS[1:], others, strict=True):
        assert log == reference, (parser.__name__, data)


# ----- seeds ---------------------------------------------------------------------------

GREET = b"EHLO client.test\r\n"
TRANSACTION = b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n"
MESSAGE = b"Subject: x\r\n\r\n..dot\r\nbody\r\n.\r\n"
SCRIPTS = [
    GREET + TRANSACTION + MESSAGE + b"QUIT\r\n",
    b"HELO c\r\n" + TRANSACTION + MESSAGE + TRANSACTION + MESSAGE + b"RSET\r\nQUIT\r\n",
    GREET + b"STARTTLS\r\n" + GREET + TRANSACTION + MESSAGE,
    GREET + b"STARTTLS\r\nMAIL FROM:<smuggled@x.test>\r\n" + GREET + b"STARTTLS\r\n",
    GREET + b"AUTH PLAIN AGFAcA==\r\nAUTH LOGIN\r\nYQ==\r\ncA==\r\n" + TRANSACTION + MESSAGE,
    b"NOOP\r\nHELP\r\nVRFY a\r\nVRFY\r\nEXPN a\r\nBDAT 1 LAST\r\nx\r\nMAIL FROM:<a@b>\r\n",
    GREET + b"MAIL FROM:<a@x.test> SIZE=10 BODY=8BITMIME SMTPUTF8\r\nRCPT TO:<b@y>\r\n",
    GREET + b"MAIL FROM:<a@x.test>\nRCPT TO:<b@y>\rDATA\r\n" + b"X" * 3000 + b"\r\n",
    GREET + TRANSACTION + b"a\r\n\x00.\r\nb\n.\nc\r.\r\n.\r\n" + b"MAIL FROM:<a@b>\r\n",
    GREET + b"RCPT TO:<a@b>\r\nDATA\r\nMAIL FROM:<>\r\nDATA\r\n" + b"QUIT\r\n",
    # BDAT: chunks with a split CRLF and a would-be terminator, DATA and RSET between chunks,
    # a chunk out of sequence, a bad count
    GREET + TRANSACTION[:-6] + b"BDAT 4\r\nab\r\nBDAT 9 LAST\r\n.\r\nQUIT\r\n" + TRANSACTION,
    GREET + TRANSACTION[:-6] + b"BDAT 3\r\nx\r\rDATA\r\nBDAT 2 LAST\r\n\n\x00RSET\r\n",
    GREET + b"BDAT 6\r\nQUIT\r\n" + TRANSACTION[:-6] + b"BDAT 2\r\nabRSET\r\nBDAT 0 LAST\r\n",
    GREET + TRANSACTION[:-6] + b"BDAT 70\r\n" + b"y" * 70 + b"BDAT x\r\nQUIT\r\n",
]
HEADERS = [
    b"\x00\x00\xff\xff\x00\x00",  # defaults, everything accepted, all at once
    b"\x01\x00\xff\xff\x01\x00",  # STARTTLS offered, byte by byte
    b"\x61\x00\xf5\xff\x07\x03",  # normalize + strip NUL, some rejections
    b"\x9f\x02\xff\xff\x0d\x00",  # every listener rule, small limits, then a timeout
    b"\x00\x05\x3f\xff\x05\x09",  # shutdown after the first chunk, 4xx rejections
    b"\x00\x08\xff\xff\x00\x00",  # refused instead of greeted
    b"\x00\x00\xf7\xff\x00\x00",  # the first message refused at its end
    b"\x00\x31\xff\xff\x05\x1e",  # shutdown in the middle of a transaction
]


def seeds() -> Iterator[bytes]:
    """Hand-made conversations, the command tables' MAIL/RCPT lines and the scanner
    tables' DATA, each with one of a few headers."""
    from tests.fuzz import harness_command, harness_data

    scripts = list(SCRIPTS)
    for line in harness_command.seeds():
        scripts.append(GREET + b"MAIL FROM:<a@b>\r\n" + line + b"\r\n")
    for data in harness_data.seeds():
        scripts.append(GREET + TRANSACTION + harness_data.split(data)[2] + b"QUIT\r\n")
    for index, script in enumerate(scripts):
        yield HEADERS[index % len(HEADERS)] + script
