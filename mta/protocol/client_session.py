"""The client side of an SMTP or LMTP conversation as a sans-I/O state machine.

The twin of :mod:`mta.protocol.session`: bytes from the server go in with
:meth:`ClientSession.receive_data`; commands to send come out of
:meth:`ClientSession.data_to_send`; decisions come out of :meth:`ClientSession.next_event`
as :mod:`~mta.protocol.client_events`.  Nothing here touches sockets, TLS or clocks: the I/O
layer (``mta.delivery.smtp_client``) connects, writes what the session says, waits until
the replies it needs are in (:attr:`ClientSession.replies_in`: one wake-up per phase) and
does the TLS handshake when told.

The states and what may follow what (:data:`TRANSITIONS`; a reply moves the session on,
except where an API call is named)::

    GREETING --220--> EHLO (LHLO for LMTP) --250--> [STARTTLS] --> READY   (event Ready)
                      EHLO --not 250--> HELO (not LMTP) --250--> READY
    GREETING / LHLO / HELO refused --> CLOSED               (event HandshakeRefused)
    STARTTLS --220--> TLS --tls_started()--> EHLO           (event StartTlsNow)
    STARTTLS --other--> READY                               (carry on in clear text)
    with credentials, after the last EHLO, when the server offers AUTH (RFC 4954):
      --> AUTH (PLAIN, initial response) --235--> READY    (event Ready, auth="PLAIN")
      --> AUTH_USER (LOGIN) --334--> AUTH_PASS --334--> AUTH --235--> READY
      refused, no TLS, no PLAIN or LOGIN --> CLOSED        (event AuthFailed)
    READY --start_transaction()--> BATCH (PIPELINING: MAIL, RCPTs, DATA in one write)
                               \\-> MAIL --> RCPT ... --> DATA (one command at a time)
    BATCH / DATA --354--> MESSAGE --> READY                 (event TransactionDone)
    BATCH / DATA --354--> STREAM (a stored message)         (event SendMessage)
    STREAM --message_data()..., end_message()--> MESSAGE
    with CHUNKING (RFC 3030, ``chunking=True``) BDAT takes DATA's place, no 354, no stuffing:
    READY --start_transaction()--> BDAT_BATCH (PIPELINING: MAIL, RCPTs, BDAT n LAST + message)
                               \\-> MAIL --> RCPT ... --> MESSAGE (BDAT n LAST + message)
    BDAT_BATCH / RCPT --> STREAM (a stored message: one BDAT n LAST, its octets streamed)
    MESSAGE --a refused BDAT (not LMTP)--> RSET
    refused transaction --> [ABANDON: end a 354 nobody wanted] --> RSET (or READY)
    RSET --250--> READY, --other--> CLOSED (unusable)       (event TransactionDone)
    any state --quit() or connection_lost()--> CLOSED

Rules this module keeps (they are the behaviour the delivery layer had before it moved
here, and its logs and tests depend on them):

* Every recipient gets exactly one outcome, in the order of the transaction: the RCPT reply
  if it was refused, else the reply to MAIL if that was refused, else the DATA reply if
  that was not ``354``, else the final reply (LMTP: the recipient's own reply, one per
  accepted recipient in RCPT order, RFC 2033 §4.2).  With BDAT the reply to ``BDAT LAST``
  is the final reply; it comes per recipient with LMTP too (RFC 2033 §4.2 applied to the
  last chunk, as DATA's end; an LMTP server that refuses the chunk itself with one reply
  is not told apart: the recipients after the first wait for the command timeout).
* A refused transaction is cleaned up with RSET so the connection can carry the next one;
  a reply other than ``250`` to RSET makes the connection unusable.  Without PIPELINING a
  refused MAIL needs no RSET (nothing else was said), and no DATA is sent when every
  recipient was refused.  With PIPELINING DATA went out already: a ``354`` nobody wanted
  is ended at once (``.`` after a refused MAIL, the empty message when no recipient was
  accepted).
* The SIZE (RFC 1870 §6), SMTPUTF8 (RFC 6531 §3.4) and REQUIRETLS (RFC 8689 §4.2.1: TLS,
  and the server offers REQUIRETLS) checks are made before anything is sent:
  :meth:`~ClientSession.start_transaction` returns a
  :class:`~mta.protocol.client_events.TransactionNotSent` instead.
* A reply that arrives while nothing was asked is kept, not dropped: it would be taken for
  the answer to the next command, so :attr:`~ClientSession.reusable` turns false.
* A message in memory goes out whole with the commands; a stored one (too large to hold,
  :class:`~mta.protocol.client_events.StoredMessage`) is fed by the I/O layer in chunks,
  dot-stuffed here (:class:`~mta.protocol.dot_stuff.DotStuffer`), and the end line is sent
  only once exactly its ``message_length`` octets were fed, so a short read can never end a
  message early.  SIZE is its ``message_length`` either way.  A ``354`` nobody wanted gets
  the whole message if it is in memory (as before), the empty message if it is stored.

Outcomes are protocol-level: :class:`~mta.protocol.client_events.RecipientReply` (a
recipient and the reply that decided it), not the queue's ``RecipientResult``, because
``mta.protocol`` imports nothing from ``mta.delivery`` or ``mta.queue``.  The delivery
layer adds what only it knows (the relay's name) and reads the status from the reply class.

Kept exactly as the delivery code had it, to be decided in their own issues: replies the
server sent before the TLS handshake are not dropped (RFC 3207 §4.2 asks a client to
discard what it learned in clear text), and when the EHLO after TLS is refused, HELO
keeps the extensions of the clear-text EHLO.

Errors, as in :mod:`mta.protocol.errors`: :class:`ClientUsageError` (a
``SessionUsageError``) when the caller uses the API out of order — a local bug;
:class:`~mta.protocol.client.ProtocolError` when the server sends something that is not an
SMTP reply.

AUTH to a smarthost (``credentials``; the lines are :mod:`mta.protocol.client_auth`'s) is
said only over TLS (``tls_started()``, or ``tls=True`` for a connection encrypted from the
start, RFC 8314): a server that offers AUTH on a clear-text connection gets no password
(:class:`~mta.protocol.client_events.AuthFailed` ``no_tls``).  A server that does not offer
AUTH at all gets the mail without it, as Postfix does; ``Ready.auth`` is then "" and the
I/O layer warns.

To add a state (BDAT, a TLS policy that refuses to carry on in clear
text): add it to :class:`State` and :data:`TRANSITIONS`, write its ``_on_<state>`` reply
handler and register it in ``_handlers``; the I/O layer needs a change only if the state
asks it to do something new (as TLS does).
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable, Mapping

from mta.protocol.client import ClientConnection, Reply
from mta.protocol.client_auth import (
    Credentials,
    choose_mechanism,
    login_line,
    offered_mechanisms,
    plain_command,
)
from mta.protocol.client_events import (
    AuthFailed,
    ClientEvent,
    HandshakeRefused,
    Ready,
    RecipientReply,
    SendMessage,
    StartTlsNow,
    StoredMessage,
    Transaction,
    TransactionDone,
    TransactionNotSent,
)
from mta.protocol.dot_stuff import DotStuffer, dot_stuff
from mta.protocol.errors import SessionUsageError

__all__ = ["TRANSITIONS", "ClientSession", "ClientUsageError", "State"]


class ClientUsageError(SessionUsageError):
    """The I/O layer called the client session out of order (a local bug)."""


class State(enum.Enum):
    GREETING = "greeting"  # connected, waiting for the server's greeting
    EHLO = "ehlo"  # EHLO (LHLO) sent
    HELO = "helo"  # EHLO refused, HELO sent
    STARTTLS = "starttls"  # STARTTLS sent
    TLS = "tls"  # the server said 220 to STARTTLS: the I/O layer does the handshake
    AUTH = "auth"  # AUTH PLAIN (or LOGIN's password) sent: waiting for 235
    AUTH_USER = "auth_user"  # AUTH LOGIN sent: waiting for the username challenge
    AUTH_PASS = "auth_pass"  # LOGIN's username sent: waiting for the password challenge
    READY = "ready"  # idle: a transaction may start
    BATCH = "batch"  # PIPELINING: MAIL, every RCPT and DATA sent in one write
    BDAT_BATCH = "bdat_batch"  # PIPELINING + CHUNKING: MAIL, RCPTs (and BDAT LAST) in one write
    MAIL = "mail"  # one at a time: MAIL sent
    RCPT = "rcpt"  # one at a time: a RCPT sent
    DATA = "data"  # one at a time: DATA sent
    STREAM = "stream"  # 354 to a stored message: the I/O layer feeds it in chunks
    MESSAGE = "message"  # the message sent: waiting for the final reply (LMTP: replies)
    ABANDON = "abandon"  # a 354 nobody wanted was ended: its reply decides nothing
    RSET = "rset"  # RSET sent after a refused transaction
    CLOSED = "closed"  # refused, unusable, QUIT sent or connection lost

    # Members are singletons compared by identity; Enum's own __hash__ is Python code, and
    # every reply looks a state up a few times.
    __hash__ = object.__hash__


# The members by their bare names: looking up State.READY costs ten times a global name,
# and a transaction moves through a few states per message.
(
    GREETING,
    EHLO,
    HELO,
    STARTTLS,
    TLS,
    AUTH,
    AUTH_USER,
    AUTH_PASS,
    READY,
    BATCH,
    BDAT_BATCH,
    MAIL,
    RCPT,
    DATA,
    STREAM,
    MESSAGE,
    ABANDON,
    RSET,
    CLOSED,
) = State

# What may follow what.  quit() and connection_lost() lead from any state to CLOSED.
TRANSITIONS: dict[State, frozenset[State]] = {
    GREETING: frozenset({EHLO, CLOSED}),
    EHLO: frozenset({HELO, STARTTLS, AUTH, AUTH_USER, READY, CLOSED}),
    HELO: frozenset({AUTH, AUTH_USER, READY, CLOSED}),
    STARTTLS: frozenset({TLS, AUTH, AUTH_USER, READY, CLOSED}),
    TLS: frozenset({EHLO}),  # tls_started()
    AUTH: frozenset({READY, CLOSED}),
    AUTH_USER: frozenset({AUTH_PASS, CLOSED}),
    AUTH_PASS: frozenset({AUTH, CLOSED}),
    READY: frozenset({BATCH, BDAT_BATCH, MAIL}),  # start_transaction()
    BATCH: frozenset({MESSAGE, STREAM, ABANDON, RSET}),
    BDAT_BATCH: frozenset({MESSAGE, STREAM, ABANDON, RSET}),
    MAIL: frozenset({RCPT, READY}),
    RCPT: frozenset({RCPT, DATA, MESSAGE, STREAM, RSET}),
    DATA: frozenset({MESSAGE, STREAM, ABANDON, RSET}),
    STREAM: frozenset({MESSAGE}),  # end_message()
    MESSAGE: frozenset({READY, RSET}),
    ABANDON: frozenset({READY, RSET}),
    RSET: frozenset({READY, CLOSED}),
    CLOSED: frozenset(),
}


class ClientSession:
    """One outbound SMTP/LMTP conversation, from greeting to QUIT, with no I/O of its own."""

    def __init__(
        self,
        helo_name: str,
        *,
        lmtp: bool = False,
        starttls: bool = True,
        credentials: Credentials | None = None,
        tls: bool = False,
        chunking: bool = True,
    ) -> None:
        """``credentials``: authenticate with them (only over TLS); ``tls``: the connection
        is encrypted from the start (RFC 8314 implicit TLS), so no STARTTLS; ``chunking``:
        send with BDAT when the server offers CHUNKING (RFC 3030), else always DATA."""
        # what we know of the server, and the command formats
        self.client = ClientConnection(helo_name, lmtp=lmtp)
        self.lmtp = lmtp
        self.want_tls = starttls  # say STARTTLS when the server offers it
        self.credentials = credentials
        self.want_chunking = chunking
        # connection state
        self.state = State.GREETING
        self.tls = tls
        self._tls_tried = tls
        self.auth_mechanism = ""  # the mechanism being tried, then the one that worked
        # input and output
        self._replies: deque[Reply] = deque()  # received, not yet taken by a handler
        self._wanted = 1  # replies the current state needs before it can move on
        self._out: list[bytes] = []
        self._parse = self.client.parser.feed
        # the transaction in progress
        self._tx: Transaction | None = None
        self._dsn: Mapping[str, str] | None = None  # RCPT's DSN parameters, if offered
        self._rcpt_replies: list[Reply] = []
        self._accepted: list[str] = []  # recipients that wait for the final reply
        self._outcomes: dict[str, Reply] = {}  # recipients decided before the message
        self._decided: list[RecipientReply] = []  # in RSET and ABANDON: every outcome
        self._then_rset = False  # in ABANDON: RSET after the reply
        self._stuffer: DotStuffer | None = None  # in STREAM: the stored message's payload
        self._stream_left = 0  # in STREAM: octets of the message not fed yet
        self._stream_wanted = 0  # in STREAM: replies to wait for after end_message()
        self._bdat = False  # this transaction sends BDAT, not DATA (RFC 3030)
        self._bdat_header = b""  # in STREAM with BDAT: the command before the first octets
        self._handlers: dict[State, Callable[[], ClientEvent | None]] = {
            GREETING: self._on_greeting,
            EHLO: self._on_ehlo,
            HELO: self._on_helo,
            STARTTLS: self._on_starttls,
            AUTH: self._on_auth,
            AUTH_USER: self._on_auth_user,
            AUTH_PASS: self._on_auth_pass,
            BATCH: self._on_batch,
            BDAT_BATCH: self._on_bdat_batch,
            MAIL: self._on_mail,
            RCPT: self._on_rcpt,
            DATA: self._on_data,
            MESSAGE: self._on_message,
            ABANDON: self._on_abandon,
            RSET: self._on_rset,
        }

    # ----- the I/O layer's API -------------------------------------------------------------

    def receive_data(self, data: bytes) -> bool:
        """Bytes from the server; True when the replies the session waits for are in.

        Raises :class:`~mta.protocol.client.ProtocolError` if they are not SMTP replies."""
        replies = self._replies
        replies.extend(self._parse(data))
        return len(replies) >= self._wanted

    @property
    def replies_in(self) -> bool:
        """True when the replies the session waits for are in: :meth:`next_event` can move
        on (or, in a state that waits for the caller, has nothing to wait for)."""
        return len(self._replies) >= self._wanted

    def data_to_send(self) -> bytes:
        """The commands to send now, as one buffer (one write per phase)."""
        out = self._out
        if not out:
            return b""
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        return data

    def next_event(self) -> ClientEvent | None:
        """The next decision, or None when more replies are needed.

        Raises :class:`ClientUsageError` in a state that waits for the caller (READY, TLS,
        STREAM, CLOSED): waiting for replies there would wait for ever."""
        replies = self._replies
        while len(replies) >= self._wanted:
            handler = self._handlers.get(self.state)
            if handler is None:
                raise ClientUsageError(f"nothing to wait for in state {self.state.value}")
            event = handler()
            if event is not None:
                return event
        return None

    def start_transaction(self, tx: Transaction) -> TransactionNotSent | None:
        """Begin ``tx`` (READY only): its commands are queued for :meth:`data_to_send` and
        :meth:`next_event` gives its outcome.  Returns why not, without sending anything,
        when the server cannot take it."""
        if self.state is not READY:
            raise ClientUsageError(f"cannot start a transaction in state {self.state.value}")
        client = self.client
        message = tx.message
        size = len(message) if isinstance(message, bytes) else message.message_length
        limit = client.size_limit
        if limit is not None and size > limit:
            return TransactionNotSent("size", size, limit)
        extensions = client.extensions
        if tx.smtputf8 and "SMTPUTF8" not in extensions:
            return TransactionNotSent("smtputf8", size, limit)
        if tx.require_tls and not (self.tls and "REQUIRETLS" in extensions):
            return TransactionNotSent("requiretls", size, limit)
        self._tx = tx
        # RFC 3461 §5.2: DSN parameters are passed on only to a server that offers DSN
        self._dsn = dsn = tx.rcpt_dsn if "DSN" in extensions else None
        mail = client.mail(
            tx.sender,
            size=size,
            eight_bit=tx.eight_bit,
            smtputf8=tx.smtputf8,
            dsn=tx.mail_dsn if dsn is not None else "",
        )
        self._bdat = self.want_chunking and "CHUNKING" in extensions
        if tx.require_tls:  # RFC 8689 §2: the parameter has no value
            mail = mail[:-2] + b" REQUIRETLS\r\n"
        if "PIPELINING" in extensions:  # RFC 2920: MAIL, every RCPT and DATA at once
            recipients = tx.recipients
            if dsn is not None:
                batch = [mail, *[client.rcpt(r, dsn.get(r, "")) for r in recipients], b"DATA\r\n"]
            elif len(recipients) == 1:  # the common case: no comprehension
                batch = [mail, client.rcpt(recipients[0]), b"DATA\r\n"]
            else:
                batch = [mail, *[client.rcpt(r) for r in recipients], b"DATA\r\n"]
            if self._bdat:
                batch.pop()  # BDAT, not DATA: see _bdat_batch
                self._bdat_batch(batch, message)
                return None
            self._out.append(b"".join(batch))
            self._go(BATCH, len(batch))
        else:
            self._out.append(mail)
            self._rcpt_replies = []
            self._go(MAIL)
        return None

    def message_data(self, chunk: bytes) -> bytes:
        """The next ``chunk`` of a stored message (STREAM only), dot-stuffed: the bytes to
        send.  Raises :class:`ClientUsageError` past the message's length."""
        stuffer = self._stuffer
        if self.state is not STREAM or stuffer is None:
            raise ClientUsageError(f"cannot send message data in state {self.state.value}")
        left = self._stream_left - len(chunk)
        if left < 0:
            raise ClientUsageError("more message data than the message's length")
        self._stream_left = left
        header = self._bdat_header
        if header:  # BDAT: the octets as they are, after the one command that counts them
            self._bdat_header = b""
            return header + chunk
        return stuffer.feed(chunk) if not self._bdat else chunk

    def end_message(self) -> bytes:
        """The end of a stored message (STREAM only): the bytes to send, after which the
        session waits for the final reply.  Raises :class:`ClientUsageError` unless exactly
        the message's length was fed: a message cut short must never be ended."""
        stuffer = self._stuffer
        if self.state is not STREAM or stuffer is None:
            raise ClientUsageError(f"cannot end a message in state {self.state.value}")
        if self._stream_left:
            raise ClientUsageError(f"{self._stream_left} octets of the message not sent")
        self._stuffer = None
        self._go(MESSAGE, self._stream_wanted)
        if self._bdat:  # the BDAT command counted every octet: nothing ends the message
            header, self._bdat_header = self._bdat_header, b""
            return header  # the command itself, for a message of no octets
        return stuffer.end()

    def tls_started(self) -> None:
        """The TLS handshake the session asked for is done: say EHLO again (RFC 3207 §4.2)."""
        self._expect_state(TLS, "report a TLS handshake")
        self.tls = True
        self._out.append(self.client.ehlo())
        self._go(EHLO)

    def quit(self) -> bytes:
        """QUIT, to be sent as the last command; the session is closed."""
        if self.state is CLOSED:
            raise ClientUsageError("the session is closed already")
        self._close()
        return self.client.quit()

    def connection_lost(self) -> None:
        """The I/O layer lost or closed the connection: nothing more can be said."""
        self._close()

    @property
    def usable(self) -> bool:
        """Not closed: refused, broken, RSET refused or QUIT said."""
        return self.state is not CLOSED

    @property
    def reusable(self) -> bool:
        """Idle, and no stray reply queued that would be taken for the answer to the next
        command."""
        return self.state is READY and not self._replies

    # ----- the greeting and EHLO ------------------------------------------------------------

    def _on_greeting(self) -> ClientEvent | None:
        reply = self._replies.popleft()
        if reply.code != 220:
            self._close()
            return HandshakeRefused("greeting", reply)
        self._out.append(self.client.ehlo())
        self._go(EHLO)
        return None

    def _on_ehlo(self) -> ClientEvent | None:
        reply = self._replies.popleft()
        if reply.code == 250:
            self.client.handle_ehlo(reply)
            return self._hello_done()
        if self.lmtp:  # RFC 2033 §4.1: LHLO is all an LMTP server understands
            self._close()
            return HandshakeRefused("lhlo", reply)
        self._out.append(self.client.helo())
        self._go(HELO)
        return None

    def _on_helo(self) -> ClientEvent | None:
        reply = self._replies.popleft()
        if reply.code != 250:
            self._close()
            return HandshakeRefused("helo", reply)
        return self._hello_done()

    def _hello_done(self) -> ClientEvent | None:
        if self.want_tls and not self._tls_tried and self.client.supports("STARTTLS"):
            self._tls_tried = True  # once per connection, offered again after TLS or not
            self._out.append(self.client.starttls())
            self._go(STARTTLS)
            return None
        return self._authenticate()

    def _on_starttls(self) -> ClientEvent | None:
        if self._replies.popleft().code == 220:
            self._go(TLS, 0)
            return StartTlsNow()
        return self._authenticate()  # opportunistic: carry on in clear text

    def _ready(self) -> Ready:
        self._go(READY, 0)
        return Ready(self.tls, self.client.esmtp, self.auth_mechanism)

    # ----- AUTH (RFC 4954) ------------------------------------------------------------------

    def _authenticate(self) -> ClientEvent | None:
        """The handshake is done: AUTH if we have credentials and the server offers it."""
        credentials = self.credentials
        if credentials is None or self.lmtp or not offered_mechanisms(self.client.extensions):
            return self._ready()  # no AUTH offered: deliver without it, as Postfix does
        if not self.tls:  # never a password in clear text
            self._close()
            return AuthFailed("no_tls", "")
        mechanism = choose_mechanism(self.client.extensions)
        if not mechanism:
            self._close()
            return AuthFailed("no_mechanism", "")
        self.auth_mechanism = mechanism
        if mechanism == "PLAIN":
            self._out.append(plain_command(credentials))
            self._go(AUTH)
        else:
            self._out.append(b"AUTH LOGIN\r\n")
            self._go(AUTH_USER)
        return None

    def _on_auth(self) -> ClientEvent | None:
        reply = self._replies.popleft()
        if reply.code != 235:
            return self._auth_refused(reply)
        return self._ready()

    def _on_auth_user(self) -> ClientEvent | None:
        return self._login_step(0, AUTH_PASS)

    def _on_auth_pass(self) -> ClientEvent | None:
        return self._login_step(1, AUTH)

    def _login_step(self, step: int, then: State) -> ClientEvent | None:
        """LOGIN: a 334 challenge is answered (username, then password)."""
        reply = self._replies.popleft()
        if reply.code != 334:
            return self._auth_refused(reply)
        assert self.credentials is not None
        self._out.append(login_line(self.credentials, step))
        self._go(then)
        return None

    def _auth_refused(self, reply: Reply) -> AuthFailed:
        self._close()
        return AuthFailed("refused", self.auth_mechanism, reply)

    # ----- transactions ---------------------------------------------------------------------

    def _on_batch(self) -> ClientEvent | None:
        """The replies to a pipelined MAIL, RCPTs and DATA, all in."""
        take = self._replies.popleft
        mail_reply = take()
        n = self._wanted - 2  # replies wanted: MAIL, every RCPT, DATA
        rcpt_replies = [take()] if n == 1 else [take() for _ in range(n)]
        data_reply = take()
        if not mail_reply.is_positive:
            return self._refused_mail(mail_reply, data_reply)
        return self._after_data(rcpt_replies, data_reply)

    def _on_mail(self) -> ClientEvent | None:
        reply = self._replies.popleft()
        if not reply.is_positive:  # nothing else was said: no RSET needed
            return self._done_with(self._tx_recipients(), reply)
        return self._next_rcpt()

    def _on_rcpt(self) -> ClientEvent | None:
        self._rcpt_replies.append(self._replies.popleft())
        return self._next_rcpt()

    def _next_rcpt(self) -> ClientEvent | None:
        recipients = self._tx_recipients()
        sent = len(self._rcpt_replies)
        if sent < len(recipients):
            recipient = recipients[sent]
            dsn = "" if self._dsn is None else self._dsn.get(recipient, "")
            self._out.append(self.client.rcpt(recipient, dsn))
            self._go(RCPT)
            return None
        if not any(r.is_positive for r in self._rcpt_replies):  # no DATA for nobody
            replies = zip(recipients, self._rcpt_replies, strict=True)
            self._reset([RecipientReply(r, reply) for r, reply in replies])
            return None
        if self._bdat:  # no 354 to wait for: the message goes now (RFC 3030 §2)
            return self._send_bdat(recipients, self._rcpt_replies)
        self._out.append(self.client.data())
        self._go(DATA)
        return None

    def _on_data(self) -> ClientEvent | None:
        return self._after_data(self._rcpt_replies, self._replies.popleft())

    def _after_data(self, rcpt_replies: list[Reply], data_reply: Reply) -> ClientEvent | None:
        """MAIL was accepted: decide on the data phase from the RCPT and DATA replies."""
        tx = self._tx
        assert tx is not None
        recipients = tx.recipients
        message = tx.message
        if len(recipients) == 1 and rcpt_replies[0].is_positive and data_reply.code == 354:
            # the common case, one accepted recipient: no bookkeeping per recipient
            self._accepted = recipients  # and self._outcomes is empty
            if isinstance(message, bytes):  # in memory: out whole now, as the commands were
                self._out.append(dot_stuff(message))
                self._go(MESSAGE)
                return None
            return self._stream(message, 1)
        pairs = list(zip(recipients, rcpt_replies, strict=True))
        accepted = [r for r, reply in pairs if reply.is_positive]
        outcomes = {r: reply for r, reply in pairs if not reply.is_positive}
        if data_reply.code != 354:
            outcomes.update((r, data_reply) for r in accepted)
            self._reset([RecipientReply(r, outcomes[r]) for r in recipients])
            return None
        if not accepted:  # a server that said 354 with no recipient: end it
            self._out.append(dot_stuff(message) if isinstance(message, bytes) else b".\r\n")
            decided = [RecipientReply(r, outcomes[r]) for r in recipients]
            self._abandon(decided, then_rset=False)
            return None
        self._accepted = accepted
        self._outcomes = outcomes
        wanted = len(accepted) if self.lmtp else 1
        if isinstance(message, bytes):
            self._out.append(dot_stuff(message))
            self._go(MESSAGE, wanted)
            return None
        return self._stream(message, wanted)

    def _stream(self, message: StoredMessage, wanted: int) -> SendMessage:
        """After 354 to a stored message: the I/O layer feeds it (STREAM); then ``wanted``
        final replies decide the transaction."""
        self._stuffer = DotStuffer()
        self._stream_left = message.message_length
        self._stream_wanted = wanted
        self._go(STREAM, 0)
        return _SEND_MESSAGE

    def _on_message(self) -> ClientEvent | None:
        accepted = self._accepted
        take = self._replies.popleft
        if self._bdat and not self.lmtp and not self._replies[0].is_positive:
            return self._bdat_refused(take())
        if len(accepted) == 1 and not self._outcomes:  # the common case, LMTP or not
            return self._done([RecipientReply(accepted[0], take())])
        if self.lmtp:  # RFC 2033 §4.2: one reply per accepted recipient, in RCPT order
            self._outcomes.update((r, take()) for r in accepted)
        else:
            final = take()
            if not self._outcomes:  # every recipient was accepted
                return self._done([RecipientReply(r, final) for r in accepted])
            self._outcomes.update((r, final) for r in accepted)
        outcomes = self._outcomes
        return self._done([RecipientReply(r, outcomes[r]) for r in self._tx_recipients()])

    # ----- BDAT (RFC 3030 CHUNKING) ---------------------------------------------------------
    #
    # A message in memory goes as one chunk, "BDAT <octets> LAST" and the octets as they are,
    # with the commands (PIPELINING) or after the last RCPT reply.  A stored message goes as
    # one BDAT command too, counting all its octets, which are then streamed from the file in
    # the I/O layer's chunks: it needs one reply, not one per chunk (without PIPELINING each
    # chunk would be a round trip), and the session still sends exactly message_length octets.
    # The replies: one to the BDAT LAST (LMTP: one per accepted recipient, RFC 2033 §4.2);
    # a refused BDAT ends the transaction with RSET (RFC 3030 §2: after a 4xx/5xx to BDAT
    # the sender must send no more chunks; the server's transaction state is not ours to
    # guess).  A BDAT after a refused MAIL or with no recipient accepted is answered with an
    # error by the server and decides nothing.

    def _bdat_batch(self, batch: list[bytes], message: bytes | StoredMessage) -> None:
        """PIPELINING: MAIL and the RCPTs, and a message in memory as BDAT LAST, in one
        write; a stored message waits for the RCPT replies (no octets for nobody)."""
        wanted = len(batch)
        if isinstance(message, bytes):
            batch.append(_bdat_last(len(message)))
            batch.append(message)
        self._out.append(b"".join(batch))
        self._go(BDAT_BATCH, wanted)

    def _on_bdat_batch(self) -> ClientEvent | None:
        """The replies to the pipelined MAIL and RCPTs are in (the BDAT's follow)."""
        tx = self._tx
        assert tx is not None
        take = self._replies.popleft
        mail_reply = take()
        rcpt_replies = [take() for _ in tx.recipients]
        in_memory = isinstance(tx.message, bytes)
        if not mail_reply.is_positive:
            decided = [RecipientReply(r, mail_reply) for r in tx.recipients]
            if in_memory:  # the BDAT went out too: its (error) reply decides nothing
                self._abandon(decided, then_rset=True)
            else:
                self._reset(decided)
            return None
        if in_memory:
            self._bdat_sent(tx.recipients, rcpt_replies)
            return None
        return self._send_bdat(tx.recipients, rcpt_replies)

    def _send_bdat(self, recipients: list[str], rcpt_replies: list[Reply]) -> ClientEvent | None:
        """After the RCPT replies (one at a time, or a stored message pipelined): send the
        message as BDAT LAST, or stream it, or RSET when nobody was accepted."""
        tx = self._tx
        assert tx is not None
        if not any(r.is_positive for r in rcpt_replies):  # no octets for nobody
            replies = zip(recipients, rcpt_replies, strict=True)
            self._reset([RecipientReply(r, reply) for r, reply in replies])
            return None
        message = tx.message
        if isinstance(message, bytes):
            self._out.append(_bdat_last(len(message)) + message)
            self._bdat_sent(recipients, rcpt_replies)
            return None
        self._accept(recipients, rcpt_replies)
        wanted = len(self._accepted) if self.lmtp else 1
        self._stream(message, wanted)
        self._bdat_header = _bdat_last(message.message_length)
        return _SEND_MESSAGE

    def _bdat_sent(self, recipients: list[str], rcpt_replies: list[Reply]) -> None:
        """BDAT LAST and the message are out: wait for what decides the transaction."""
        self._accept(recipients, rcpt_replies)
        if not self._accepted:  # the server refuses the chunk: that reply decides nothing
            decided = [RecipientReply(r, self._outcomes[r]) for r in recipients]
            self._outcomes = {}
            self._abandon(decided, then_rset=True)
            return
        self._go(MESSAGE, len(self._accepted) if self.lmtp else 1)

    def _accept(self, recipients: list[str], rcpt_replies: list[Reply]) -> None:
        """Who waits for the final reply, and who was decided by their RCPT reply."""
        pairs = list(zip(recipients, rcpt_replies, strict=True))
        self._accepted = [r for r, reply in pairs if reply.is_positive]
        self._outcomes = {r: reply for r, reply in pairs if not reply.is_positive}

    def _bdat_refused(self, reply: Reply) -> ClientEvent | None:
        """SMTP: the BDAT LAST was refused: every accepted recipient gets its reply; RSET."""
        outcomes = self._outcomes
        outcomes.update((r, reply) for r in self._accepted)
        self._reset([RecipientReply(r, outcomes[r]) for r in self._tx_recipients()])
        self._outcomes = {}
        return None

    def _refused_mail(self, mail_reply: Reply, data_reply: Reply) -> ClientEvent | None:
        """A pipelined MAIL was refused: every recipient gets its reply; clean up."""
        decided = [RecipientReply(r, mail_reply) for r in self._tx_recipients()]
        if data_reply.code == 354:  # should not happen; end the data phase cleanly
            self._out.append(b".\r\n")
            self._abandon(decided, then_rset=True)
            return None
        self._reset(decided)
        return None

    def _abandon(self, decided: list[RecipientReply], *, then_rset: bool) -> None:
        """A 354 nobody wanted: the message (or "." alone) is sent, its reply is read."""
        self._decided = decided
        self._then_rset = then_rset
        self._go(ABANDON)

    def _on_abandon(self) -> ClientEvent | None:
        self._replies.popleft()  # the reply to a message nobody wanted decides nothing
        if self._then_rset:
            self._reset(self._decided)
            return None
        return self._done(self._decided)

    def _reset(self, decided: list[RecipientReply]) -> None:
        """RSET after a refused transaction whose outcomes are ``decided`` already."""
        self._decided = decided
        self._out.append(self.client.rset())
        self._go(RSET)

    def _on_rset(self) -> ClientEvent | None:
        if self._replies.popleft().code != 250:
            self._close()  # we cannot tell what state the server is in: do not reuse
            return self._done(self._decided, closed=True)
        return self._done(self._decided)

    # ----- helpers --------------------------------------------------------------------------

    def _tx_recipients(self) -> list[str]:
        assert self._tx is not None
        return self._tx.recipients

    def _done_with(self, recipients: list[str], reply: Reply) -> TransactionDone:
        return self._done([RecipientReply(r, reply) for r in recipients])

    def _done(self, outcomes: list[RecipientReply], *, closed: bool = False) -> TransactionDone:
        """The transaction is over: back to READY, unless the connection was closed."""
        if not closed:
            self._go(READY, 0)
        self._tx = None  # the other transaction fields are set afresh before they are read
        if self._outcomes:
            self._outcomes = {}
        return TransactionDone(outcomes)

    def _go(self, state: State, wanted: int = 1) -> None:
        if state not in TRANSITIONS[self.state]:
            raise ClientUsageError(f"no way from {self.state.value} to {state.value}")
        self.state = state
        self._wanted = wanted

    def _close(self) -> None:
        self.state = CLOSED
        self._wanted = 0

    def _expect_state(self, state: State, what: str) -> None:
        if self.state is not state:
            raise ClientUsageError(f"cannot {what} in state {self.state.value}")


_SEND_MESSAGE = SendMessage()  # immutable and alike: one will do


def _bdat_last(octets: int) -> bytes:
    """The command for the last (here: the only) chunk of ``octets`` octets (RFC 3030)."""
    return b"BDAT %d LAST\r\n" % octets
