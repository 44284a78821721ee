"""CaptureSink: a real SMTP/LMTP server on loopback that records what it is sent.

The delivery tests point the relay at it and then assert on :attr:`CaptureSink.messages`.
It speaks the protocol for real (RFC 5321, RFC 2920 pipelining, RFC 3207 STARTTLS or
RFC 8314 implicit TLS, RFC 2033 LMTP, RFC 4954 AUTH PLAIN/LOGIN when given ``auth_users``,
RFC 3030 CHUNKING/BDAT when ``chunking`` is set)
so that client bugs show up as they would against a real peer, and it misbehaves only when
told to: per-recipient rejections, a failing end of DATA, a 421 greeting, a closed port.

Invariants:

- A message is recorded only when the reply after its DATA (or BDAT LAST) is 2xx; in LMTP
  only the recipients whose own reply was 2xx are recorded with it.
- A BDAT chunk's octets are always read whole before it is answered, refused or not
  (RFC 3030 §2), so the session stays in step.
- Commands are processed strictly in the order their lines arrive; only CRLF ends a line
  and only CRLF "." CRLF ends a message.
- With ``data_limit`` set (for tests that send many large messages) a record keeps only
  the first ``data_limit`` octets of its data, with the whole data's length and SHA-256;
  by default it keeps the data whole.
- The server runs in its own thread and event loop (started and stopped as every test
  server is: loop_server.py); the test thread reads the results through copies taken
  under a lock and changes behaviour by assigning attributes.
"""

from __future__ import annotations

import asyncio
import binascii
import datetime
import functools
import hashlib
import ipaddress
import os
import ssl
import subprocess
import tempfile
import threading
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from tests.delivery.loop_server import LoopServer, LoopThread

__all__ = ["HOSTNAME", "CaptureSink", "Captured", "LoopThread", "Reply"]

Reply = tuple[int, str]

HOSTNAME = "sink.test"
MAX_LINE = 64 * 1024  # far above RFC 5321 §4.5.3.1.6's 1000 octets: tolerate, don't police


@dataclass
class Captured:
    """One accepted message, as the sink saw it on the wire."""

    mail_from: str  # "" for the null reverse-path <>
    rcpt_tos: list[str]  # only the recipients it accepted
    data: bytes  # dot-unstuffed, without the final ".\r\n"
    helo: str
    mail_params: dict[str, str | None]  # ESMTP keywords upper-cased: {"SIZE": "12"}
    peer: str  # client IP
    tls: bool = False  # whether the transaction ran over STARTTLS
    size: int = -1  # with the sink's data_limit: octets of the whole data (else -1)
    sha256: str = ""  # with the sink's data_limit: the whole data's digest, hex (else "")
    auth: str = ""  # the username the client authenticated as ("" for none)
    chunks: list[int] = field(default_factory=list)  # BDAT chunk sizes; [] when sent by DATA


class _SinkProtocol(asyncio.Protocol):
    """One client connection: bytes in, replies out, state per RFC 5321 §4.1.4."""

    def __init__(self, sink: CaptureSink) -> None:
        # connection
        self.sink = sink
        self.transport = cast(asyncio.Transport, None)  # set by connection_made
        self.peer = ""
        self.buffer = bytearray()
        self.paused = False  # no input is processed during a TLS handshake or after QUIT
        self.after: Callable[[], None] | None = None  # what the last reply commits us to
        self.tls = False
        self.breaking = False  # broken_tls: STARTTLS was answered, the handshake will fail
        # session: forgotten after STARTTLS (RFC 3207 §4.2)
        self.helo = ""
        self.auth_user = ""  # authenticated as
        self.auth_step = ""  # in an AUTH exchange: "plain", "login_user" or "login_pass"
        self.login_user = ""
        # transaction: ended by RSET, HELO/EHLO, STARTTLS and end of data
        self.mail_from: str | None = None
        self.mail_params: dict[str, str | None] = {}
        self.rcpts: list[str] = []
        self.in_data = False
        self.scan = 0  # where to resume looking for the end of data
        self.chunk_left = -1  # in a BDAT chunk: its octets still to read (else -1)
        self.chunk_last = False
        self.chunk_error: Reply | None = None  # the reply a chunk being read will get
        self.chunks = bytearray()  # the chunks of this transaction so far
        self.chunk_sizes: list[int] = []

    # -- asyncio callbacks ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.peer = str(transport.get_extra_info("peername")[0])
        self.tls = self.sink.implicit_tls
        self.sink._opened(self)
        if self.sink.greeting_reply is not None:
            self.send(self.sink.greeting_reply)
            self.close()
            return
        self.send((220, f"{HOSTNAME} {'LMTP' if self.sink.lmtp else 'ESMTP'} CaptureSink"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.paused = True
        self.sink._closed(self)

    def data_received(self, data: bytes) -> None:
        if self.breaking:
            self.transport.write(b"this is not a TLS handshake\r\n")
            self.close()
            return
        self.buffer += data
        self.process()

    # -- input ------------------------------------------------------------------------

    def process(self) -> None:
        """Handle every complete command or message in the buffer, in order (RFC 2920)."""
        while not self.paused:
            if self.chunk_left >= 0:
                taken = self.take_chunk()
            else:
                taken = self.take_message() if self.in_data else self.take_command()
            if not taken:
                return

    def take_command(self) -> bool:
        end = self.buffer.find(b"\r\n")
        if end < 0:
            if len(self.buffer) > MAX_LINE:
                self.send((500, "5.5.6 Line too long"))
                self.close()
            return False
        line = bytes(self.buffer[:end]).decode("utf-8", "replace")
        del self.buffer[: end + 2]
        self.sink.lines.append(line)
        if self.auth_step:
            self.send(self.auth_response(line))
            return True
        verb, _, arg = line.partition(" ")
        if verb.upper() == "BDAT" and self.sink.chunking:
            self.begin_chunk(arg.strip())
            return True
        handler = _HANDLERS.get(verb.upper(), _SinkProtocol.cmd_unknown)
        self.send(handler(self, arg.strip()))
        step, self.after = self.after, None
        if step is not None:
            step()
        return True

    def take_message(self) -> bool:
        # DATA put a CRLF in front of the buffer, so "\r\n.\r\n" also finds an empty message
        # and every stuffed line starts right after a CRLF (RFC 5321 §4.5.2).
        end = self.buffer.find(b"\r\n.\r\n", self.scan)
        if end < 0:
            self.scan = max(0, len(self.buffer) - 4)
            return False
        data = bytes(self.buffer[: end + 2]).replace(b"\r\n.", b"\r\n")[2:]
        del self.buffer[: end + 5]
        self.in_data, self.scan = False, 0
        for reply in self.end_of_data(data):
            self.send(reply)
        self.reset()
        return True

    # -- output -----------------------------------------------------------------------

    def send(self, reply: Reply) -> None:
        code, text = reply
        lines = text.split("\n")
        out = [f"{code}-{line}\r\n" for line in lines[:-1]] + [f"{code} {lines[-1]}\r\n"]
        self.transport.write("".join(out).encode())

    def close(self) -> None:
        self.paused = True
        self.transport.close()

    def abort(self) -> None:
        self.paused = True
        self.transport.abort()

    def reset(self) -> None:
        self.mail_from, self.mail_params, self.rcpts = None, {}, []
        self.chunks, self.chunk_sizes = bytearray(), []

    # -- BDAT (RFC 3030): the reply waits until the chunk's octets are in ----------------

    def begin_chunk(self, arg: str) -> None:
        words = arg.split()
        last = len(words) == 2 and words[1].upper() == "LAST"
        if not words or not words[0].isdigit() or len(words) > 2 or (len(words) == 2 and not last):
            self.send((501, "5.5.4 Syntax: BDAT size [LAST]"))
            return
        self.chunk_left, self.chunk_last = int(words[0]), last
        self.chunk_error = None
        if self.mail_from is None:
            self.chunk_error = (503, "5.5.1 Need MAIL first")
        elif not self.rcpts:
            self.chunk_error = (554, "5.5.1 No valid recipients")
        elif self.sink.bdat_reply is not None:
            self.chunk_error = self.sink.bdat_reply
        self.chunk_sizes.append(self.chunk_left)

    def take_chunk(self) -> bool:
        if self.chunk_left and not self.buffer:
            return False
        take = min(self.chunk_left, len(self.buffer))
        if self.chunk_error is None:
            self.chunks += self.buffer[:take]
        del self.buffer[:take]
        self.chunk_left -= take
        if self.chunk_left:
            return False
        self.chunk_left = -1
        if self.chunk_error is not None:  # refused: the transaction is over (RFC 3030 §2)
            self.send(self.chunk_error)
            self.reset()
        elif self.chunk_last:
            sizes = self.chunk_sizes
            for reply in self.end_of_data(bytes(self.chunks), sizes):
                self.send(reply)
            self.reset()
        else:
            self.send((250, f"2.0.0 {self.chunk_sizes[-1]} octets received"))
        return True

    # -- commands: each returns its reply; side effects wait in self.after ------------

    def hello(self, arg: str) -> Reply:
        """EHLO and LHLO: same reply (RFC 2033 §4.1), STARTTLS only before TLS is up."""
        if not arg:
            return (501, "5.5.4 Syntax: EHLO hostname")
        self.helo = arg
        self.reset()
        lines = [f"{HOSTNAME} greets {arg}", "PIPELINING", "8BITMIME"]
        lines += [f"SIZE {self.sink.max_size}", "ENHANCEDSTATUSCODES", "SMTPUTF8"]
        if self.sink.chunking:
            lines.append("CHUNKING")
        if not self.sink.pipelining:
            lines.remove("PIPELINING")
        lines = [line for line in lines if line.split()[0] not in self.sink.without_extensions]
        lines += self.sink.extensions
        if self.sink.tls and not self.tls:
            lines.append("STARTTLS")
        if self.sink.auth_users and (self.tls or self.sink.auth_in_clear):
            lines.append("AUTH " + " ".join(self.sink.auth_mechanisms))
        return (250, "\n".join(lines))

    def cmd_lhlo(self, arg: str) -> Reply:
        return self.hello(arg) if self.sink.lmtp else self.cmd_unknown(arg)

    def cmd_ehlo(self, arg: str) -> Reply:
        # RFC 2033 §4.1: an LMTP server must not answer EHLO/HELO as if it were SMTP.
        return self.cmd_unknown(arg) if self.sink.lmtp else self.hello(arg)

    def cmd_helo(self, arg: str) -> Reply:
        if self.sink.lmtp:
            return self.cmd_unknown(arg)
        if not arg:
            return (501, "5.5.4 Syntax: HELO hostname")
        self.helo = arg
        self.reset()
        return (250, HOSTNAME)

    def cmd_mail(self, arg: str) -> Reply:
        self.sink.transactions += 1
        if not self.helo:
            return (503, "5.5.1 Send EHLO first")
        if self.mail_from is not None:
            return (503, "5.5.1 Nested MAIL command")
        parsed = _path_and_params(arg, "FROM:")
        if parsed is None:
            return (501, "5.5.4 Syntax: MAIL FROM:<address>")
        address, params = parsed
        size = params.get("SIZE")
        if size is not None and size.isdigit() and int(size) > self.sink.max_size:
            return (552, "5.3.4 Message size exceeds fixed limit")
        reply = self.sink.mail_reply or (250, "2.1.0 OK")
        if 200 <= reply[0] < 300:
            self.mail_from, self.mail_params = address, params
        return reply

    def cmd_rcpt(self, arg: str) -> Reply:
        if self.mail_from is None:
            return (503, "5.5.1 Need MAIL first")
        parsed = _path_and_params(arg, "TO:")
        if parsed is None or not parsed[0]:
            return (501, "5.5.4 Syntax: RCPT TO:<address>")
        address = parsed[0]
        reply = _lookup(self.sink.rcpt_replies, address) or (250, "2.1.5 OK")
        if 200 <= reply[0] < 300:
            self.rcpts.append(address)
        return reply

    def cmd_data(self, arg: str) -> Reply:
        if arg:
            return (501, "5.5.4 Syntax: DATA")
        if self.mail_from is None:
            return (503, "5.5.1 Need MAIL first")
        if not self.rcpts:
            return (554, "5.5.1 No valid recipients")
        self.in_data = True
        self.buffer[:0] = b"\r\n"
        return (354, "End data with <CR><LF>.<CR><LF>")

    def cmd_rset(self, arg: str) -> Reply:
        self.reset()
        return (250, "2.0.0 OK")

    def cmd_noop(self, arg: str) -> Reply:
        return (250, "2.0.0 OK")

    def cmd_quit(self, arg: str) -> Reply:
        self.after = self.close
        return (221, "2.0.0 Bye")

    def cmd_starttls(self, arg: str) -> Reply:
        if not self.sink.tls:
            return (502, "5.5.1 STARTTLS not offered")
        if self.tls:
            return (503, "5.5.1 TLS already active")
        if arg:
            return (501, "5.5.4 Syntax: STARTTLS")
        self.after = self.begin_tls
        return (220, "2.0.0 Ready to start TLS")

    def cmd_unknown(self, arg: str) -> Reply:
        return (500, "5.5.2 Command not recognized")

    def cmd_auth(self, arg: str) -> Reply:
        """RFC 4954 with PLAIN (initial response or not) and LOGIN; records each attempt."""
        mechanism, _, initial = arg.partition(" ")
        mechanism = mechanism.upper()
        if not self.sink.auth_users:
            return (502, "5.5.1 AUTH not offered")
        if self.auth_user:
            return (503, "5.5.1 Already authenticated")
        if mechanism not in self.sink.auth_mechanisms:
            return (504, "5.5.4 Unrecognized authentication type")
        self.sink.auth_attempts.append((mechanism, self.tls))
        if mechanism == "PLAIN":
            if initial:
                return self.check_plain(initial)
            self.auth_step = "plain"
            return (334, "")
        self.auth_step = "login_user"
        return (334, "VXNlcm5hbWU6")  # "Username:"

    def auth_response(self, line: str) -> Reply:
        step, self.auth_step = self.auth_step, ""
        if step == "plain":
            return self.check_plain(line)
        if step == "login_user":
            self.login_user = _b64decode(line)
            self.auth_step = "login_pass"
            return (334, "UGFzc3dvcmQ6")  # "Password:"
        return self.check(self.login_user, _b64decode(line))

    def check_plain(self, response: str) -> Reply:
        _, _, credentials = _b64decode(response).partition("\0")
        username, _, password = credentials.partition("\0")
        return self.check(username, password)

    def check(self, username: str, password: str) -> Reply:
        if username and self.sink.auth_users.get(username) == password:
            self.auth_user = username
            return (235, "2.7.0 Authentication successful")
        return (535, "5.7.8 Error: authentication failed")

    # -- end of data and TLS ----------------------------------------------------------

    def end_of_data(self, data: bytes, chunks: list[int] | None = None) -> list[Reply]:
        """The replies to send now; records the message for whoever got a 2xx."""
        default = self.sink.data_reply or (250, "2.0.0 OK queued")
        if self.sink.lmtp:  # RFC 2033 §4.2: one reply per accepted recipient, in RCPT order
            replies = [_lookup(self.sink.lmtp_data_replies, r) or default for r in self.rcpts]
        else:
            replies = [default] * len(self.rcpts)
        ok = [r for r, (code, _) in zip(self.rcpts, replies, strict=True) if 200 <= code < 300]
        if ok:
            assert self.mail_from is not None
            captured = Captured(
                mail_from=self.mail_from,
                rcpt_tos=ok,
                data=data,
                helo=self.helo,
                mail_params=self.mail_params,
                peer=self.peer,
                tls=self.tls,
                auth=self.auth_user,
                chunks=list(chunks or []),
            )
            limit = self.sink.data_limit
            if limit is not None:
                captured.size, captured.sha256 = len(data), hashlib.sha256(data).hexdigest()
                captured.data = data[:limit]
            self.sink._record(captured)
        return replies if self.sink.lmtp else [default]

    def begin_tls(self) -> None:
        # RFC 3207 §4.2 (and CVE-2011-0411): bytes pipelined after STARTTLS came in clear
        # text and must not be executed as if they had arrived over TLS.
        self.buffer.clear()
        self.paused = True
        if self.sink.broken_tls:  # the ClientHello is answered with garbage (data_received)
            self.breaking = True
            return
        self.transport.pause_reading()
        self.sink._spawn(self.upgrade())

    async def upgrade(self) -> None:
        loop = asyncio.get_running_loop()
        assert self.sink._ssl is not None
        try:
            transport = await loop.start_tls(self.transport, self, self.sink._ssl, server_side=True)
        except OSError:  # handshake failed or peer left; ssl.SSLError is an OSError
            self.abort()
            return
        assert transport is not None
        self.transport, self.tls, self.helo, self.paused = transport, True, "", False
        self.auth_user = ""
        self.reset()
        self.process()


_HANDLERS: dict[str, Callable[[_SinkProtocol, str], Reply]] = {
    "EHLO": _SinkProtocol.cmd_ehlo,
    "HELO": _SinkProtocol.cmd_helo,
    "LHLO": _SinkProtocol.cmd_lhlo,
    "MAIL": _SinkProtocol.cmd_mail,
    "RCPT": _SinkProtocol.cmd_rcpt,
    "DATA": _SinkProtocol.cmd_data,
    "RSET": _SinkProtocol.cmd_rset,
    "NOOP": _SinkProtocol.cmd_noop,
    "QUIT": _SinkProtocol.cmd_quit,
    "STARTTLS": _SinkProtocol.cmd_starttls,
    "AUTH": _SinkProtocol.cmd_auth,
}


def _b64decode(text: str) -> str:
    try:
        return binascii.a2b_base64(text.strip()).decode("utf-8", "replace")
    except binascii.Error:
        return ""


def _path_and_params(arg: str, prefix: str) -> tuple[str, dict[str, str | None]] | None:
    """Split ``FROM:<a@b> SIZE=10 BODY=8BITMIME`` into ("a@b", {"SIZE": "10", ...})."""
    if arg[: len(prefix)].upper() != prefix:
        return None
    rest = arg[len(prefix) :].lstrip()
    if not rest.startswith("<") or ">" not in rest:
        return None
    address, _, params = rest[1:].partition(">")
    parsed: dict[str, str | None] = {}
    for param in params.split():
        key, eq, value = param.partition("=")
        parsed[key.upper()] = value if eq else None
    return address, parsed


def _lookup(table: dict[str, Reply], address: str) -> Reply | None:
    """Case-insensitive lookup; copies first because the test thread may be writing."""
    lowered = {key.lower(): reply for key, reply in dict(table).items()}
    return lowered.get(address.lower())


class CaptureSink(LoopServer):
    """A recording SMTP (or LMTP) server in a background thread; see the module docstring.

    Behaviour knobs may be assigned at any time from the test thread; they apply to the
    next command that consults them.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        lmtp: bool = False,
        tls: bool = False,
        data_limit: int | None = None,
        ssl_context: ssl.SSLContext | None = None,
        implicit_tls: bool = False,
    ) -> None:
        # where and what it serves
        super().__init__(host, port)
        self.lmtp, self.tls = lmtp, tls or implicit_tls
        self.implicit_tls = implicit_tls  # TLS from the first byte (RFC 8314), no STARTTLS
        self.data_limit = data_limit  # keep this much of each message's data (None: all)
        # behaviour knobs
        self.rcpt_replies: dict[str, Reply] = {}
        self.mail_reply: Reply | None = None
        self.data_reply: Reply | None = None
        self.lmtp_data_replies: dict[str, Reply] = {}
        self.greeting_reply: Reply | None = None
        self.broken_tls = False  # answer STARTTLS with 220, then send garbage, not a handshake
        self.max_size = 50 * 1024 * 1024  # advertised in SIZE and enforced on MAIL SIZE=
        self.auth_users: dict[str, str] = {}  # offer AUTH and take these (user: password)
        self.auth_mechanisms: tuple[str, ...] = ("PLAIN", "LOGIN")  # as offered, in order
        self.auth_in_clear = False  # offer AUTH before TLS too (a careless server)
        self.chunking = False  # offer CHUNKING and take BDAT (RFC 3030)
        self.bdat_reply: Reply | None = None  # refuse every BDAT chunk with this
        self.pipelining = True  # offer PIPELINING
        self.extensions: list[str] = []  # more EHLO keywords to offer, e.g. "DSN"
        self.without_extensions: set[str] = set()  # EHLO keywords not to offer: {"8BITMIME"}
        # what it has seen
        self.connections = 0
        self.transactions = 0
        self.server_names: list[str | None] = []  # the SNI of each TLS handshake
        self.auth_attempts: list[tuple[str, bool]] = []  # (mechanism, over TLS) per AUTH
        self.lines: list[str] = []  # every line received outside DATA (AUTH's too)
        self._messages: list[Captured] = []
        self._seen = threading.Condition()
        # machinery, owned by the loop thread once started
        self._server: asyncio.Server | None = None
        self._clients: set[_SinkProtocol] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._ssl: ssl.SSLContext | None = ssl_context  # default: the self-signed certificate
        if ssl_context is not None:
            self.tls = True
            ssl_context.sni_callback = self._sni

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> CaptureSink:
        if self.tls and self._ssl is None:
            self._ssl = _server_context()
            self._ssl.sni_callback = self._sni
        return super().start()

    def down(self) -> None:
        """Stop listening (new connections are refused); open connections carry on."""
        self._call(self._unlisten())

    def up(self) -> None:
        """Listen again on the same port after :meth:`down`."""
        self._call(self._listen())

    def drop_connections(self) -> None:
        """Abort every open connection (a peer that crashed mid-session)."""
        self._call(self._abort_clients())

    # -- results ------------------------------------------------------------------------

    @property
    def messages(self) -> list[Captured]:
        with self._seen:
            return list(self._messages)

    @property
    def cert_pem(self) -> bytes:
        """The self-signed certificate used for STARTTLS (CN=localhost, IP 127.0.0.1, ::1)."""
        return _self_signed()[0]

    def wait_for(self, n: int, timeout: float = 10.0) -> list[Captured]:
        """Block until at least ``n`` messages were recorded; raise TimeoutError if not."""
        with self._seen:
            if not self._seen.wait_for(lambda: len(self._messages) >= n, timeout):
                got = len(self._messages)
                raise TimeoutError(f"{got} message(s) captured, {n} expected in {timeout}s")
            return list(self._messages)

    def wait_idle(self, timeout: float = 10.0) -> None:
        """Block until no client connection is open, so that whatever the clients sent
        before they went away has been handled; raise TimeoutError if not."""
        with self._seen:
            if not self._seen.wait_for(lambda: not self._clients, timeout):
                raise TimeoutError(f"{len(self._clients)} connection(s) still open")

    def clear(self) -> None:
        """Forget messages and counters; the behaviour knobs stay as they are."""
        with self._seen:
            self._messages.clear()
            self.connections = self.transactions = 0

    # -- called on the loop thread --------------------------------------------------------

    def _sni(self, tls: ssl.SSLObject, name: str | None, context: ssl.SSLContext) -> None:
        self.server_names.append(name)

    def _record(self, captured: Captured) -> None:
        with self._seen:
            self._messages.append(captured)
            self._seen.notify_all()

    def _opened(self, client: _SinkProtocol) -> None:
        self.connections += 1
        with self._seen:
            self._clients.add(client)

    def _closed(self, client: _SinkProtocol) -> None:
        with self._seen:
            self._clients.discard(client)
            self._seen.notify_all()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _listen(self) -> None:
        if self._server is not None:
            return
        loop = asyncio.get_running_loop()
        tls = self._ssl if self.implicit_tls else None
        self._server = await loop.create_server(
            lambda: _SinkProtocol(self), self.host, self.port, ssl=tls
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def _unlisten(self) -> None:
        # Not wait_closed(): from 3.12 on it also waits for open connections to finish.
        if self._server is not None:
            self._server.close()
            self._server = None

    async def _abort_clients(self) -> None:
        await self._abort_all(self._clients)

    async def _shutdown(self) -> None:
        await self._unlisten()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._abort_clients()


def _server_context() -> ssl.SSLContext:
    cert, key = _self_signed()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with tempfile.TemporaryDirectory() as tmp:  # load_cert_chain only reads files
        (Path(tmp) / "cert.pem").write_bytes(cert)
        (Path(tmp) / "key.pem").write_bytes(key)
        context.load_cert_chain(Path(tmp) / "cert.pem", Path(tmp) / "key.pem")
    return context


@functools.cache
def _self_signed() -> tuple[bytes, bytes]:
    """(certificate PEM, key PEM), made once per test run."""
    try:
        return _self_signed_cryptography()
    except ImportError:
        return _self_signed_openssl()


def _self_signed_cryptography() -> tuple[bytes, bytes]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    sans: list[x509.GeneralName] = [x509.DNSName("localhost")]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ("127.0.0.1", "::1")]
    unused = "content_commitment key_encipherment data_encipherment key_agreement crl_sign"
    usage = dict.fromkeys([*unused.split(), "encipher_only", "decipher_only"], False)
    # A self-signed trust anchor that is also the leaf: CA, certSign, SKI/AKI keep strict
    # verifiers (Python 3.13's VERIFY_X509_STRICT) happy when a test passes cert_pem as cadata.
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(digital_signature=True, key_cert_sign=True, **usage), critical=True
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def _self_signed_openssl() -> tuple[bytes, bytes]:
    request = "req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2"
    san = "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1"
    with tempfile.TemporaryDirectory() as tmp:
        cert, key = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
        command = ["openssl", *request.split(), "-subj", "/CN=localhost", "-addext", san]
        command += ["-keyout", key, "-out", cert]
        subprocess.run(command, check=True, capture_output=True, timeout=30)
        return Path(cert).read_bytes(), Path(key).read_bytes()
