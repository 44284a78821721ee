"""The server side of an SMTP session as a sans-I/O state machine.

Bytes go in with :meth:`ServerSession.receive_data`; events come out of
:meth:`ServerSession.next_event`; replies are collected and taken with
:meth:`ServerSession.data_to_send`, so that a pipelined batch (RFC 2920) is answered in
order with one write.  Nothing here touches sockets, files or clocks.

Rules this module keeps:

* Command order lives in one table (:data:`COMMANDS`): which states a verb is valid in and
  which reply it gets otherwise.
* Every reply carries an enhanced status code (RFC 2034); every reply of class 4 or 5 counts
  against ``max_errors``, after which the session says ``421`` and closes, as Postfix does.
* Only ``CRLF.CRLF`` ends DATA; a bare CR or LF in a command rejects the command, in DATA it
  rejects the message after the real terminator (or is turned into CRLF when configured).
  A NUL octet likewise: in a command argument ``501``, in DATA the message is rejected
  after the terminator (or the NUL dropped when configured), because a next hop that drops
  NULs would read ``CRLF NUL . CRLF`` as the end of the data (SMTP smuggling).
* BDAT (RFC 3030 CHUNKING): the octets a ``BDAT n`` announces are always consumed, whatever
  is answered, and only then is it answered, so a refused chunk never leaves its octets to
  be read as commands; a count that is not a number closes the session for the same reason.
  Chunks are not dot-unstuffed and nothing in them ends the message; bare line endings and
  NULs get DATA's rules across the chunks, SIZE counts all of them, and a transaction is
  either DATA or BDAT: DATA after a BDAT chunk is refused, and a failed chunk ends the
  transaction (later chunks are consumed and refused with ``503``); chunks.py.
* The ESMTP parameters of MAIL and RCPT are those of the extensions offered in that
  session, checked in esmtp_params.py.
* The HELO/EHLO name is copied into ``Received:`` and logs, so it must be safe to copy:
  no control character and no more than a domain's 255 octets (RFC 5321 §4.5.3.1.2).
* While a *decision* event waits for :meth:`accept` / :meth:`reject`, no further input is
  processed, so replies stay in order and the server may take its time (fsync).  Which
  decision is waiting is a :class:`Decision`.
* SMTP AUTH (RFC 4954, exchanges in sasl.py) is offered only where the listener allows it
  and only under TLS unless it explicitly allows plaintext; once authenticated a session
  cannot AUTH again (§4), and STARTTLS forgets the identity with everything else (RFC 3207
  §4.2).  The listener's rules: ``require_tls`` answers MAIL and AUTH before STARTTLS with
  ``530 5.7.0 Must issue a STARTTLS command first``; ``require_auth`` answers MAIL before
  AUTH with ``530 5.7.0 Authentication required``.
* REQUIRETLS (RFC 8689 §2) is advertised, and its MAIL parameter accepted, only on a
  session that uses TLS (after STARTTLS, or on an implicit-TLS listener); without TLS the
  parameter is one we do not offer: ``555 5.5.4`` (RFC 5321 §4.1.1.11).  It is kept in
  ``mail_params``, from where the envelope stores it.

The parser backend (the compiled ``_parser_c`` or its twin ``_parser_py``) is passed in by
the caller, which chooses it once (``mta.parser_backend``); this package reads no
environment and keeps no process-wide choice.  The limits come whole from the caller too
(the server builds them from the configuration, which owns every default).
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from mta.protocol import replies, sasl
from mta.protocol.chunks import Chunk, parse_bdat
from mta.protocol.errors import CommandSyntaxError, SessionUsageError
from mta.protocol.esmtp_params import (
    ehlo_keywords,
    mail_param_problem,
    rcpt_param_problem,
    utf8_problem,
)
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
from mta.protocol.printable import CONTROL

__all__ = [
    "COMMANDS",
    "DataScanner",
    "Decision",
    "ParserBackend",
    "ServerSession",
    "SessionLimits",
    "State",
]


class State(enum.Enum):
    CONNECTED = "connected"  # greeting sent, no HELO/EHLO yet
    READY = "ready"  # after HELO/EHLO, no transaction open
    MAIL = "mail"  # MAIL accepted, no recipient yet
    RCPT = "rcpt"  # at least one recipient accepted
    DATA = "data"  # reading the message
    BDAT = "bdat"  # BDAT chunks received, the last one not yet (RFC 3030)


class Decision(enum.Enum):
    """The decision event the session waits for (see events.py); no input is processed
    until the server answers it with :meth:`ServerSession.accept` or ``reject``."""

    MAIL = "mail"  # MailFrom: open the transaction with this sender?
    RCPT = "rcpt"  # RcptTo: take this recipient (relay policy)?
    DATA = "data"  # DataStart: ready to receive the message (354, or BDAT's first chunk)?
    END = "end"  # DataEnd: is the message durable (250 with its queue id)?
    STARTTLS = "starttls"  # StartTls: will the server start TLS (220)?
    AUTH = "auth"  # AuthRequest: are these credentials good (235)?


@dataclass(slots=True, frozen=True)
class SessionLimits:
    """What a session needs to know of the configuration.

    No defaults here: the configuration owns them, and the server builds the limits from it
    in one place (``mta.server.context.session_limits``).
    """

    hostname: str
    max_message_size: int
    max_recipients: int
    max_line_length: int
    max_errors: int
    normalize_bare_line_endings: bool
    starttls: bool  # offer STARTTLS (RFC 3207)
    strip_nul: bool  # drop NUL octets from DATA instead of rejecting the message
    # the listener's rules (mta.config.Listener)
    require_tls: bool  # MAIL (and AUTH) only after STARTTLS: 530 5.7.0 (RFC 3207 §4)
    auth: bool  # offer AUTH (RFC 4954): under TLS, or without it if auth_plaintext
    auth_plaintext: bool  # AUTH also without TLS (tests on loopback only)
    require_auth: bool  # MAIL only after AUTH: 530 5.7.0 Authentication required
    vrfy: bool  # VRFY answered 252 (no user disclosed); false: 502 (disable_vrfy_command)


class DataScanner(Protocol):
    """The DATA scanner of a parser backend (see ``_parser_py.DataScanner``)."""

    @property
    def done(self) -> bool: ...
    @property
    def size(self) -> int: ...
    @property
    def bare_cr(self) -> int: ...
    @property
    def bare_lf(self) -> int: ...
    @property
    def nul(self) -> int: ...
    def feed(self, chunk: bytes | bytearray | memoryview) -> tuple[bytes, int]: ...
    def finish(self) -> bytes: ...


class ParserBackend(Protocol):
    """A parser backend module, ``_parser_c`` or ``_parser_py`` (same API, see the twin)."""

    __name__: str

    def split_command(self, line: bytes) -> tuple[str, bytes]: ...
    def parse_path_argument(
        self, argument: bytes, keyword: bytes
    ) -> tuple[str, dict[str, str | None]]: ...
    def DataScanner(  # noqa: N802
        self, normalize: bool, strip_nul: bool, chunked: bool = False
    ) -> DataScanner: ...


_ANY = frozenset(State) - {State.DATA}
_IN_TRANSACTION = frozenset({State.MAIL, State.RCPT})


@dataclass(slots=True, frozen=True)
class Command:
    """One row of the command table."""

    handler: str  # name of the ServerSession method
    states: frozenset[State]  # where the verb is allowed
    takes_argument: bool | None = None  # True: required, False: forbidden, None: either


COMMANDS: dict[str, Command] = {
    "EHLO": Command("_do_ehlo", _ANY, True),
    "HELO": Command("_do_helo", _ANY, True),
    "MAIL": Command("_do_mail", frozenset({State.READY}), True),
    "RCPT": Command("_do_rcpt", _IN_TRANSACTION, True),
    "DATA": Command("_do_data", frozenset({State.RCPT}), False),
    # BDAT takes every state: its chunk is consumed wherever it comes (_do_bdat)
    "BDAT": Command("_do_bdat", _ANY, True),
    "RSET": Command("_do_rset", _ANY, False),
    "NOOP": Command("_do_noop", _ANY),
    "QUIT": Command("_do_quit", _ANY),
    "VRFY": Command("_do_vrfy", _ANY, True),
    "HELP": Command("_do_help", _ANY),
    "STARTTLS": Command("_do_starttls", frozenset({State.READY}), False),
    "AUTH": Command("_do_auth", frozenset({State.READY}), True),
}
# Known to us but deliberately not offered (RFC 5321 §4.2.4: 502 for unimplemented commands).
NOT_IMPLEMENTED = frozenset({"EXPN", "ETRN", "TURN", "ATRN"})

# Reply for a verb used in the wrong state, by the state we are in.
_OUT_OF_SEQUENCE: dict[tuple[str, State], bytes] = {
    ("MAIL", State.CONNECTED): replies.NEED_HELO,
    ("MAIL", State.MAIL): replies.NESTED_MAIL,
    ("MAIL", State.RCPT): replies.NESTED_MAIL,
    ("RCPT", State.CONNECTED): replies.NEED_HELO,
    ("RCPT", State.READY): replies.NEED_MAIL,
    ("DATA", State.CONNECTED): replies.NEED_HELO,
    ("DATA", State.READY): replies.NEED_MAIL,
    ("DATA", State.MAIL): replies.NEED_RCPT,
    ("DATA", State.BDAT): replies.DATA_AFTER_BDAT,
    ("BDAT", State.CONNECTED): replies.NEED_HELO,
    ("BDAT", State.READY): replies.NEED_MAIL,
    ("BDAT", State.MAIL): replies.NEED_RCPT,
    ("MAIL", State.BDAT): replies.NESTED_MAIL,
    ("RCPT", State.BDAT): replies.RCPT_AFTER_BDAT,
    ("STARTTLS", State.BDAT): replies.STARTTLS_IN_TRANSACTION,
    ("AUTH", State.BDAT): replies.AUTH_IN_TRANSACTION,
    ("STARTTLS", State.MAIL): replies.STARTTLS_IN_TRANSACTION,
    ("STARTTLS", State.RCPT): replies.STARTTLS_IN_TRANSACTION,
    ("AUTH", State.MAIL): replies.AUTH_IN_TRANSACTION,
    ("AUTH", State.RCPT): replies.AUTH_IN_TRANSACTION,
}

MAX_HELO_LENGTH = 255  # octets: a domain's limit (RFC 5321 §4.5.3.1.2); Postfix's too


class ServerSession:
    """One SMTP conversation, from greeting to close, with no I/O of its own."""

    def __init__(self, limits: SessionLimits, parser: ParserBackend, greet: bool = True) -> None:
        # connection state
        self.limits = limits
        self.state = State.CONNECTED
        self.helo = ""
        self.esmtp = False
        self.tls = False
        self.errors = 0
        self.reply_counts = [0] * 6  # replies sent by class (index 2 = 2xx), for metrics
        self.closing = False  # the last reply is queued; close after sending it
        self._shutdown_requested = False
        # SMTP AUTH: the identity once authenticated, the exchange in progress
        self.authenticated: str | None = None  # the SASL username (RFC 4954)
        self.auth_mechanism = ""
        self._sasl: sasl.SaslExchange | None = None
        self._pending_auth: tuple[str, str] = ("", "")  # (mechanism, username) asked about
        # input and output
        self._parser = parser
        self._buf = bytearray()
        self._discarding_long_line = False
        self._out: list[bytes] = []
        self.greeted = False
        if greet:
            self.greet()
        self._events: deque[Event] = deque()
        self._pending: Decision | None = None  # the decision we wait for
        # transaction state
        self.sender: str | None = None
        self.mail_params: dict[str, str | None] = {}
        self.recipients: list[tuple[str, dict[str, str | None]]] = []
        self._pending_rcpt: tuple[str, dict[str, str | None]] = ("", {})
        self._scanner: DataScanner | None = None  # while in DATA or BDAT
        self._chunk: Chunk | None = None  # the BDAT chunk being read
        self._oversize = False

    # ----- the I/O layer's API -------------------------------------------------------------

    def greet(self) -> None:
        """Queue the 220 greeting.  The server may hold it back (``greet=False``) while it
        decides about the connection: a PROXY header, an implicit TLS handshake, per-client
        limits.  Input that arrives before it is not processed here (the server keeps it)."""
        if not self.greeted:
            self.greeted = True
            self._out.append(replies.greeting(self.limits.hostname))
            self.reply_counts[2] += 1

    def refuse(self, reply: bytes) -> None:
        """Refuse the connection instead of greeting it (``421``/``554``), then close."""
        self.greeted = True
        self._close_with(reply)

    def receive_data(self, data: bytes) -> None:
        """Append bytes read from the peer; they are processed by :meth:`next_event`."""
        if not self.closing:
            self._buf += data

    def data_to_send(self) -> bytes:
        """All replies produced so far, in order, as one buffer."""
        out = b"".join(self._out)
        self._out.clear()
        return out

    @property
    def waiting(self) -> bool:
        """True while a decision event has not been answered yet."""
        return self._pending is not None

    @property
    def buffered(self) -> int:
        """Bytes received but not processed yet (for flow control)."""
        return len(self._buf)

    def next_event(self) -> Event | None:
        """The next event, or None when more input (or a decision) is needed."""
        while not self._events:
            if self._pending is not None or self.closing:
                return None
            if self._chunk is not None:
                if not self._read_chunk(self._chunk):
                    return None
                continue
            if self.state is State.DATA:
                if not self._scan_data():
                    return None
                continue
            line = self._next_line()
            if line is None:
                return None
            event = self._dispatch(line) if self._sasl is None else self._sasl_step(line)
            if event is not None:
                return event
        return self._events.popleft()

    def accept(self, reply: bytes | None = None) -> None:
        """Say yes to the pending decision; ``reply`` overrides the default text."""
        pending = self._take_pending()
        if pending is Decision.MAIL:
            self.state = State.MAIL
            self._reply(reply or replies.OK_SENDER)
        elif pending is Decision.RCPT:
            self.recipients.append(self._pending_rcpt)
            self.state = State.RCPT
            self._reply(reply or replies.OK_RECIPIENT)
        elif pending is Decision.STARTTLS:
            self._reply(reply or replies.READY_FOR_TLS)
            # RFC 3207 §4.2: forget everything said before; commands the client pipelined
            # after STARTTLS were sent in the clear and must not be acted on (CVE-2011-0411).
            self._buf.clear()
            self.tls = True
            self.helo = ""
            self.esmtp = False
            self.authenticated = None
            self.auth_mechanism = ""
            self.state = State.CONNECTED
        elif pending is Decision.DATA:
            limits = self.limits
            chunked = self._chunk is not None
            self._scanner = self._parser.DataScanner(
                limits.normalize_bare_line_endings, limits.strip_nul, chunked
            )
            self._oversize = False
            if chunked:
                self.state = State.BDAT  # the chunk's octets follow: no 354
            else:
                self.state = State.DATA
                self._reply(reply or replies.START_DATA)
        elif pending is Decision.AUTH:
            self.authenticated = self._pending_auth[1]
            self.auth_mechanism = self._pending_auth[0]
            self._reply(reply or replies.AUTH_OK)
        else:  # end of data: the message is durable
            if reply is None:
                raise SessionUsageError("accepting a message needs the reply with its queue id")
            self._reply(reply)
            self._end_transaction()

    def reject(self, reply: bytes) -> None:
        """Say no to the pending decision with ``reply`` (a 4xx or 5xx line); a ``421``
        closes the session (RFC 5321 §3.8)."""
        pending = self._take_pending()
        if pending is Decision.MAIL:
            self.sender = None
            self.mail_params = {}
        chunk = self._chunk
        if pending is Decision.DATA and chunk is not None and not reply.startswith(b"421"):
            chunk.keep, chunk.refusal = False, reply  # answered once its octets are in
            return
        if reply.startswith(b"421"):
            self._close_with(reply)
        else:
            self._reply(reply)
        if pending is Decision.END:
            self._end_transaction()

    def timeout(self) -> None:
        """The I/O layer's idle timer fired: say 421 and close (RFC 5321 §4.5.3.2)."""
        self._close_with(replies.timeout(self.limits.hostname))

    def request_shutdown(self) -> None:
        """The server is stopping: close now if idle, else after the transaction ends."""
        self._shutdown_requested = True
        if self._idle():
            self._close_with(replies.shutting_down(self.limits.hostname))

    @property
    def in_transaction(self) -> bool:
        return self.state in _IN_TRANSACTION or self.state in (State.DATA, State.BDAT)

    @property
    def receiving_message(self) -> bool:
        """Message octets are being read: after DATA's 354, or in a BDAT transaction."""
        return self.state is State.DATA or self.state is State.BDAT

    # ----- input ---------------------------------------------------------------------------

    def _next_line(self) -> bytes | None:
        """The next well-formed command line without CRLF; bad lines are answered here."""
        buf = self._buf
        limit = self.limits.max_line_length if self._sasl is None else sasl.MAX_RESPONSE_LINE
        while not self.closing:
            lf = buf.find(b"\n")
            if lf < 0:
                if len(buf) > limit:
                    self._discarding_long_line = True  # keep no unbounded line in memory
                    buf.clear()
                return None
            line = bytes(buf[: lf + 1])
            del buf[: lf + 1]
            if self._discarding_long_line or lf + 1 > limit:
                self._discarding_long_line = False
                self._bad_line(replies.LINE_TOO_LONG)
            elif lf == 0 or line[lf - 1] != 0x0D or b"\r" in line[: lf - 1]:
                self._bad_line(replies.BARE_LINE_ENDING_COMMAND)  # never guess where it ends
            else:
                return line[: lf - 1]
        return None

    def _bad_line(self, reply: bytes) -> None:
        """A line we cannot take; inside an AUTH exchange it ends the exchange too."""
        self._sasl = None
        self._reply(reply)

    def _scan_data(self) -> bool:
        """Feed buffered input to the DATA scanner; False when it needs more input."""
        if not self._buf:
            return False
        scanner = self._scanner
        if scanner is None:
            raise SessionUsageError("in DATA without a scanner")  # unreachable: accept() sets it
        decoded, used = scanner.feed(self._buf)
        del self._buf[:used]
        if scanner.size > self.limits.max_message_size:
            self._oversize = True  # keep reading to the terminator, but keep nothing
        elif decoded:
            self._events.append(DataChunk(decoded))
        if scanner.done:
            self._scanner = None
            self._finish_data(scanner)
        return True

    def _finish_data(self, scanner: DataScanner) -> None:
        bare = scanner.bare_cr + scanner.bare_lf
        if self._oversize:
            self._abort_data("too_big", replies.TOO_BIG)
        elif bare and not self.limits.normalize_bare_line_endings:
            self._abort_data("bare_line_ending", replies.BARE_LINE_ENDING_DATA)
        elif scanner.nul and not self.limits.strip_nul:
            self._abort_data("nul", replies.NUL_IN_DATA)
        else:
            self._pending = Decision.END
            self._events.append(DataEnd(scanner.size))

    def _read_chunk(self, chunk: Chunk) -> bool:
        """Consume the BDAT chunk's octets as they come; False when more are needed."""
        buf = self._buf
        take = min(chunk.remaining, len(buf))
        if take == 0 and chunk.remaining:
            return False
        if take:
            chunk.remaining -= take
            if chunk.keep:
                self._keep_chunk_octets(buf, take)
            del buf[:take]
        if chunk.remaining:
            return True
        self._chunk = None
        self._chunk_done(chunk)
        return True

    def _keep_chunk_octets(self, buf: bytearray, take: int) -> None:
        scanner = self._scanner
        if scanner is None:
            raise SessionUsageError("in BDAT without a scanner")  # unreachable: accept()
        decoded, _ = scanner.feed(memoryview(buf)[:take])
        if scanner.size > self.limits.max_message_size:
            self._oversize = True  # the chunk is still consumed, nothing more is kept
        elif decoded:
            self._events.append(DataChunk(decoded))

    def _chunk_done(self, chunk: Chunk) -> None:
        """Answer a chunk whose octets are all in: refused, too big, the last, or more."""
        if chunk.refusal is not None:
            self._reply(chunk.refusal)
            if self.state is State.RCPT:  # the message could not be opened: it is over
                self._end_transaction()
            return
        if not chunk.keep:  # out of sequence, or after a failed chunk: not ours
            return
        scanner = self._scanner
        if scanner is None:
            raise SessionUsageError("in BDAT without a scanner")  # unreachable: accept()
        if self._oversize:
            self._scanner = None
            self._abort_data("too_big", replies.TOO_BIG)
        elif chunk.last:
            tail = scanner.finish()
            if tail and scanner.size <= self.limits.max_message_size:
                self._events.append(DataChunk(tail))
            elif tail:
                self._oversize = True
            self._scanner = None
            self._finish_data(scanner)
        else:
            self._reply(replies.chunk_received(chunk.size))

    def _abort_data(self, reason: str, reply: bytes) -> None:
        self._events.append(DataAborted(reason))
        self._reply(reply)
        self._end_transaction()

    # ----- commands ------------------------------------------------------------------------

    def _dispatch(self, line: bytes) -> Event | None:
        verb, argument = self._parser.split_command(line)
        command = COMMANDS.get(verb)
        if command is None:
            if self._shutdown_requested and self._idle():
                self._close_with(replies.shutting_down(self.limits.hostname))
            elif verb in NOT_IMPLEMENTED:
                self._reply(replies.NOT_IMPLEMENTED)
            else:
                self._reply(replies.UNKNOWN_COMMAND)
            return None
        if self._shutdown_requested and self._idle() and verb != "QUIT":
            self._close_with(replies.shutting_down(self.limits.hostname))
            return None
        if verb == "STARTTLS" and (not self.limits.starttls or self.tls):
            self._reply(replies.NOT_IMPLEMENTED)  # not offered (again) on this connection
            return None
        if verb == "AUTH" and (
            refusal := sasl.auth_refusal(self.limits, self.tls, self.authenticated is not None)
        ):
            self._reply(refusal)  # not offered here, not yet (STARTTLS first) or done
            return None
        if self.state not in command.states:
            self._reply(_OUT_OF_SEQUENCE.get((verb, self.state), replies.NEED_HELO))
            return None
        if command.takes_argument is False and argument:
            self._reply(replies.DATA_SYNTAX if verb == "DATA" else replies.NO_ARGS_SYNTAX)
            return None
        if b"\x00" in argument:  # NUL in the verb is an unknown verb (500) above
            self._reply(replies.NUL_IN_ARGUMENT)
            return None
        handler: Callable[[bytes], Event | None] = getattr(self, command.handler)
        return handler(argument)

    def _do_ehlo(self, argument: bytes) -> Event | None:
        return self._greet(argument, esmtp=True)

    def _do_helo(self, argument: bytes) -> Event | None:
        return self._greet(argument, esmtp=False)

    def _greet(self, argument: bytes, esmtp: bool) -> Event | None:
        name = argument.strip()
        if not name or b" " in name:
            self._reply(replies.HELO_SYNTAX)
            return None
        helo = name.decode("utf-8", "replace")
        # Only what is unsafe to copy into headers and logs: a control character or more
        # than a domain's length.  Whether the name is a valid hostname is policy (Postfix's
        # reject_invalid_helo_hostname), not done here.
        if len(name) > MAX_HELO_LENGTH or CONTROL.search(helo):
            self._reply(replies.INVALID_HELO)
            return None
        self.helo = helo
        self.esmtp = esmtp
        event = self._reset_transaction()
        self.state = State.READY
        host = self.limits.hostname
        if esmtp:
            self._reply(replies.multiline(250, [host, *self._extensions()]))
        else:
            self._reply(replies.reply(250, host))
        return event

    def _extensions(self) -> list[str]:
        return ehlo_keywords(self.limits, self.tls)

    def _mail_refusal(self) -> bytes | None:
        """The listener's rules for MAIL: TLS first, then AUTH first (530 5.7.0)."""
        if self.limits.require_tls and not self.tls:
            return replies.MUST_STARTTLS
        if self.limits.require_auth and self.authenticated is None:
            return replies.AUTH_REQUIRED
        return None

    def _do_mail(self, argument: bytes) -> Event | None:
        refusal = self._mail_refusal()
        if refusal is not None:
            self._reply(refusal)
            return None
        try:
            sender, params = self._parser.parse_path_argument(argument, b"FROM")
        except CommandSyntaxError as exc:
            self._reply(replies.reply(exc.code, exc.text))
            return None
        problem = mail_param_problem(
            params,
            esmtp=self.esmtp,
            tls=self.tls,
            authenticated=self.authenticated is not None,
            limits=self.limits,
        ) or utf8_problem(sender, params)
        if problem is not None:
            self._reply(problem)
            return None
        self.sender = sender
        self.mail_params = params
        self._pending = Decision.MAIL
        return MailFrom(sender, params)

    def _do_rcpt(self, argument: bytes) -> Event | None:
        try:
            recipient, params = self._parser.parse_path_argument(argument, b"TO")
        except CommandSyntaxError as exc:
            self._reply(replies.reply(exc.code, exc.text))
            return None
        if not recipient:
            self._reply(replies.NULL_RECIPIENT)
        elif params and (problem := self._rcpt_param_problem(params)) is not None:
            self._reply(problem)
        elif len(self.recipients) >= self.limits.max_recipients:
            self._reply(replies.TOO_MANY_RECIPIENTS)  # RFC 5321 §4.5.3.1.10
        elif (problem := utf8_problem(recipient, self.mail_params)) is not None:
            self._reply(problem)
        else:
            self._pending = Decision.RCPT
            self._pending_rcpt = (recipient, params)
            return RcptTo(recipient, params)
        return None

    def _rcpt_param_problem(self, params: dict[str, str | None]) -> bytes | None:
        smtputf8 = "SMTPUTF8" in self.mail_params
        return rcpt_param_problem(params, esmtp=self.esmtp, smtputf8=smtputf8)

    def _do_data(self, argument: bytes) -> Event | None:
        self._pending = Decision.DATA
        return DataStart()

    def _do_bdat(self, argument: bytes) -> Event | None:
        """``BDAT count [LAST]``: the chunk's octets follow the line (RFC 3030 §2)."""
        parsed = parse_bdat(argument)
        if parsed is None:  # how many octets follow is unknown: we cannot stay in step
            self._close_with(replies.bdat_syntax(self.limits.hostname))
            return None
        size, last = parsed
        if self.state is State.RCPT:  # the first chunk: the server opens the message
            self._chunk = Chunk(size, last)
            self._pending = Decision.DATA
            return DataStart()
        if self.state is State.BDAT:
            self._chunk = Chunk(size, last)
            return None
        refusal = _OUT_OF_SEQUENCE.get(("BDAT", self.state), replies.NEED_HELO)
        self._chunk = Chunk(size, last, keep=False, refusal=refusal)
        return None

    def _do_starttls(self, argument: bytes) -> Event | None:
        self._pending = Decision.STARTTLS
        return StartTls()

    def _do_auth(self, argument: bytes) -> Event | None:
        exchange, step = sasl.start(argument)
        self._sasl = exchange
        return self._sasl_answer(step)

    def _sasl_step(self, line: bytes) -> Event | None:
        """A response line of the AUTH exchange in progress (RFC 4954 §4)."""
        exchange = self._sasl
        if exchange is None:
            raise SessionUsageError("no AUTH exchange in progress")
        return self._sasl_answer(exchange.respond(line))

    def _sasl_answer(self, step: bytes | AuthRequest) -> Event | None:
        if self._sasl is not None and self._sasl.done:
            self._sasl = None
        if isinstance(step, bytes):
            self._reply(step)  # a 334 challenge, or the error that ended the exchange
            return None
        self._pending = Decision.AUTH
        self._pending_auth = (step.mechanism, step.username)
        return step

    def _do_rset(self, argument: bytes) -> Event | None:
        event = self._reset_transaction()
        self._reply(replies.RESET)
        return event

    def _do_noop(self, argument: bytes) -> Event | None:
        self._reply(replies.OK)
        return None

    def _do_quit(self, argument: bytes) -> Event | None:
        self._close_with(replies.closing(self.limits.hostname))
        return None

    def _do_vrfy(self, argument: bytes) -> Event | None:
        if not self.limits.vrfy:  # Postfix's disable_vrfy_command = yes
            self._reply(replies.VRFY_DISABLED)
        elif not argument:  # RFC 5321 §4.1.1.6: "VRFY" SP String
            self._reply(replies.VRFY_SYNTAX)
        else:
            self._reply(replies.VRFY)  # RFC 5321 §3.5.3: 252 when we will not verify
        return None

    def _do_help(self, argument: bytes) -> Event | None:
        self._reply(replies.help_reply(self._accepted_verbs()))
        return None

    def _accepted_verbs(self) -> list[str]:
        """The commands this listener accepts in this TLS state, as EHLO offers their
        extensions (STARTTLS before TLS only, AUTH where it is offered)."""
        verbs = ["EHLO", "HELO", "MAIL", "RCPT", "DATA", "BDAT", "RSET", "NOOP", "QUIT"]
        if self.limits.vrfy:
            verbs.append("VRFY")
        verbs.append("HELP")
        if self.limits.starttls and not self.tls:
            verbs.append("STARTTLS")
        if sasl.auth_offered(self.limits, self.tls):
            verbs.append("AUTH")
        return verbs

    # ----- helpers -------------------------------------------------------------------------

    def _take_pending(self) -> Decision:
        pending = self._pending
        if pending is None:
            raise SessionUsageError("no decision is pending")
        self._pending = None
        return pending

    def _reply(self, data: bytes) -> None:
        if self.closing:
            return  # nothing may follow the closing reply (221 or 421)
        self._out.append(data)
        self.reply_counts[data[0] - 48] += 1
        if data[0] in b"45":
            self.errors += 1
            if self.errors >= self.limits.max_errors:
                self._close_with(replies.too_many_errors(self.limits.hostname))

    def _close_with(self, data: bytes) -> None:
        if not self.closing:
            self._out.append(data)
            self.reply_counts[data[0] - 48] += 1
            self.closing = True
            self._buf.clear()

    def _idle(self) -> bool:
        return self._pending is None and self.state in (State.CONNECTED, State.READY)

    def _reset_transaction(self) -> Event | None:
        had_transaction = self.sender is not None
        self._scanner = None
        self.sender = None
        self.mail_params = {}
        self.recipients = []
        if self.state is not State.CONNECTED:
            self.state = State.READY
        return TransactionReset() if had_transaction else None

    def _end_transaction(self) -> None:
        self._reset_transaction()
        if self._shutdown_requested:
            self._close_with(replies.shutting_down(self.limits.hostname))
