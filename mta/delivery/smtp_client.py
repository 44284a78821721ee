"""One outbound SMTP or LMTP connection, driven by a lean asyncio protocol.

It opens (connect timeout), reads the greeting, says EHLO/LHLO (HELO if EHLO is refused),
upgrades with STARTTLS when offered (opportunistic: no certificate check, like Postfix's
``smtp_tls_security_level = may``), and then carries any number of transactions, so the
next message to the same server reuses it.  With PIPELINING, MAIL, every RCPT and DATA go
out in one write (RFC 2920), and the message with its final ``.`` in another.  Each
recipient gets its own result.

Why a Protocol and not StreamReader/StreamWriter: delivery is CPU-bound, and the streams
cost a buffer copy, a reader wake-up per chunk and an ``asyncio.timeout`` (a timer created
and cancelled) per reply.  Here :class:`_ReplyStream` feeds every chunk straight into the
sans-I/O reply parser and wakes the one waiting coroutine only when as many replies as it
asked for are in: one wake-up per phase of a transaction.  The command timeout is one timer
per connection that is re-armed only when it fires early (see :meth:`_ReplyStream.wait`).

Errors are classified here: a failure to connect, a 4xx/5xx greeting or a broken
connection before the server took the message raise :class:`DeliveryError` (temporary),
so the caller tries the next mail exchanger.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from dataclasses import dataclass

from mta.delivery.results import DeliveryError
from mta.protocol.client import ClientConnection, ProtocolError, Reply, ReplyParser
from mta.queue.results import RecipientResult, Status

__all__ = ["OutboundConnection", "Transaction"]


@dataclass(frozen=True, slots=True)
class Transaction:
    sender: str
    recipients: list[str]
    message: bytes
    eight_bit: bool = False
    smtputf8: bool = False


def _tls_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # opportunistic TLS: encryption without authentication
    return context


_TLS = _tls_context()
QUIT_SECONDS = 2.0  # how long quit() waits for the connection to close
# uvloop keeps time in whole milliseconds: a timer may fire up to half of one early, and
# re-arming it for the rest would spin until the clock ticks.
TIMER_SLACK = 0.001


def _closed_by_server() -> ConnectionResetError:
    return ConnectionResetError("connection closed by server")


class _ReplyStream(asyncio.Protocol):
    """The receiving half of one connection: bytes in, complete replies queued.

    At most one coroutine waits at a time (a connection carries one transaction at a
    time); it is woken when the replies it asked for are in, when the connection is lost
    or broken by a bad reply, or when its deadline passes.
    """

    def __init__(self, parser: ReplyParser, loop: asyncio.AbstractEventLoop) -> None:
        # the connection
        self.loop = loop
        self.parser = parser
        self.transport: asyncio.Transport | None = None
        # what was received and not yet taken, or why nothing more will come
        self.replies: deque[Reply] = deque()
        self.lost: Exception | None = None
        self.closed: asyncio.Future[None] = loop.create_future()  # set by connection_lost
        # the one waiting coroutine
        self._waiter: asyncio.Future[None] | None = None
        self._wanted = 0
        self._deadline = 0.0
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.replies.extend(self.parser.feed(data))
        except ProtocolError as exc:
            self._lose(exc)
            if self.transport is not None:
                self.transport.abort()
            return
        if self._waiter is not None and len(self.replies) >= self._wanted:
            self._wake(None)

    def eof_received(self) -> bool:
        self._lose(_closed_by_server())
        return False  # let the transport close itself

    def connection_lost(self, exc: Exception | None) -> None:
        self._lose(exc if exc is not None else _closed_by_server())
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self.closed.done():
            self.closed.set_result(None)

    async def wait(self, wanted: int, timeout: float) -> None:
        """Return once ``wanted`` replies are queued; raise why the connection is lost, or
        TimeoutError after ``timeout`` seconds.

        The timer is not created per call: it stays armed at the first deadline, and when
        it fires before the current (later) deadline it re-arms itself for that one.  The
        timeout is fixed per connection, so deadlines only move later."""
        if len(self.replies) >= wanted:
            return
        if self.lost is not None:
            raise self.lost
        loop = self.loop
        self._deadline = loop.time() + timeout
        if self._timer is None:
            self._timer = loop.call_at(self._deadline, self._on_timer)
        self._wanted = wanted
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


class OutboundConnection:
    def __init__(
        self,
        transport: asyncio.Transport,
        stream: _ReplyStream,
        client: ClientConnection,
        *,
        host: str,
        ip: str,
        port: int,
        command_timeout: float,
    ) -> None:
        self.transport = transport
        self.stream = stream
        self.client = client
        self.host = host
        self.ip = ip
        self.port = port
        self.relay = f"{host}[{ip}]:{port}"
        self.command_timeout = command_timeout
        self.usable = True
        self.tls = False
        self.transactions = 0

    @property
    def reusable(self) -> bool:
        """Fit for the next transaction: not broken, still open, and no stray reply
        queued that would be taken for the answer to the next command."""
        return self.usable and self.stream.lost is None and not self.stream.replies

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
    ) -> OutboundConnection:
        relay = f"{host}[{ip}]:{port}"
        loop = asyncio.get_running_loop()
        client = ClientConnection(helo_name, lmtp=lmtp)
        stream = _ReplyStream(client.parser, loop)
        try:
            async with asyncio.timeout(connect_timeout):
                transport, _ = await loop.create_connection(lambda: stream, ip, port)
        except (OSError, TimeoutError) as exc:
            reason = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
            raise DeliveryError(False, "4.4.1", f"connect to {relay}: {reason}", relay) from None
        conn = cls(
            transport,
            stream,
            client,
            host=host,
            ip=ip,
            port=port,
            command_timeout=command_timeout,
        )
        try:
            await conn._handshake(starttls)
        except DeliveryError:
            conn.abort()
            raise
        return conn

    async def _handshake(self, starttls: bool) -> None:
        greeting = await self._reply()
        if greeting.code != 220:
            raise DeliveryError(
                False,
                greeting.enhanced,
                f"host {self.relay} refused to talk: {greeting.text}",
                self.relay,
            )
        await self._hello()
        if starttls and self.client.supports("STARTTLS"):
            reply = await self._command(self.client.starttls())
            if reply.code == 220:
                await self._start_tls()
                await self._hello()

    async def _start_tls(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.command_timeout):
                transport = await loop.start_tls(
                    self.transport, self.stream, _TLS, server_hostname=None
                )
        except (OSError, ssl.SSLError, TimeoutError) as exc:
            raise DeliveryError(
                False,
                "4.7.5",
                f"TLS handshake with {self.relay} failed: {exc}",
                self.relay,
            ) from None
        if transport is None:  # the loop's way of saying the connection went away
            raise DeliveryError(
                False, "4.7.5", f"TLS handshake with {self.relay} failed", self.relay
            )
        self.transport = self.stream.transport = transport
        self.tls = True

    async def _hello(self) -> None:
        client = self.client
        reply = await self._command(client.ehlo())
        if reply.code == 250:
            client.handle_ehlo(reply)
            return
        if client.lmtp:
            raise DeliveryError(False, reply.enhanced, f"LHLO refused: {reply.text}", self.relay)
        reply = await self._command(client.helo())
        if reply.code != 250:
            raise DeliveryError(False, reply.enhanced, f"HELO refused: {reply.text}", self.relay)

    async def send(self, tx: Transaction) -> list[RecipientResult]:
        """One transaction; results for every recipient of ``tx``."""
        client = self.client
        limit = client.size_limit
        if limit is not None and len(tx.message) > limit:
            return self._all(
                tx,
                "failed",
                "5.3.4",
                f"message size {len(tx.message)} exceeds size limit {limit} of server {self.relay}",
            )
        if tx.smtputf8 and not client.supports("SMTPUTF8"):
            return self._all(tx, "failed", "5.6.7", f"{self.relay} does not support SMTPUTF8")
        self.transactions += 1
        try:
            return await self._transaction(tx)
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

    async def _transaction(self, tx: Transaction) -> list[RecipientResult]:
        client = self.client
        mail = client.mail(
            tx.sender, size=len(tx.message), eight_bit=tx.eight_bit, smtputf8=tx.smtputf8
        )
        rcpts = [client.rcpt(r) for r in tx.recipients]
        if client.supports("PIPELINING"):
            self._write(b"".join([mail, *rcpts, client.data()]))
            await self._expect(len(rcpts) + 2)
            take = self.stream.replies.popleft
            mail_reply = take()
            rcpt_replies = [take() for _ in rcpts]
            data_reply = take()
        else:
            mail_reply = await self._command(mail)
            if not mail_reply.is_positive:
                return self._from_reply(tx.recipients, mail_reply)
            rcpt_replies = [await self._command(r) for r in rcpts]
            if not any(r.is_positive for r in rcpt_replies):
                await self._reset()
                return self._pair(tx.recipients, rcpt_replies)
            data_reply = await self._command(client.data())
        if not mail_reply.is_positive:
            await self._after_refusal(data_reply)
            return self._from_reply(tx.recipients, mail_reply)
        return await self._data(tx, rcpt_replies, data_reply)

    async def _data(
        self, tx: Transaction, rcpt_replies: list[Reply], data_reply: Reply
    ) -> list[RecipientResult]:
        """The data phase, once MAIL was accepted: results for every recipient."""
        recipients = tx.recipients
        if len(recipients) == 1 and rcpt_replies[0].is_positive and data_reply.code == 354:
            # the common case, one accepted recipient: no bookkeeping per recipient
            self._write(self.client.message(tx.message))
            return [self._result(recipients[0], await self._reply())]
        accepted = [
            r for r, reply in zip(recipients, rcpt_replies, strict=True) if reply.is_positive
        ]
        results = {
            r: self._result(r, reply)
            for r, reply in zip(recipients, rcpt_replies, strict=True)
            if not reply.is_positive
        }
        if data_reply.code != 354:
            await self._after_refusal(data_reply)
            results.update((r, self._result(r, data_reply)) for r in accepted)
            return [results[r] for r in recipients]
        self._write(self.client.message(tx.message))
        if not accepted:  # a server that said 354 with no recipient: end the empty message
            await self._reply()
            return [results[r] for r in recipients]
        if self.client.lmtp:  # RFC 2033 §4.2: one reply per accepted recipient
            await self._expect(len(accepted))
            take = self.stream.replies.popleft
            results.update((r, self._result(r, take())) for r in accepted)
        else:
            final = await self._reply()
            results.update((r, self._result(r, final)) for r in accepted)
        return [results[r] for r in recipients]

    async def _after_refusal(self, data_reply: Reply) -> None:
        """After a refused transaction, RSET so the connection can carry the next one."""
        if data_reply.code == 354:  # should not happen; end the data phase cleanly
            self._write(b".\r\n")
            await self._reply()
        await self._reset()

    async def _reset(self) -> None:
        reply = await self._command(self.client.rset())
        if reply.code != 250:
            self.usable = False

    def _result(self, recipient: str, reply: Reply) -> RecipientResult:
        if reply.is_positive:
            status = "sent"
        elif reply.is_transient:
            status = "deferred"
        else:
            status = "failed"
        return RecipientResult(
            address=recipient,
            status=status,  # type: ignore[arg-type]
            dsn=reply.enhanced,
            reply=reply.text,
            relay=self.relay,
            remote_mta=self.host,
        )

    def _from_reply(self, recipients: list[str], reply: Reply) -> list[RecipientResult]:
        return [self._result(r, reply) for r in recipients]

    def _pair(self, recipients: list[str], replies: list[Reply]) -> list[RecipientResult]:
        return [self._result(r, reply) for r, reply in zip(recipients, replies, strict=True)]

    def _all(self, tx: Transaction, status: Status, dsn: str, text: str) -> list[RecipientResult]:
        return [
            RecipientResult(
                address=r,
                status=status,
                dsn=dsn,
                reply=text,
                relay=self.relay,
                remote_mta=self.host,
            )
            for r in tx.recipients
        ]

    def _write(self, data: bytes) -> None:
        """Queue ``data`` for sending; a connection already lost fails here, not later."""
        lost = self.stream.lost
        if lost is not None:
            self.usable = False
            raise DeliveryError(
                False, "4.4.2", f"lost connection with {self.relay}: {lost}", self.relay
            )
        self.transport.write(data)

    async def _command(self, line: bytes) -> Reply:
        self._write(line)
        return await self._reply()

    async def _reply(self) -> Reply:
        stream = self.stream
        if not stream.replies:  # pipelined replies often arrive together: no wait then
            await self._expect(1)
        return stream.replies.popleft()

    async def _expect(self, n: int) -> None:
        """Wait until ``n`` replies are queued; DeliveryError if they do not come in time."""
        try:
            await self.stream.wait(n, self.command_timeout)
        except (OSError, TimeoutError, ProtocolError) as exc:
            self.usable = False
            if isinstance(exc, TimeoutError):
                raise DeliveryError(
                    False, "4.4.2", f"timeout waiting for a reply from {self.relay}", self.relay
                ) from None
            raise DeliveryError(
                False, "4.4.2", f"lost connection with {self.relay}: {exc}", self.relay
            ) from None

    async def quit(self) -> None:
        """Polite close: QUIT, then close without waiting for the 221.  Waits (briefly) until
        the socket is closed, so that what the transport still holds, and over TLS the
        close_notify exchange, is done before the event loop may stop."""
        if self.usable and self.stream.lost is None:
            self.transport.write(self.client.quit())
        self.abort()
        await asyncio.wait([self.stream.closed], timeout=QUIT_SECONDS)

    def abort(self) -> None:
        self.usable = False
        self.transport.close()
