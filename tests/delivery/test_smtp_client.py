"""The outbound connection (mta/delivery/smtp_client.py) against real servers on loopback.

The end-to-end tests see the client only through the relay; these drive one
:class:`OutboundConnection` directly, under uvloop as the delivery process does, against
CaptureSink for the protocol features and against :class:`ScriptedServer` for what a
well-behaved server never does: replies cut into one-byte segments, a hang-up in the middle
of a reply, silence, garbage, a reply nobody asked for.
"""

from __future__ import annotations

import asyncio
import select
import socket
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

import pytest
import uvloop

from mta.delivery.results import DeliveryError
from mta.delivery.smtp_client import OutboundConnection, Transaction
from tests.delivery.sink import CaptureSink

pytestmark = pytest.mark.timeout(60)

T = TypeVar("T")
TX = Transaction(
    sender="a@b.test", recipients=["c@d.test"], message=b"Subject: x\r\n\r\n.dot\r\nend\r\n"
)
WIRE = b"Subject: x\r\n\r\n..dot\r\nend\r\n.\r\n"  # TX.message as DATA carries it
EHLO_REPLY = b"250-scripted.test\r\n250-PIPELINING\r\n250 SIZE 100000\r\n"


def run(coro: Coroutine[Any, Any, T]) -> T:
    return uvloop.run(coro)


def connect(port: int, **options: Any) -> Coroutine[Any, Any, OutboundConnection]:
    options.setdefault("command_timeout", 10.0)
    return OutboundConnection.open(
        host="scripted.test", ip="127.0.0.1", port=port, helo_name="mx.test", **options
    )


async def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def send_fails(conn: OutboundConnection) -> DeliveryError:
    """Send TX over ``conn``, which must fail the way a broken connection does: a temporary
    DeliveryError for the whole transaction."""
    with pytest.raises(DeliveryError) as caught:
        await conn.send(TX)
    assert caught.value.dsn == "4.4.2" and not caught.value.permanent
    return caught.value


class Peer:
    """The server's side of one connection, for a script to read commands and reply."""

    def __init__(self, conn: socket.socket) -> None:
        self.conn = conn
        self.buf = b""
        self.received: list[bytes] = []  # command lines and messages, in order

    def line(self) -> bytes:
        while b"\r\n" not in self.buf:
            self._recv()
        line, _, self.buf = self.buf.partition(b"\r\n")
        self.received.append(line + b"\r\n")
        return line + b"\r\n"

    def lines(self, n: int) -> list[bytes]:
        return [self.line() for _ in range(n)]

    def message(self) -> bytes:
        """The DATA payload as sent, up to and including the final ``.`` line."""
        while b"\r\n.\r\n" not in b"\r\n" + self.buf:
            self._recv()
        end = (b"\r\n" + self.buf).index(b"\r\n.\r\n") + 3
        message, self.buf = self.buf[:end], self.buf[end:]
        self.received.append(message)
        return message

    def nothing_more(self, wait: float = 0.2) -> bool:
        """No bytes beyond what was read arrive within ``wait`` seconds."""
        return not self.buf and not select.select([self.conn], [], [], wait)[0]

    def send(self, data: bytes, *, bytewise: bool = False) -> None:
        if not bytewise:
            self.conn.sendall(data)
            return
        for i in range(len(data)):  # one TCP segment per byte (TCP_NODELAY, and a pause)
            self.conn.sendall(data[i : i + 1])
            time.sleep(0.001)

    def handshake(self, ehlo_reply: bytes = EHLO_REPLY) -> None:
        self.send(b"220 scripted.test ESMTP\r\n")
        assert self.line() == b"EHLO mx.test\r\n"
        self.send(ehlo_reply)

    def up_to_the_message(self) -> None:
        """Greet, answer EHLO, accept the pipelined MAIL, RCPT and DATA, read the message."""
        self.handshake()
        self.lines(3)
        self.send(b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 go on\r\n")
        self.message()

    def wait_for_close(self, timeout: float = 10.0) -> float:
        """Seconds until the client closed the connection."""
        start = time.monotonic()
        self.conn.settimeout(timeout)
        try:
            while self.conn.recv(65536):
                pass
        except ConnectionResetError:
            pass
        return time.monotonic() - start

    def _recv(self) -> None:
        chunk = self.conn.recv(65536)
        if not chunk:
            raise ConnectionError(f"client closed the connection; unread: {self.buf!r}")
        self.buf += chunk


Script = Callable[[Peer], None]


class ScriptedServer:
    """Accepts one connection on loopback and runs ``script`` on it in a thread; a failed
    assertion in the script is raised again by :meth:`close`."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.peer: Peer | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except OSError:
            return
        with conn:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.peer = Peer(conn)
            try:
                self.script(self.peer)
            except BaseException as exc:  # noqa: BLE001  -- handed to the test thread
                self.error = exc

    def close(self) -> None:
        self.listener.close()
        self.thread.join(15)
        assert not self.thread.is_alive(), "the server script did not finish"
        if self.error is not None:
            raise self.error


@pytest.fixture
def scripted() -> Iterator[Callable[[Script], ScriptedServer]]:
    servers: list[ScriptedServer] = []

    def start(script: Script) -> ScriptedServer:
        servers.append(ScriptedServer(script))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


# -- replies as the network delivers them --------------------------------------------------


def test_replies_cut_into_one_byte_segments(
    scripted: Callable[[Script], ScriptedServer],
) -> None:
    def script(peer: Peer) -> None:
        peer.send(b"220 scripted.test ESMTP\r\n", bytewise=True)
        peer.line()
        peer.send(EHLO_REPLY, bytewise=True)
        peer.lines(3)  # MAIL, RCPT, DATA: pipelined
        peer.send(b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 go on\r\n", bytewise=True)
        peer.message()
        peer.send(b"250-2.0.0 Ok: queued\r\n250 2.0.0 as X1\r\n", bytewise=True)
        assert peer.line() == b"QUIT\r\n"

    server = scripted(script)

    async def scenario() -> None:
        conn = await connect(server.port)
        assert conn.client.supports("PIPELINING") and conn.client.size_limit == 100000
        [result] = await conn.send(TX)
        assert (result.status, result.dsn) == ("sent", "2.0.0")
        assert result.reply == "250 2.0.0 Ok: queued 2.0.0 as X1"
        assert result.relay == f"scripted.test[127.0.0.1]:{server.port}"
        assert conn.reusable
        await conn.quit()

    run(scenario())
    server.close()
    assert server.peer is not None
    assert server.peer.received[1:] == [
        b"MAIL FROM:<a@b.test> SIZE=%d\r\n" % len(TX.message),
        b"RCPT TO:<c@d.test>\r\n",
        b"DATA\r\n",
        WIRE,
        b"QUIT\r\n",
    ]


def test_pipelined_replies_in_one_segment_with_the_next_one_cut(
    scripted: Callable[[Script], ScriptedServer],
) -> None:
    """Two transactions whose replies straddle segments: nothing is lost or reordered."""

    def script(peer: Peer) -> None:
        peer.handshake()
        peer.lines(3)
        peer.send(b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 go")
        time.sleep(0.05)
        peer.send(b" on\r\n")
        peer.message()
        peer.send(b"250 2.0.0 first\r\n")
        peer.lines(3)
        peer.send(b"250 2.1.0 Ok\r\n550 5.1.1 no such user\r\n554 5.5.1 no valid recipients\r\n")
        assert peer.line() == b"RSET\r\n"
        peer.send(b"250 2.0.0 Ok\r\n")
        peer.wait_for_close()

    server = scripted(script)

    async def scenario() -> None:
        conn = await connect(server.port)
        [first] = await conn.send(TX)
        [second] = await conn.send(TX)
        assert (first.status, first.reply) == ("sent", "250 2.0.0 first")
        assert (second.status, second.dsn) == ("failed", "5.1.1")
        assert conn.reusable and conn.transactions == 2
        await conn.quit()

    run(scenario())


# -- broken connections ----------------------------------------------------------------


def test_connection_closed_in_the_middle_of_a_reply(
    scripted: Callable[[Script], ScriptedServer],
) -> None:
    def script(peer: Peer) -> None:
        peer.handshake()
        peer.lines(3)
        peer.send(b"250 2.1.0 Ok\r\n250-2.1.5 the first half")

    server = scripted(script)

    async def scenario() -> None:
        conn = await connect(server.port)
        error = await send_fails(conn)
        assert error.reply.startswith(f"lost connection with {conn.relay}")
        assert not conn.reusable

    run(scenario())


def test_connection_closed_before_the_reply_to_the_message(
    scripted: Callable[[Script], ScriptedServer],
) -> None:
    server = scripted(Peer.up_to_the_message)

    async def scenario() -> None:
        conn = await connect(server.port)
        assert "lost connection" in (await send_fails(conn)).reply

    run(scenario())


def test_connection_closed_during_the_greeting(
    scripted: Callable[[Script], ScriptedServer],
) -> None:
    server = scripted(lambda peer: peer.send(b"220-scripted.test ESMTP\r\n"))

    async def scenario() -> None:
        with pytest.raises(DeliveryError) as caught:
            await connect(server.port)
        assert caught.value.dsn == "4.4.2" and "lost connection" in caught.value.reply

    run(scenario())


def test_garbage_instead_of_a_reply(scripted: Callable[[Script], ScriptedServer]) -> None:
    def script(peer: Peer) -> None:
        peer.handshake()
        peer.lines(3)
        peer.send(b"hello there\r\n")
        peer.wait_for_close()

    server = scripted(script)

    async def scenario() -> None:
        conn = await connect(server.port)
        assert "not an SMTP reply: b'hello there'" in (await send_fails(conn)).reply
        assert not conn.reusable

    run(scenario())


def test_server_that_hangs_up_while_idle_is_not_reused(
    scripted: Callable[[Script], ScriptedServer],
) -> None:
    def script(peer: Peer) -> None:
        peer.up_to_the_message()
        peer.send(b"250 2.0.0 Ok\r\n")

    server = scripted(script)

    async def scenario() -> None:
        conn = await connect(server.port)
        [result] = await conn.send(TX)
        assert result.status == "sent"
        await wait_until(lambda: not conn.reusable)
        assert "lost connection" in (await send_fails(conn)).reply  # not a RuntimeError
        await conn.quit()  # nothing to say QUIT to: just closes

    run(scenario())


def test_a_reply_nobody_asked_for_makes_the_connection_unfit_for_reuse(
    scripted: Callable[[Script], ScriptedServer],
) -> None:
    """Otherwise the stray reply would be taken for the answer to the next MAIL."""
    sent = threading.Event()  # the client has its result: the connection is idle

    def script(peer: Peer) -> None:
        peer.up_to_the_message()
        peer.send(b"250 2.0.0 Ok\r\n")
        assert sent.wait(10), "the client did not take the reply"
        peer.send(b"421 4.3.2 shutting down\r\n")
        peer.wait_for_close()

    server = scripted(script)

    async def scenario() -> None:
        conn = await connect(server.port)
        await conn.send(TX)
        assert conn.reusable
        sent.set()
        await wait_until(lambda: not conn.reusable)
        assert conn.usable  # nothing broke: it is just not safe to carry on
        await conn.quit()

    run(scenario())


# -- timeouts --------------------------------------------------------------------------


def test_silence_after_the_message_times_out_and_hangs_up(
    scripted: Callable[[Script], ScriptedServer],
) -> None:
    hung_up_after: list[float] = []

    def script(peer: Peer) -> None:
        peer.up_to_the_message()
        hung_up_after.append(peer.wait_for_close())

    server = scripted(script)

    async def scenario() -> float:
        conn = await connect(server.port, command_timeout=0.3)
        start = time.monotonic()
        error = await send_fails(conn)
        assert error.reply == f"timeout waiting for a reply from {conn.relay}"
        return time.monotonic() - start

    waited = run(scenario())
    server.close()
    assert 0.25 <= waited < 2.0
    assert hung_up_after and hung_up_after[0] < 2.0


def test_slow_replies_each_within_the_timeout_do_not_time_out(
    scripted: Callable[[Script], ScriptedServer],
) -> None:
    """The timeout is per reply, not per connection: a conversation longer than the
    timeout is fine as long as no single reply is late."""

    def slow_reply(peer: Peer, reply: bytes) -> None:
        """Answer after 0.2 s (the delay is the point), in which the client, waiting for
        this reply, must send nothing."""
        assert peer.nothing_more(0.2), "the client did not wait for the reply"
        peer.send(reply)

    def script(peer: Peer) -> None:
        peer.send(b"220 scripted.test ESMTP\r\n")
        peer.line()
        slow_reply(peer, b"250 scripted.test\r\n")  # no PIPELINING: one command at a time
        for reply in (b"250 2.1.0 Ok\r\n", b"250 2.1.5 Ok\r\n", b"354 go on\r\n"):
            peer.line()
            slow_reply(peer, reply)
        peer.message()
        slow_reply(peer, b"250 2.0.0 Ok\r\n")
        peer.wait_for_close()

    server = scripted(script)

    async def scenario() -> float:
        start = time.monotonic()
        conn = await connect(server.port, command_timeout=0.5)
        [result] = await conn.send(TX)
        assert result.status == "sent"
        await conn.quit()
        return time.monotonic() - start

    assert run(scenario()) > 1.0  # twice the timeout, in replies that each came in time


# -- older and other servers -----------------------------------------------------------


def test_helo_when_ehlo_is_refused_and_one_command_at_a_time_without_pipelining(
    scripted: Callable[[Script], ScriptedServer],
) -> None:
    def script(peer: Peer) -> None:
        peer.send(b"220 old.test SMTP\r\n")
        assert peer.line() == b"EHLO mx.test\r\n"
        peer.send(b"502 5.5.1 Command not implemented\r\n")
        assert peer.line() == b"HELO mx.test\r\n"
        peer.send(b"250 old.test\r\n")
        for command, reply in (
            (b"MAIL FROM:<a@b.test>\r\n", b"250 Ok\r\n"),  # no SIZE= to a HELO server
            (b"RCPT TO:<c@d.test>\r\n", b"250 Ok\r\n"),
            (b"DATA\r\n", b"354 go on\r\n"),
        ):
            assert peer.line() == command
            assert peer.nothing_more(), "the client did not wait for the reply"
            peer.send(reply)
        assert peer.message() == WIRE
        peer.send(b"250 Ok\r\n")
        assert peer.line() == b"QUIT\r\n"

    server = scripted(script)

    async def scenario() -> None:
        conn = await connect(server.port)
        assert not conn.client.esmtp
        [result] = await conn.send(TX)
        assert (result.status, result.dsn, result.reply) == ("sent", "2.0.0", "250 Ok")
        await conn.quit()

    run(scenario())


def test_refused_greeting(scripted: Callable[[Script], ScriptedServer]) -> None:
    def script(peer: Peer) -> None:
        peer.send(b"554 5.3.2 not now\r\n")
        peer.wait_for_close()

    server = scripted(script)

    async def scenario() -> None:
        with pytest.raises(DeliveryError) as caught:
            await connect(server.port)
        assert caught.value.dsn == "5.3.2" and not caught.value.permanent
        assert "refused to talk: 554 5.3.2 not now" in caught.value.reply

    run(scenario())


def test_starttls_then_ehlo_again() -> None:
    with CaptureSink(tls=True) as sink:

        async def scenario() -> None:
            conn = await connect(sink.port)
            assert conn.tls and not conn.client.supports("STARTTLS")
            [result] = await conn.send(TX)
            assert result.status == "sent"
            await conn.quit()

        run(scenario())
        [got] = sink.wait_for(1)
    assert got.tls and got.helo == "mx.test"
    assert got.data == TX.message


def test_lmtp_gives_each_recipient_its_own_reply() -> None:
    with CaptureSink(lmtp=True) as sink:
        sink.rcpt_replies = {"carol@d.test": (550, "5.1.1 no such user")}
        sink.lmtp_data_replies = {"bob@d.test": (452, "4.2.2 mailbox full")}
        tx = Transaction(
            sender="a@b.test",
            recipients=["alice@d.test", "bob@d.test", "carol@d.test", "dave@d.test"],
            message=TX.message,
        )

        async def scenario() -> list[tuple[str, str, str]]:
            conn = await connect(sink.port, lmtp=True)
            results = await conn.send(tx)
            assert conn.reusable
            await conn.quit()
            return [(r.address, r.status, r.dsn) for r in results]

        assert run(scenario()) == [
            ("alice@d.test", "sent", "2.0.0"),
            ("bob@d.test", "deferred", "4.2.2"),
            ("carol@d.test", "failed", "5.1.1"),
            ("dave@d.test", "sent", "2.0.0"),
        ]
        [got] = sink.wait_for(1)
    assert got.rcpt_tos == ["alice@d.test", "dave@d.test"]


def test_refused_sender_then_rset_and_the_connection_carries_the_next_message() -> None:
    with CaptureSink() as sink:
        sink.mail_reply = (451, "4.3.0 try again later")

        async def scenario() -> tuple[str, str]:
            conn = await connect(sink.port)
            [refused] = await conn.send(TX)
            assert conn.reusable
            sink.mail_reply = None
            [sent] = await conn.send(TX)
            await conn.quit()
            return refused.status, sent.status

        assert run(scenario()) == ("deferred", "sent")
        sink.wait_for(1)
        assert sink.connections == 1
