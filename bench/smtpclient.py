"""A lean asyncio SMTP client for the load generator, plus the test messages it sends.

It is a bare :class:`asyncio.Protocol` (no streams) so that one generator process can run
thousands of sessions without becoming the bottleneck: replies are split into lines as
they arrive and handed to whoever waits for them; writes respect the transport's flow
control.  Failures are reported as :class:`SmtpError` carrying a short label for the
"errors by reply code" table: ``"MAIL 451"``, ``"connect ECONNREFUSED"``, ``"timeout"``.
"""

from __future__ import annotations

import asyncio
import errno
import random
import ssl
from collections import deque

__all__ = ["Connection", "SmtpError", "build_message", "open_session"]


class SmtpError(Exception):
    """A session or transaction went wrong; ``label`` is what the error table counts."""

    def __init__(self, label: str, fatal: bool = True) -> None:
        super().__init__(label)
        self.label = label
        self.fatal = fatal  # the connection is unusable afterwards


class _ReplyProtocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._buf = b""
        self._continued: list[bytes] = []
        self.replies: deque[tuple[int, bytes]] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._need = 0
        self._drain: asyncio.Future[None] | None = None
        self.lost: BaseException | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buf = self._buf + data if self._buf else data
        start = 0
        while (end := buf.find(b"\n", start)) >= 0:
            line = buf[start : end + 1]
            start = end + 1
            if line[3:4] == b"-":
                self._continued.append(line)
                continue
            code = int(line[:3]) if line[:3].isdigit() else 0
            text = b"".join(self._continued) + line if self._continued else line
            self._continued = []
            self.replies.append((code, text))
        self._buf = buf[start:]
        self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = exc or ConnectionResetError("closed by server")
        self._wake()
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    def pause_writing(self) -> None:
        self._drain = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)
        self._drain = None

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        if len(self.replies) >= self._need or self.lost is not None:
            waiter.set_result(None)

    async def wait_replies(self, count: int) -> list[tuple[int, bytes]]:
        while len(self.replies) < count:
            if self.lost is not None:
                raise SmtpError("closed")
            self._need = count
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
            self._waiter = None
        return [self.replies.popleft() for _ in range(count)]

    async def drain(self) -> None:
        if self._drain is not None:
            await self._drain
        if self.lost is not None:
            raise SmtpError("closed")


class Connection:
    """One SMTP session after its greeting and EHLO."""

    def __init__(self, protocol: _ReplyProtocol, extensions: set[str]) -> None:
        self.protocol = protocol
        self.extensions = extensions

    @property
    def pipelining(self) -> bool:
        return "PIPELINING" in self.extensions

    def write(self, data: bytes) -> None:
        transport = self.protocol.transport
        if transport is None or self.protocol.lost is not None:
            raise SmtpError("closed")
        transport.write(data)

    async def command(self, line: bytes, stage: str, expect: int) -> int:
        self.write(line)
        ((code, _),) = await self.protocol.wait_replies(1)
        if code != expect:
            raise SmtpError(f"{stage} {code}", fatal=code in (0, 421))
        return code

    def close(self, quit_first: bool = True) -> None:
        transport = self.protocol.transport
        if transport is None or transport.is_closing():
            return
        if quit_first and self.protocol.lost is None:
            transport.write(b"QUIT\r\n")
        transport.close()


def _ehlo_keywords(text: bytes) -> set[str]:
    words = set()
    for line in text.split(b"\n")[1:]:
        keyword = line[4:].split(b" ", 1)[0].strip().upper()
        if keyword:
            words.add(keyword.decode("ascii", "replace"))
    return words


async def open_session(
    host: str, port: int, helo: str, tls: ssl.SSLContext | None = None
) -> Connection:
    """Connect, read the greeting, EHLO (and STARTTLS + EHLO again when ``tls`` is given)."""
    loop = asyncio.get_running_loop()
    try:
        _, protocol = await loop.create_connection(_ReplyProtocol, host, port)
    except OSError as exc:
        raise SmtpError(f"connect {errno.errorcode.get(exc.errno or 0, 'error')}") from None
    conn = Connection(protocol, set())
    try:
        ((code, _),) = await protocol.wait_replies(1)
        if code != 220:
            raise SmtpError(f"greeting {code}")
        conn.extensions = await _ehlo(conn, helo)
        if tls is not None:
            await _starttls(conn, host, tls)
            conn.extensions = await _ehlo(conn, helo)
    except BaseException:
        conn.close(quit_first=False)
        raise
    return conn


async def _ehlo(conn: Connection, helo: str) -> set[str]:
    conn.write(b"EHLO " + helo.encode() + b"\r\n")
    ((code, text),) = await conn.protocol.wait_replies(1)
    if code != 250:
        raise SmtpError(f"EHLO {code}")
    return _ehlo_keywords(text)


async def _starttls(conn: Connection, host: str, context: ssl.SSLContext) -> None:
    if "STARTTLS" not in conn.extensions:
        raise SmtpError("STARTTLS not offered")
    await conn.command(b"STARTTLS\r\n", "STARTTLS", 220)
    protocol = conn.protocol
    assert protocol.transport is not None
    loop = asyncio.get_running_loop()
    try:
        new = await loop.start_tls(protocol.transport, protocol, context, server_hostname=host)
    except (OSError, ssl.SSLError):
        raise SmtpError("STARTTLS handshake") from None
    protocol.transport = new  # type: ignore[assignment]


_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def build_message(size: int, sender: str, recipient: str, seed: int = 0) -> tuple[bytes, bytes]:
    """A message of ``size`` bytes (headers + body, CRLF lines, none starting with a dot).

    Returns ``(head, rest)``: the caller puts a unique ``Message-ID`` line between them, so
    each message differs without rebuilding it; ``rest`` ends with the ``CRLF.CRLF``
    terminator (not counted in ``size``).
    """
    rng = random.Random(seed)
    head = f"From: <{sender}>\r\nTo: <{recipient}>\r\n".encode()
    headers = head + b"Subject: bench\r\nMIME-Version: 1.0\r\n\r\n"
    budget = max(0, size - len(headers) - len(b"Message-ID: <000000.0000000@bench.test>\r\n"))
    lines = []
    while budget > 0:
        width = min(76, max(0, budget - 2))
        lines.append(bytes(rng.choice(_ALPHABET) for _ in range(width)) + b"\r\n")
        budget -= width + 2
    rest = headers[len(head) :] + b"".join(lines) + b".\r\n"
    return head, rest
