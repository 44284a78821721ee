"""Large messages are delivered from their file in chunks, never held whole
(mta/delivery/stored.py, smtp_client.py, maildir.py).

Each message here is a real message file written through the spool's writer, larger than
the streaming threshold, with dot-started lines to stuff and no CRLF at its end.  They go
to real servers on loopback: CaptureSink (byte-exact arrival, with and without TLS) and a
peer in a thread that reads only when told to (flow control: what the transport holds,
what has been read from the file, a stalled server timing out), and into a Maildir.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import socket
import threading
import tracemalloc
from collections.abc import Coroutine, Generator, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import uvloop

from mta.delivery.maildir import deliver_maildir
from mta.delivery.results import DeliveryError
from mta.delivery.smtp_client import OutboundConnection, Transaction
from mta.delivery.stored import CHUNK_SIZE, STREAM_THRESHOLD, MessageReadError, message_to_send
from mta.protocol.dot_stuff import DotStuffer
from mta.queue.envelope import Envelope, Recipient
from mta.queue.ids import new_queue_id
from mta.queue.msgfile import MessageFile, read_message_file
from mta.queue.spool import Spool
from tests.delivery.sink import CaptureSink

pytestmark = pytest.mark.timeout(60)

T = TypeVar("T")
MIB = 1 << 20


def big_message(octets: int) -> bytes:
    """``octets`` of mail: every fourth line starts with a dot; cut mid-line at the end."""
    dotted = b".a line that starts with a dot, to be stuffed " + b"x" * 30 + b"\r\n"
    plain = b"an ordinary line of the body " + b"y" * 50 + b"\r\n"
    block = dotted + plain * 3
    message = (b"Subject: big\r\n\r\n" + block * (octets // len(block) + 1))[:octets]
    assert not message.endswith(b"\r\n")
    return message


def store(directory: Path, message: bytes) -> MessageFile:
    """``message`` as a complete message file, written as smtpd writes one."""
    spool = Spool(str(directory / "spool"))
    spool.create()
    queue_id = new_queue_id()
    writer = spool.new_message(queue_id)
    for start in range(0, len(message), MIB):
        writer.write(message[start : start + MIB])
    envelope = Envelope(
        queue_id=queue_id,
        sender="a@b.test",
        recipients=[Recipient(address="c@d.test")],
        size=len(message),
    )
    writer.finish(envelope)
    writer.persist()
    return read_message_file(writer.tmp_path)


def wire_digest(message: bytes) -> str:
    """SHA-256 of the DATA payload of ``message`` (dot-stuffed, with the end line)."""
    stuffer = DotStuffer()
    digest = hashlib.sha256()
    for start in range(0, len(message), MIB):
        digest.update(stuffer.feed(message[start : start + MIB]))
    digest.update(stuffer.end())
    return digest.hexdigest()


def tx(message: bytes | MessageFile | Any) -> Transaction:
    return Transaction(sender="a@b.test", recipients=["c@d.test"], message=message)


def run(coro: Coroutine[Any, Any, T]) -> T:
    return uvloop.run(coro)


def connect(port: int, **options: Any) -> Coroutine[Any, Any, OutboundConnection]:
    options.setdefault("command_timeout", 10.0)
    return OutboundConnection.open(
        host="peer.test", ip="127.0.0.1", port=port, helo_name="mx.test", **options
    )


async def wait_until(condition: Any, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


class Counting:
    """A stored message that counts the octets handed out, and can fail after some."""

    def __init__(self, stored: MessageFile, fail_after: int | None = None) -> None:
        self.stored = stored
        self.message_length = stored.message_length
        self.fail_after = fail_after
        self.read = 0

    def iter_message(self, chunk_size: int) -> Generator[bytes, None, None]:
        for chunk in self.stored.iter_message(chunk_size):
            if self.fail_after is not None and self.read >= self.fail_after:
                raise OSError(errno.EIO, "Input/output error")
            self.read += len(chunk)
            yield chunk


class SlowPeer:
    """An SMTP server for one connection that takes MAIL, RCPT and DATA pipelined, answers
    354 and then reads the message only once :attr:`go` is set (with small socket buffers,
    so that the kernel holds little of what the client writes).  It keeps the message's
    digest as it came on the wire, and whether it was ended."""

    BUFFER = 64 * 1024

    def __init__(self) -> None:
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.BUFFER)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(1)
        self.port = self.listener.getsockname()[1]
        self.at_data = threading.Event()
        self.go = threading.Event()
        self.digest = ""
        self.ended = False
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        with conn:
            try:
                self._session(conn)
            except BaseException as exc:  # noqa: BLE001  -- handed to the test thread
                self.error = exc

    def _session(self, conn: socket.socket) -> None:
        buf = bytearray()

        def lines(n: int) -> None:
            while buf.count(b"\r\n") < n:
                buf.extend(conn.recv(4096))
            for _ in range(n):
                del buf[: buf.index(b"\r\n") + 2]

        conn.sendall(b"220 peer.test ESMTP\r\n")
        lines(1)
        conn.sendall(b"250-peer.test\r\n250-PIPELINING\r\n250 SIZE 1000000000\r\n")
        lines(3)  # MAIL, RCPT, DATA
        conn.sendall(b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 go ahead\r\n")
        self.at_data.set()
        self.go.wait(30)
        digest = hashlib.sha256(bytes(buf))
        tail = bytes(buf[-5:])
        while not tail.endswith(b"\r\n.\r\n"):
            try:
                data = conn.recv(1 << 16)
            except ConnectionResetError:  # the client aborted
                break
            if not data:
                break
            digest.update(data)
            tail = (tail + data)[-5:]
        self.digest = digest.hexdigest()
        self.ended = tail.endswith(b"\r\n.\r\n")
        if self.ended:
            conn.sendall(b"250 2.0.0 Ok queued\r\n")
            conn.recv(1024)  # QUIT, or the close

    def close(self) -> None:
        self.go.set()
        self.listener.close()
        self.thread.join(15)
        assert not self.thread.is_alive(), "the peer did not finish"
        if self.error is not None:
            raise self.error


@pytest.fixture
def slow_peer() -> Iterator[SlowPeer]:
    peer = SlowPeer()
    yield peer
    peer.close()


def transport_bound(conn: OutboundConnection) -> int:
    """The most a transport that respects flow control may hold: its high-water mark and
    the chunk that took it over."""
    _, high = conn.transport.get_write_buffer_limits()
    return high + CHUNK_SIZE * 2  # a chunk grows by its stuffed dots


async def drop(conn: OutboundConnection, sending: asyncio.Task[Any]) -> None:
    """Give up on ``conn`` at once, and on the transaction it was sending."""
    sending.cancel()
    conn.transport.abort()
    await asyncio.wait_for(conn.stream.closed, 5)


# -- arrival -------------------------------------------------------------------------------


def test_small_messages_stay_in_memory_and_large_ones_in_their_file(tmp_path: Path) -> None:
    small = store(tmp_path / "small", b"Subject: s\r\n\r\nhi\r\n")
    assert message_to_send(small) == b"Subject: s\r\n\r\nhi\r\n"
    large = store(tmp_path / "large", big_message(STREAM_THRESHOLD + 1))
    assert message_to_send(large) is large


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_a_stored_message_arrives_byte_exact_and_the_connection_carries_on(
    tmp_path: Path, tls: bool
) -> None:
    message = big_message(6 * MIB + 12345)
    stored = store(tmp_path, message)
    with CaptureSink(tls=tls) as sink:

        async def scenario() -> list[str]:
            conn = await connect(sink.port)
            assert conn.tls is tls
            [large] = await conn.send(tx(stored))
            [small] = await conn.send(tx(b"Subject: after\r\n\r\n.x\r\n"))
            await conn.quit()
            return [large.status, small.status]

        assert run(scenario()) == ["sent", "sent"]
        first, second = sink.wait_for(2)
    assert first.mail_params["SIZE"] == str(len(message))
    assert first.data == message + b"\r\n"  # the CRLF the end line needs
    assert second.data == b"Subject: after\r\n\r\n.x\r\n"
    assert first.tls is tls


def test_sending_a_stored_message_holds_chunks_not_the_message(
    tmp_path: Path, slow_peer: SlowPeer
) -> None:
    message = big_message(16 * MIB)
    stored, expected = store(tmp_path, message), wire_digest(message)
    del message
    slow_peer.go.set()

    async def scenario() -> tuple[str, int]:
        conn = await connect(slow_peer.port)
        tracemalloc.start()
        try:
            [result] = await conn.send(tx(stored))
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        await conn.quit()
        return result.status, peak

    status, peak = run(scenario())
    assert status == "sent"
    assert slow_peer.ended and slow_peer.digest == expected
    assert peak < 8 * CHUNK_SIZE, f"{peak} octets allocated at the peak"


# -- flow control --------------------------------------------------------------------------


def test_a_stalled_server_fills_the_transport_only_to_its_high_water_mark(
    tmp_path: Path, slow_peer: SlowPeer
) -> None:
    message = big_message(16 * MIB)
    stored, expected = store(tmp_path, message), wire_digest(message)
    counting = Counting(stored)

    async def scenario() -> str:
        conn = await connect(slow_peer.port)
        sock = conn.transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SlowPeer.BUFFER)
        sending = asyncio.get_running_loop().create_task(conn.send(tx(counting)))
        try:
            await wait_until(lambda: conn.transport.get_write_buffer_size() > 0)
            assert slow_peer.at_data.is_set()
            for _ in range(20):  # the sender is parked: nothing more is read or buffered
                read = counting.read
                await asyncio.sleep(0)
                assert counting.read == read
                assert conn.transport.get_write_buffer_size() <= transport_bound(conn)
            # kernel buffers (a few times SO_SNDBUF and SO_RCVBUF) + transport + a chunk
            assert counting.read < 2 * MIB, f"{counting.read} octets read while the peer waits"
        except BaseException:
            await drop(conn, sending)  # what the transport holds would keep the loop open
            raise
        slow_peer.go.set()
        [result] = await sending
        await conn.quit()
        return result.status

    assert run(scenario()) == "sent"
    assert slow_peer.ended and slow_peer.digest == expected
    assert counting.read == len(message)


def test_a_server_that_stops_reading_times_out_and_the_message_is_not_ended(
    tmp_path: Path, slow_peer: SlowPeer
) -> None:
    counting = Counting(store(tmp_path, big_message(16 * MIB)))

    async def scenario() -> DeliveryError:
        conn = await connect(slow_peer.port, command_timeout=0.5)
        with pytest.raises(DeliveryError) as caught:
            await conn.send(tx(counting))
        assert not conn.usable
        await asyncio.wait_for(conn.stream.closed, 5)  # aborted: nothing left to flush
        return caught.value

    error = run(scenario())
    assert error.dsn == "4.4.2" and not error.permanent
    assert "while sending: timeout" in error.reply
    assert counting.read < counting.message_length  # it stopped reading when it stalled
    slow_peer.go.set()
    slow_peer.thread.join(10)
    assert not slow_peer.ended  # the connection was dropped, never ended with "."


# -- failures to read ----------------------------------------------------------------------


def test_a_read_error_midway_aborts_the_connection_without_ending_the_message(
    tmp_path: Path,
) -> None:
    failing = Counting(store(tmp_path, big_message(4 * MIB)), fail_after=MIB)
    with CaptureSink() as sink:

        async def scenario() -> MessageReadError:
            conn = await connect(sink.port)
            with pytest.raises(MessageReadError) as caught:
                await conn.send(tx(failing))
            assert not conn.usable
            await asyncio.wait_for(conn.stream.closed, 5)
            return caught.value

        error = run(scenario())
        sink.wait_idle()
        assert sink.messages == [] and sink.transactions == 1
    assert not error.corrupt and "Input/output error" in str(error)


def test_a_file_cut_short_after_it_was_opened_is_corrupt(tmp_path: Path) -> None:
    stored = store(tmp_path, big_message(4 * MIB))
    os.truncate(stored.path, 2 * MIB)
    with CaptureSink() as sink:

        async def scenario() -> MessageReadError:
            conn = await connect(sink.port)
            with pytest.raises(MessageReadError) as caught:
                await conn.send(tx(stored))
            await asyncio.wait_for(conn.stream.closed, 5)
            return caught.value

        assert run(scenario()).corrupt
        sink.wait_idle()
        assert sink.messages == []


# -- Maildir -------------------------------------------------------------------------------


def test_maildir_copies_a_stored_message_in_chunks(tmp_path: Path) -> None:
    message = big_message(8 * MIB)
    stored = store(tmp_path, message)
    template = str(tmp_path / "mail" / "{user}")
    tracemalloc.start()
    try:
        result = deliver_maildir(template, "c@d.test", "a@b.test", stored)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert result.status == "sent"
    [delivered] = (tmp_path / "mail" / "c" / "new").iterdir()
    assert (
        delivered.read_bytes() == b"Return-Path: <a@b.test>\r\nDelivered-To: c@d.test\r\n" + message
    )
    assert peak < 4 * CHUNK_SIZE, f"{peak} octets allocated at the peak"


def test_maildir_leaves_nothing_behind_when_the_message_cannot_be_read(tmp_path: Path) -> None:
    failing = Counting(store(tmp_path, big_message(4 * MIB)), fail_after=MIB)
    template = str(tmp_path / "mail" / "{user}")
    with pytest.raises(MessageReadError):
        deliver_maildir(template, "c@d.test", "a@b.test", failing)
    mailbox = tmp_path / "mail" / "c"
    assert not list((mailbox / "tmp").iterdir()) and not list((mailbox / "new").iterdir())
