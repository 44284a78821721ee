"""The client side of SMTP and LMTP on the wire, sans-I/O: command formats and replies.

:class:`ClientConnection` keeps what a client must remember about a server (its EHLO
extensions, its SIZE limit, whether it speaks LMTP) and turns intentions into bytes
(``mail()``, ``rcpt()``, ``message()`` with dot-stuffing, which :mod:`mta.protocol.dot_stuff`
owns); :class:`ReplyParser` turns received bytes into :class:`Reply` objects.  What each
reply means, and what is said next, is decided by
:class:`~mta.protocol.client_session.ClientSession`, which uses both.
"""

from __future__ import annotations

import msgspec

from mta.protocol.dot_stuff import dot_stuff

__all__ = ["ClientConnection", "ProtocolError", "Reply", "ReplyParser", "dot_stuff"]


class ProtocolError(ValueError):
    """The server sent something that is not an SMTP reply."""


class Reply(msgspec.Struct, frozen=True, gc=False):
    """One complete reply.  A msgspec Struct rather than a frozen dataclass: every message
    relayed makes three or more of these, and a Struct is built in C several times faster."""

    code: int
    lines: tuple[str, ...]

    @property
    def text(self) -> str:
        """The reply as one line, as logs and DSNs quote it: ``550 5.1.1 No such user``."""
        return f"{self.code} " + " ".join(self.lines)

    @property
    def enhanced(self) -> str:
        """The enhanced status code (RFC 3463), or one derived from the reply class."""
        first = self.lines[0].split(" ", 1)[0] if self.lines else ""
        parts = first.split(".")
        if (
            len(parts) == 3
            and parts[0].isdigit()
            and parts[1].isdigit()
            and parts[2].isdigit()
            and first[0] == str(self.code)[0]
        ):
            return first
        return _CLASS_STATUS.get(self.code // 100, "4.0.0")

    @property
    def is_positive(self) -> bool:
        return 200 <= self.code < 400

    @property
    def is_transient(self) -> bool:
        return 400 <= self.code < 500

    @property
    def is_permanent(self) -> bool:
        return self.code >= 500


_CLASS_STATUS = {2: "2.0.0", 4: "4.0.0", 5: "5.0.0"}  # for replies without an enhanced code


class ReplyParser:
    """Splits a byte stream into complete replies (RFC 5321 §4.2.1 multi-line form).

    Each chunk is split into lines with one C call; the usual single-line reply becomes a
    :class:`Reply` without any intermediate list.  Only an unterminated last line is kept
    between calls, and only it is bounded by :attr:`MAX_LINE`.
    """

    MAX_LINE = 4096

    def __init__(self) -> None:
        self._partial = b""  # the unterminated last line of the previous chunk
        self._lines: list[str] = []  # texts of the "250-..." lines of the reply in progress

    def feed(self, data: bytes) -> list[Reply]:
        if self._partial:
            data = self._partial + data
        lines = data.split(b"\n")
        self._partial = lines.pop()
        replies: list[Reply] = []
        for line in lines:
            reply = self._line(line.rstrip(b"\r"))
            if reply is not None:
                replies.append(reply)
        if len(self._partial) > self.MAX_LINE:
            raise ProtocolError("reply line too long")
        return replies

    def _line(self, line: bytes) -> Reply | None:
        code, separator = line[:3], line[3:4]
        if len(code) < 3 or not code.isdigit() or separator not in _SEPARATORS:
            raise ProtocolError(f"not an SMTP reply: {line[:80]!r}")
        text = line[4:].decode("utf-8", "replace")
        if separator == b"-":
            self._lines.append(text)
            return None
        if not self._lines:  # the common case: a one-line reply
            return Reply(int(code), (text,))
        self._lines.append(text)
        lines, self._lines = tuple(self._lines), []
        return Reply(int(code), lines)


_SEPARATORS = (b" ", b"-", b"")


class ClientConnection:
    """What one outbound connection knows about its server, and how to talk to it."""

    def __init__(self, helo_name: str, *, lmtp: bool = False) -> None:
        self.helo_name = helo_name
        self.lmtp = lmtp
        self.extensions: dict[str, str] = {}
        self.esmtp = False
        self.size_limit: int | None = None  # the server's SIZE (RFC 1870), if it names one
        self.parser = ReplyParser()

    def receive_data(self, data: bytes) -> list[Reply]:
        return self.parser.feed(data)

    def ehlo(self) -> bytes:
        verb = b"LHLO" if self.lmtp else b"EHLO"
        return verb + b" " + self.helo_name.encode("idna") + b"\r\n"

    def helo(self) -> bytes:
        return b"HELO " + self.helo_name.encode("idna") + b"\r\n"

    def handle_ehlo(self, reply: Reply) -> None:
        """Remember the extensions of a positive EHLO reply (keywords upper-cased)."""
        self.esmtp = True
        self.extensions = {}
        for line in reply.lines[1:]:
            keyword, _, params = line.partition(" ")
            self.extensions[keyword.upper()] = params
        # parsed once here, not per message: SIZE without a usable number means no limit
        value = self.extensions.get("SIZE", "")
        self.size_limit = int(value) if value.isdigit() and int(value) > 0 else None

    def supports(self, extension: str) -> bool:
        return extension in self.extensions

    def mail(
        self, sender: str, *, size: int, eight_bit: bool, smtputf8: bool, dsn: str = ""
    ) -> bytes:
        params = []
        extensions = self.extensions
        if "SIZE" in extensions:
            params.append(f"SIZE={size}")
        if eight_bit and "8BITMIME" in extensions:
            params.append("BODY=8BITMIME")
        if smtputf8 and "SMTPUTF8" in extensions:
            params.append("SMTPUTF8")
        tail = (" " + " ".join(params)) if params else ""
        return f"MAIL FROM:<{sender}>{tail}{dsn}\r\n".encode()

    def rcpt(self, recipient: str, dsn: str = "") -> bytes:
        """``dsn``: " NOTIFY=.. ORCPT=.." (RFC 3461), already checked to be offered."""
        return f"RCPT TO:<{recipient}>{dsn}\r\n".encode()

    @staticmethod
    def data() -> bytes:
        return b"DATA\r\n"

    @staticmethod
    def message(message: bytes) -> bytes:
        return dot_stuff(message)

    @staticmethod
    def rset() -> bytes:
        return b"RSET\r\n"

    @staticmethod
    def quit() -> bytes:
        return b"QUIT\r\n"

    @staticmethod
    def starttls() -> bytes:
        return b"STARTTLS\r\n"
