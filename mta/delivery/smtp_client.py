"""One outbound SMTP or LMTP connection, driven over asyncio streams.

It opens (connect timeout), reads the greeting, says EHLO/LHLO (HELO if EHLO is refused),
upgrades with STARTTLS when offered (opportunistic: no certificate check, like Postfix's
``smtp_tls_security_level = may``), and then carries any number of transactions, so the
next message to the same server reuses it.  With PIPELINING, MAIL, every RCPT and DATA go
out in one write (RFC 2920).  Each recipient gets its own result.

Errors are classified here: a failure to connect, a 4xx/5xx greeting or a broken
connection before the server took the message raise :class:`DeliveryError` (temporary),
so the caller tries the next mail exchanger.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass

from mta.delivery.results import DeliveryError, RecipientResult, Status
from mta.protocol.client import ClientConnection, ProtocolError, Reply

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


class OutboundConnection:
    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        client: ClientConnection,
        *,
        host: str,
        ip: str,
        port: int,
        command_timeout: float,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.client = client
        self.host = host
        self.ip = ip
        self.port = port
        self.command_timeout = command_timeout
        self.usable = True
        self.tls = False
        self.transactions = 0
        self._replies: list[Reply] = []

    @property
    def relay(self) -> str:
        return f"{self.host}[{self.ip}]:{self.port}"

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
        try:
            async with asyncio.timeout(connect_timeout):
                reader, writer = await asyncio.open_connection(ip, port, limit=1 << 20)
        except (OSError, TimeoutError) as exc:
            reason = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
            raise DeliveryError(False, "4.4.1", f"connect to {relay}: {reason}", relay) from None
        conn = cls(
            reader,
            writer,
            ClientConnection(helo_name, lmtp=lmtp),
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
                try:
                    async with asyncio.timeout(self.command_timeout):
                        await self.writer.start_tls(_TLS, server_hostname=None)
                except (OSError, ssl.SSLError, TimeoutError) as exc:
                    raise DeliveryError(
                        False,
                        "4.7.5",
                        f"TLS handshake with {self.relay} failed: {exc}",
                        self.relay,
                    ) from None
                self.tls = True
                await self._hello()

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
        except (OSError, TimeoutError, ProtocolError, asyncio.IncompleteReadError) as exc:
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
            self.writer.write(b"".join([mail, *rcpts, client.data()]))
            mail_reply = await self._reply()
            rcpt_replies = [await self._reply() for _ in rcpts]
            data_reply = await self._reply()
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
        accepted = [
            r for r, reply in zip(tx.recipients, rcpt_replies, strict=True) if reply.is_positive
        ]
        results = {
            r: self._result(r, reply)
            for r, reply in zip(tx.recipients, rcpt_replies, strict=True)
            if not reply.is_positive
        }
        if data_reply.code != 354:
            await self._after_refusal(data_reply)
            results.update((r, self._result(r, data_reply)) for r in accepted)
            return [results[r] for r in tx.recipients]
        self.writer.write(client.message(tx.message))
        if not accepted:  # a server that said 354 with no recipient: end the empty message
            await self._reply()
            return [results[r] for r in tx.recipients]
        if client.lmtp:  # RFC 2033 §4.2: one reply per accepted recipient
            for recipient in accepted:
                results[recipient] = self._result(recipient, await self._reply())
        else:
            final = await self._reply()
            results.update((r, self._result(r, final)) for r in accepted)
        return [results[r] for r in tx.recipients]

    async def _after_refusal(self, data_reply: Reply) -> None:
        """After a refused transaction, RSET so the connection can carry the next one."""
        if data_reply.code == 354:  # should not happen; end the data phase cleanly
            self.writer.write(b".\r\n")
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

    async def _command(self, line: bytes) -> Reply:
        self.writer.write(line)
        return await self._reply()

    async def _reply(self) -> Reply:
        if self._replies:  # pipelined replies often arrive together: no wait, no timer
            return self._replies.pop(0)
        try:
            async with asyncio.timeout(self.command_timeout):
                while not self._replies:
                    data = await self.reader.read(65536)
                    if not data:
                        raise ConnectionResetError("connection closed by server")
                    self._replies.extend(self.client.receive_data(data))
        except (OSError, TimeoutError, ProtocolError) as exc:
            self.usable = False
            if isinstance(exc, TimeoutError):
                raise DeliveryError(
                    False, "4.4.2", f"timeout waiting for a reply from {self.relay}", self.relay
                ) from None
            raise DeliveryError(
                False, "4.4.2", f"lost connection with {self.relay}: {exc}", self.relay
            ) from None
        return self._replies.pop(0)

    async def quit(self) -> None:
        """Polite close: QUIT, then close without waiting long for the 221."""
        if self.usable:
            try:
                self.writer.write(self.client.quit())
                async with asyncio.timeout(2):
                    await self.writer.drain()
            except (OSError, TimeoutError):
                pass
        self.abort()

    def abort(self) -> None:
        self.usable = False
        self.writer.close()
