"""One outbound SMTP or LMTP connection: the transport around a sans-I/O client session.

What is said, and what each reply means, is decided by
:class:`~mta.protocol.client_session.ClientSession` (EHLO/LHLO, HELO when EHLO is refused,
STARTTLS, PIPELINING, RSET after a refusal, LMTP's reply per recipient, the SIZE and
SMTPUTF8 and REQUIRETLS checks; a REQUIRETLS message also needs this connection's policy
to authenticate the peer, else QUIT and a permanent ``5.7.30`` DeliveryError, so the
caller tries the next server, :mod:`mta.delivery.requiretls`).  This module
does the I/O around it: it connects (connect timeout), writes what the session says, waits
until the replies the session needs are in (command timeout), does the TLS handshake when
the session says so, holds the connection to its
:class:`~mta.delivery.tls_policy.TlsPolicy` (SNI always sent for a host name; ``encrypt``
and ``verify`` defer a server without STARTTLS with ``4.7.4``, a failed handshake with
``4.7.5``, and ``verify`` a certificate that does not verify or name the server with
``4.7.5``, ``dane`` a chain that matches none of the policy's TLSA records with
``4.7.5`` (:mod:`mta.delivery.dane`); ``may`` lets the caller retry a failed handshake in
plaintext, see :class:`TlsHandshakeError`), and turns the session's outcomes
into one :class:`RecipientResult` per recipient, named with this connection's relay.  A
connection carries any number of transactions, so the next message to the same server
reuses it.

Why a Protocol and not StreamReader/StreamWriter: delivery is CPU-bound, and the streams
cost a buffer copy, a reader wake-up per chunk and an ``asyncio.timeout`` (a timer created
and cancelled) per reply.  Here :class:`_ReplyStream` feeds every chunk straight into the
session and wakes the one waiting coroutine only when the replies the session waits for
are in: one wake-up per phase of a transaction.  The command timeout is one timer per
connection that is re-armed only when it fires early (see :meth:`_ReplyStream.wait`).

A stored message (one too large to hold in memory, :mod:`mta.delivery.stored`) is sent from
its file after the ``354`` (event :class:`SendMessage`): a chunk is read (plain reads: the
file is in the page cache, having just been written or read to verify it), dot-stuffed by
the session and written, and the next chunk is read only while the transport is not paused
(``pause_writing``/``resume_writing``), so the transport holds at most its high-water mark
and one chunk, over TLS too.  Each wait for the transport to drain has the command timeout.
If reading the message fails midway, the connection is aborted, never ended with the ``.``
line, and :class:`~mta.delivery.stored.MessageReadError` goes up to the caller: it is the
message's trouble, not the server's, so no other server is tried for it.

A smarthost: with ``credentials`` the session authenticates after the last EHLO, only over
TLS (:mod:`mta.protocol.client_auth`).  A refusal (``535``) defers, as Postfix's default
``smtp_sasl_auth_soft_bounce = yes`` does (the server's enhanced code with a ``4``), so the
next server is tried and the message retried; a server that offers AUTH on a connection
without TLS gets no password (``4.7.0``, or ``4.7.4`` where TLS was required anyway); one
that offers no AUTH gets the mail without it, with a warning (Postfix delivers too).  With
``implicit_tls`` the connection is TLS from the first byte (RFC 8314; Postfix's
``smtp_tls_wrappermode``) and held to the policy as a STARTTLS connection is.

Errors are classified here: a failure to connect, a refused greeting, LHLO or HELO, a
failed TLS handshake, or a broken or silent connection before the server took the message
raise :class:`DeliveryError` (temporary), so the caller tries the next mail exchanger.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from dataclasses import replace

from mta import metrics
from mta.delivery import dane, mime_7bit, requiretls
from mta.delivery.results import DeliveryError
from mta.delivery.smtp_auth import auth_error, log_auth
from mta.delivery.stored import read_chunks
from mta.delivery.tls_policy import TlsPolicy, cert_matches, client_context, sni_for
from mta.protocol.client import ClientConnection, ProtocolError, Reply
from mta.protocol.client_auth import Credentials
from mta.protocol.client_events import (
    AuthFailed,
    ClientEvent,
    HandshakeRefused,
    Ready,
    SendMessage,
    StartTlsNow,
    StoredMessage,
    Transaction,
    TransactionDone,
    TransactionNotSent,
)
from mta.protocol.client_session import ClientSession
from mta.queue.results import RecipientResult, Status

__all__ = [
    "OutboundConnection",
    "TlsDaneError",
    "TlsHandshakeError",
    "TlsNotOfferedError",
    "TlsUntrustedError",
    "Transaction",
]

log = logging.getLogger("mta.delivery")

_TLS = client_context(verified=False)  # for callers that give no context of their own
MAY = TlsPolicy("may")


class TlsHandshakeError(DeliveryError):
    """The STARTTLS handshake failed (not a failed verification): under ``may`` the caller
    tries the same host once more in plaintext, as Postfix does."""


class TlsUntrustedError(DeliveryError):
    """``verify``: the certificate's chain or name did not verify; never retried."""


class TlsDaneError(TlsUntrustedError):
    """``dane``: the certificate chain matched none of the TLSA records; never retried."""


class TlsNotOfferedError(DeliveryError):
    """``encrypt``/``verify``: the server did not offer STARTTLS."""


def _outcome(exc: DeliveryError) -> str:
    """The metric's outcome for a connection that failed before its first transaction."""
    if isinstance(exc, TlsHandshakeError):
        return "failed"
    if isinstance(exc, TlsDaneError):
        return "dane_failed"
    if isinstance(exc, TlsUntrustedError):
        return "untrusted"
    return "not_offered" if isinstance(exc, TlsNotOfferedError) else "other"


QUIT_SECONDS = 2.0  # how long quit() waits for the connection to close
# uvloop keeps time in whole milliseconds: a timer may fire up to half of one early, and
# re-arming it for the rest would spin until the clock ticks.
TIMER_SLACK = 0.001


def _closed_by_server() -> ConnectionResetError:
    return ConnectionResetError("connection closed by server")


class _ReplyStream(asyncio.Protocol):
    """The receiving half of one connection: bytes into the session, one wake-up when the
    replies it waits for are in.

    At most one coroutine waits at a time (a connection carries one transaction at a
    time); it is woken when the session has its replies, when the connection is lost
    or broken by a bad reply, or when its deadline passes.
    """

    def __init__(self, session: ClientSession, loop: asyncio.AbstractEventLoop) -> None:
        # the connection
        self.loop = loop
        self.session = session
        self.transport: asyncio.Transport | None = None
        # why nothing more will come
        self.lost: Exception | None = None
        self.closed: asyncio.Future[None] = loop.create_future()  # set by connection_lost
        # flow control: the transport holds more than its high-water mark
        self.paused = False
        # the one waiting coroutine
        self._waiter: asyncio.Future[None] | None = None
        self._deadline = 0.0
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            replies_in = self.session.receive_data(data)
        except ProtocolError as exc:
            self._lose(exc)
            if self.transport is not None:
                self.transport.abort()
            return
        if replies_in and self._waiter is not None:
            self._wake(None)

    def eof_received(self) -> bool:
        self._lose(_closed_by_server())
        return False  # let the transport close itself

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self._wake(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self._lose(exc if exc is not None else _closed_by_server())
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self.closed.done():
            self.closed.set_result(None)

    async def wait(self, timeout: float) -> None:
        """Return once the replies the session waits for are in; raise why the connection
        is lost, or TimeoutError after ``timeout`` seconds.

        The timer is not created per call: it stays armed at the first deadline, and when
        it fires before the current (later) deadline it re-arms itself for that one.  The
        timeout is fixed per connection, so deadlines only move later."""
        if self.session.replies_in:
            return
        if self.lost is not None:
            raise self.lost
        loop = self.loop
        self._deadline = loop.time() + timeout
        if self._timer is None:
            self._timer = loop.call_at(self._deadline, self._on_timer)
        self._waiter = loop.create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    async def writable(self, timeout: float) -> None:
        """Return once the transport is not paused; raise why the connection is lost, or
        TimeoutError when it stayed paused for ``timeout`` seconds.  A wake-up for a reply
        that came meanwhile (a server may answer early) only makes it look again."""
        loop = self.loop
        deadline = loop.time() + timeout
        while self.paused:
            if self.lost is not None:
                raise self.lost
            if loop.time() + TIMER_SLACK >= deadline:
                raise TimeoutError()
            self._deadline = deadline
            if self._timer is None:
                self._timer = loop.call_at(deadline, self._on_timer)
            self._waiter = loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    def _on_timer(self) -> None:
        self._timer = None
        if self._waiter is None:
            return  # idle: the next wait arms a new timer
        if self.loop.time() + TIMER_SLACK >= self._deadline:
            self._wake(TimeoutError())
        else:
            self._timer = self.loop.call_at(self._deadline, self._on_timer)

    def _lose(self, exc: Exception) -> None:
        if self.lost is None:
            self.lost = exc
        self._wake(self.lost)

    def _wake(self, exc: Exception | None) -> None:
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        if exc is None:
            waiter.set_result(None)
        else:
            waiter.set_exception(exc)


def _seven_bit(tx: Transaction, relay: str) -> Transaction:
    """RFC 6152 §3: an 8-bit body to a server without 8BITMIME is converted to 7-bit where
    its MIME structure allows (:mod:`mta.delivery.mime_7bit`; a copy for this attempt, the
    queued file is never changed), else sent as it is and logged, as Postfix does."""
    message = tx.message
    if not isinstance(message, bytes):
        if tx.eight_bit:  # too large to hold: not converted
            log.warning("%s offers no 8BITMIME: large 8-bit message sent as is", relay)
        return tx
    if message.isascii():
        return replace(tx, eight_bit=False) if tx.eight_bit else tx
    converted = mime_7bit.to_7bit(message)
    if converted is None:
        log.warning("%s offers no 8BITMIME: 8-bit message not MIME, sent as is", relay)
        return tx
    metrics.DELIVERY_8BIT_CONVERTED.inc()
    return replace(tx, message=converted, eight_bit=False)


def _untrusted(relay: str, why: str) -> TlsUntrustedError:
    """A certificate that ``verify`` cannot accept: defer, never fall back."""
    return TlsUntrustedError(
        False, "4.7.5", f"Server certificate not verified for {relay}: {why}", relay
    )


async def _connect(
    loop: asyncio.AbstractEventLoop,
    stream: _ReplyStream,
    ip: str,
    port: int,
    timeout: float,
    relay: str,
    policy: TlsPolicy,
    context: ssl.SSLContext | None,
    sni: str | None,
    bind: str = "",
) -> asyncio.Transport:
    """Connect, from source address ``bind`` if given; with ``context``, TLS first
    (implicit TLS, RFC 8314 §3.3), its failures classified as STARTTLS's are."""
    # server_hostname "" sends no SNI (an address); None is all create_connection takes
    # without ssl
    hostname = (sni or "") if context is not None else None
    try:
        async with asyncio.timeout(timeout):
            transport, _ = await loop.create_connection(
                lambda: stream,
                ip,
                port,
                ssl=context,
                server_hostname=hostname,
                local_addr=(bind, 0) if bind else None,
            )
    except ssl.SSLCertVerificationError as exc:
        metrics.DELIVERY_TLS.labels(policy.level, "untrusted").inc()
        raise _untrusted(relay, exc.verify_message or str(exc)) from None
    except ssl.SSLError as exc:
        metrics.DELIVERY_TLS.labels(policy.level, "failed").inc()
        text = f"TLS handshake with {relay} failed: {exc}"
        raise TlsHandshakeError(False, "4.7.5", text, relay) from None
    except (OSError, TimeoutError) as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
        raise DeliveryError(False, "4.4.1", f"connect to {relay}: {reason}", relay) from None
    return transport


class OutboundConnection:
    """One connection to one server: transactions in, one result per recipient out."""

    def __init__(
        self,
        transport: asyncio.Transport,
        stream: _ReplyStream,
        session: ClientSession,
        *,
        host: str,
        ip: str,
        port: int,
        command_timeout: float,
        policy: TlsPolicy = MAY,
        context: ssl.SSLContext = _TLS,
        credentials: Credentials | None = None,
    ) -> None:
        self.transport = transport
        self.stream = stream
        self.session = session
        self.host = host
        self.ip = ip
        self.port = port
        self.relay = f"{host}[{ip}]:{port}"
        self.command_timeout = command_timeout
        self.tls = False
        self.policy = policy
        self.context = context
        self.tls_summary = "none"  # for log lines: "none", "TLSv1.3 unverified", ...
        self.transactions = 0
        self.credentials = credentials  # AUTH to this server

    @property
    def client(self) -> ClientConnection:
        """What the server told us about itself (its EHLO extensions)."""
        return self.session.client

    @property
    def usable(self) -> bool:
        """Not aborted, broken, or left unusable by a refused RSET."""
        return self.session.usable

    @property
    def reusable(self) -> bool:
        """Fit for the next transaction: not broken, still open, and no stray reply
        queued that would be taken for the answer to the next command."""
        return self.stream.lost is None and self.session.reusable

    @classmethod
    async def open(
        cls,
        *,
        host: str,
        ip: str,
        port: int,
        helo_name: str,
        lmtp: bool = False,
        starttls: bool = True,
        connect_timeout: float = 30.0,
        command_timeout: float = 300.0,
        policy: TlsPolicy | None = None,
        context: ssl.SSLContext | None = None,
        credentials: Credentials | None = None,
        implicit_tls: bool = False,
        bind: str = "",
        chunking: bool = True,
    ) -> OutboundConnection:
        """Connect (from source address ``bind`` if given) and greet; ``policy`` (default:
        ``may``, or ``none`` when not ``starttls``) decides what TLS must achieve, with
        ``context`` (default: one that checks no certificate, which suits all but
        ``verify``); ``credentials``: AUTH to this server; ``implicit_tls``: TLS before the
        greeting (port 465, RFC 8314); ``chunking``: BDAT to a server that offers CHUNKING
        (RFC 3030), else DATA."""
        if policy is None:
            policy = MAY if starttls else TlsPolicy("none")
        context = context or _TLS
        relay = f"{host}[{ip}]:{port}"
        loop = asyncio.get_running_loop()
        session = ClientSession(
            helo_name,
            lmtp=lmtp,
            starttls=policy.starttls,
            credentials=credentials,
            tls=implicit_tls,
            chunking=chunking,
        )
        stream = _ReplyStream(session, loop)
        tls_first = context if implicit_tls else None
        transport = await _connect(
            loop, stream, ip, port, connect_timeout, relay, policy, tls_first, sni_for(host), bind
        )
        conn = cls(
            transport,
            stream,
            session,
            host=host,
            ip=ip,
            port=port,
            command_timeout=command_timeout,
            policy=policy,
            context=context,
            credentials=credentials,
        )
        try:
            if implicit_tls:
                conn._tls_up(transport)
            await conn._handshake()
        except DeliveryError as exc:
            metrics.DELIVERY_TLS.labels(policy.level, _outcome(exc)).inc()
            # aborted, not closed: nothing is owed to a server refused or not trusted (and
            # a TLS close would wait for its close_notify)
            conn.session.connection_lost()
            conn.transport.abort()
            raise
        outcome = conn.tls_summary.rpartition(" ")[2] if conn.tls else "plaintext"
        metrics.DELIVERY_TLS.labels(policy.level, outcome).inc()
        return conn

    async def _handshake(self) -> None:
        """Greeting, EHLO (or HELO), STARTTLS and AUTH, as the session decides."""
        while True:
            event = await self._run()
            if isinstance(event, StartTlsNow):
                await self._start_tls()
                self.session.tls_started()
            elif isinstance(event, HandshakeRefused):
                raise self._refused(event)
            elif isinstance(event, AuthFailed):
                if event.reason == "no_tls" and self.policy.required:
                    raise self._tls_not_offered()
                raise auth_error(event, self.relay)
            else:
                break
        if self.policy.required and not self.tls:
            raise self._tls_not_offered()
        if isinstance(event, Ready) and self.credentials is not None:
            log_auth(self.relay, self.credentials, event)

    def _tls_not_offered(self) -> TlsNotOfferedError:
        return TlsNotOfferedError(
            False,
            "4.7.4",
            f"TLS is required, but was not offered by host {self.relay}",
            self.relay,
        )

    def _refused(self, event: HandshakeRefused) -> DeliveryError:
        reply = event.reply
        if event.stage == "greeting":
            text = f"host {self.relay} refused to talk: {reply.text}"
        else:
            text = f"{event.stage.upper()} refused: {reply.text}"
        return DeliveryError(False, reply.enhanced, text, self.relay)

    async def _start_tls(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.command_timeout):
                transport = await loop.start_tls(
                    self.transport,
                    self.stream,
                    self.context,
                    server_hostname=sni_for(self.host),
                )
        except ssl.SSLCertVerificationError as exc:
            raise self._untrusted(exc.verify_message or str(exc)) from None
        except (OSError, TimeoutError) as exc:  # ssl.SSLError is an OSError
            what = "timed out" if isinstance(exc, TimeoutError) else str(exc)
            raise TlsHandshakeError(
                False, "4.7.5", f"TLS handshake with {self.relay} failed: {what}", self.relay
            ) from None
        if transport is None:  # the loop's way of saying the connection went away
            raise TlsHandshakeError(
                False, "4.7.5", f"TLS handshake with {self.relay} failed", self.relay
            )
        self._tls_up(transport)

    def _tls_up(self, transport: asyncio.Transport) -> None:
        """The handshake is done (STARTTLS or implicit): hold the peer to the policy."""
        policy = self.policy
        self.transport = self.stream.transport = transport
        self.tls = True
        tls = transport.get_extra_info("ssl_object")
        version = tls.version() if tls is not None else "TLS"
        if policy.verified:
            cert = tls.getpeercert() if tls is not None else None
            if not cert or not cert_matches(cert, policy.match):
                names = ", ".join(policy.match)
                raise self._untrusted(f"certificate does not match {names}")
        authenticated = policy.verified or policy.level == "dane"
        if policy.level == "dane":
            self._check_dane(tls)
            trust = "dane"
        else:
            trust = "verified" if policy.verified else "unverified"
        self.tls_summary = " ".join(filter(None, (version, policy.source, trust)))
        cipher = tls.cipher() if tls is not None else None
        # Postfix: "Untrusted/Verified TLS connection established to ...: TLSv1.3 with ..."
        log.info(
            "%s TLS connection established to %s: %s with cipher %s",
            "Verified" if authenticated else "Untrusted",
            self.relay,
            version,
            cipher[0] if cipher else "unknown",
        )

    def _check_dane(self, tls: ssl.SSLObject | None) -> None:
        """RFC 7672 §3: the presented chain must match a TLSA record of the policy."""
        chain = dane.presented_chain(tls) if tls is not None else []
        why = dane.check_chain(chain, self.policy.tlsa, self.policy.match)
        if why:
            raise TlsDaneError(
                False,
                "4.7.5",
                f"Server certificate not trusted for {self.relay}: DANE: {why}",
                self.relay,
            )

    def _untrusted(self, why: str) -> TlsUntrustedError:
        return _untrusted(self.relay, why)

    async def send(self, tx: Transaction) -> list[RecipientResult]:
        """One transaction; results for every recipient of ``tx``."""
        if tx.require_tls and not (self.tls and requiretls.authenticated(self.policy)):
            raise await self._no_requiretls()
        if not self.session.client.supports("8BITMIME"):
            tx = _seven_bit(tx, self.relay)
        not_sent = self.session.start_transaction(tx)
        if not_sent is not None:
            if not_sent.reason == "requiretls":
                raise await self._no_requiretls()
            return self._not_sent(tx, not_sent)
        self.transactions += 1
        try:
            event = await self._run()
            if isinstance(event, SendMessage):  # 354 to a stored message: send it now
                message = tx.message
                assert not isinstance(message, bytes)
                await self._send_stored(message)
                event = await self._run()
        except DeliveryError:  # no reply in time, or the server hung up: close our side too
            self.abort()
            raise
        except (OSError, TimeoutError, ProtocolError) as exc:
            self.abort()
            what = "timeout" if isinstance(exc, TimeoutError) else str(exc) or type(exc).__name__
            raise DeliveryError(
                False,
                "4.4.2",
                f"lost connection with {self.relay} while sending: {what}",
                self.relay,
            ) from None
        assert isinstance(event, TransactionDone)
        outcomes = event.outcomes
        if len(outcomes) == 1:  # the common case: no comprehension
            return [self._result(outcomes[0].recipient, outcomes[0].reply)]
        result = self._result
        return [result(o.recipient, o.reply) for o in outcomes]

    async def _run(self) -> ClientEvent:
        """Write what the session says and wait for the replies it needs, until it
        decides something.  One wait (one wake-up) per phase, no coroutine in between."""
        session = self.session
        stream = self.stream
        # Every caller has just begun a phase (connected, TLS done, a transaction queued):
        # the session can only move on with replies, so send and wait first.
        while True:
            data = session.data_to_send()
            if data:
                self._write(data)
            try:
                await stream.wait(self.command_timeout)
            except (OSError, TimeoutError, ProtocolError) as exc:
                raise self._no_reply(exc) from None
            event = session.next_event()
            if event is not None:
                return event

    async def _send_stored(self, message: StoredMessage) -> None:
        """Feed a stored message to the session chunk by chunk, each written only while
        the transport takes more (see the module docstring).  A failure to read it aborts
        the connection mid-message and is raised as it is."""
        session = self.session
        stream = self.stream
        chunks = read_chunks(message)
        try:
            for chunk in chunks:
                self._write(session.message_data(chunk))
                if stream.paused:
                    try:
                        await stream.writable(self.command_timeout)
                    except (OSError, TimeoutError) as exc:
                        raise self._not_drained(exc) from None
            self._write(session.end_message())
        except BaseException:
            # Whatever stopped us, the message must not be ended half sent; and what the
            # transport holds is dropped (close() would still send it to a stalled server).
            self.session.connection_lost()
            self.transport.abort()
            raise
        finally:
            chunks.close()

    def _not_drained(self, exc: Exception) -> DeliveryError:
        """Why the server stopped taking the message (in time)."""
        self.session.connection_lost()
        what = "timeout" if isinstance(exc, TimeoutError) else str(exc) or type(exc).__name__
        return DeliveryError(
            False, "4.4.2", f"lost connection with {self.relay} while sending: {what}", self.relay
        )

    def _result(self, recipient: str, reply: Reply) -> RecipientResult:
        """The recipient's result from the reply that decided it: 2xx/3xx sent, 4xx
        deferred, anything else failed (Reply.is_positive and is_transient, spelled out:
        this runs once per recipient)."""
        code = reply.code
        status: Status
        if 200 <= code < 400:
            status = "sent"
        elif 400 <= code < 500:
            status = "deferred"
        else:
            status = "failed"
        return RecipientResult(
            address=recipient,
            status=status,
            dsn=reply.enhanced,
            reply=reply.text,
            relay=self.relay,
            remote_mta=self.host,
            tls=self.tls_summary,
            dsn_passed="DSN" in self.session.client.extensions,  # RFC 3461 §5.2
        )

    def _not_sent(self, tx: Transaction, why: TransactionNotSent) -> list[RecipientResult]:
        if why.reason == "size":
            text = f"message size {why.size} exceeds size limit {why.limit} of server {self.relay}"
            return self._all(tx, "failed", "5.3.4", text)
        return self._all(tx, "failed", "5.6.7", f"{self.relay} does not support SMTPUTF8")

    async def _no_requiretls(self) -> DeliveryError:
        """RFC 8689 §4.2.1: a REQUIRETLS message and a server that does not offer it over
        verified TLS: QUIT, and the caller tries the next server; if none will do, the
        error fails the recipients (5.7.30)."""
        await self.quit()
        text = f"REQUIRETLS support required: not offered over verified TLS by {self.relay}"
        return DeliveryError(True, requiretls.REQUIRETLS_DSN, text, self.relay)

    def _all(self, tx: Transaction, status: Status, dsn: str, text: str) -> list[RecipientResult]:
        return [
            RecipientResult(
                address=r,
                status=status,
                dsn=dsn,
                reply=text,
                relay=self.relay,
                remote_mta=self.host,
                tls=self.tls_summary,
            )
            for r in tx.recipients
        ]

    def _write(self, data: bytes) -> None:
        """Queue ``data`` for sending; a connection already lost fails here, not later."""
        lost = self.stream.lost
        if lost is not None:
            self.session.connection_lost()
            raise DeliveryError(
                False, "4.4.2", f"lost connection with {self.relay}: {lost}", self.relay
            )
        self.transport.write(data)

    def _no_reply(self, exc: Exception) -> DeliveryError:
        """Why the replies the session waits for did not come (in time)."""
        self.session.connection_lost()
        if isinstance(exc, TimeoutError):
            return DeliveryError(
                False, "4.4.2", f"timeout waiting for a reply from {self.relay}", self.relay
            )
        return DeliveryError(
            False, "4.4.2", f"lost connection with {self.relay}: {exc}", self.relay
        )

    async def quit(self) -> None:
        """Polite close: QUIT, then close without waiting for the 221.  Waits (briefly) until
        the socket is closed, so that what the transport still holds, and over TLS the
        close_notify exchange, is done before the event loop may stop."""
        if self.session.usable and self.stream.lost is None:
            self.transport.write(self.session.quit())
        self.abort()
        await asyncio.wait([self.stream.closed], timeout=QUIT_SECONDS)

    def abort(self) -> None:
        self.session.connection_lost()
        self.transport.close()
