"""Limits and hostile clients, against a real ``mta serve`` on loopback.

Message size, error budget, idle timeout, garbage input, many concurrent connections and
clients that vanish half-way: after each, the server must have kept nothing it did not
acknowledge, and must still serve the next client with the same worker processes.
"""

from __future__ import annotations

import asyncio
import random
import socket
import struct
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.helpers import MtaProcess, RawClient, child_pids, wait_until
from tests.server.queue_view import queue_id_of, queued, read_all_replies, running_relay, stored

pytestmark = pytest.mark.timeout(60)

Factory = Callable[..., MtaProcess]
HEADERS = b"Subject: limits\r\n\r\n"


@pytest.fixture
def start(mta_factory: Factory, dead_relay: str) -> Factory:
    """``mta_factory`` with delivery pointed at the dead relay."""

    def start(overrides: dict[str, Any] | None = None) -> MtaProcess:
        return mta_factory({"delivery": {"relayhost": dead_relay}, **(overrides or {})})

    return start


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, dead_relay: str) -> Iterator[MtaProcess]:
    """A relay with the default limits, shared by the tests that leave it as they found it."""
    yield from running_relay(tmp_path_factory, dead_relay, {})


def start_transaction(client: RawClient, recipient: bytes = b"b@example.org") -> None:
    client.send(b"MAIL FROM:<a@client.test>\r\nRCPT TO:<%s>\r\nDATA\r\n" % recipient)
    assert [r[:3] for r in client.replies(3)] == [b"250", b"250", b"354"]


def send_message(server: MtaProcess, body: bytes = b"hello\r\n") -> str:
    """A complete, well-behaved session; the queue ID."""
    client = RawClient(server.port)
    client.cmd(b"EHLO client.test")
    start_transaction(client)
    queue_id = queue_id_of(client.cmd(HEADERS + body + b"."))
    assert client.cmd(b"QUIT").startswith(b"221")
    client.close()
    assert stored(server, queue_id)[0].queue_id == queue_id
    return queue_id


def workers(server: MtaProcess) -> list[int]:
    return sorted(child_pids(server.pid))


def assert_same_workers(server: MtaProcess, before: list[int]) -> None:
    """No worker crashed and was replaced, and the service still takes mail."""
    assert server.proc is not None and server.proc.poll() is None
    assert workers(server) == before
    assert " died " not in server.log()
    send_message(server)


# ----- message size, recipients, line length, connections --------------------------------

LIMIT = 100_000


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory, dead_relay: str) -> Iterator[MtaProcess]:
    """A relay with small limits (one worker, so that the connection limit is exact)."""
    limits = {"max_message_size": LIMIT, "max_recipients": 3, "max_connections": 4}
    yield from running_relay(tmp_path_factory, dead_relay, {"smtp": limits})


def test_message_over_max_size_gets_552_and_leaves_nothing(limited: MtaProcess) -> None:
    server = limited
    before = queued(server)
    client = RawClient(server.port)
    assert b"250-SIZE 100000\r\n" in client.cmd(b"EHLO client.test")
    start_transaction(client)
    big = HEADERS + b"".join(b"%07d " % i + b"y" * 90 + b"\r\n" for i in range(2000))
    assert len(big) > 150_000
    client.send(big + b".\r\n")
    assert client.reply().startswith(b"552 5.3.4 ")
    assert queued(server) == before
    assert server.files("tmp") == []
    # the session goes on: the next message in the same connection is accepted
    start_transaction(client)
    queue_id = queue_id_of(client.cmd(HEADERS + b"small\r\n."))
    assert client.cmd(b"QUIT").startswith(b"221")
    client.close()
    assert queued(server) == before | {queue_id}
    assert server.files("tmp") == []


def test_message_of_exactly_max_size_is_accepted(limited: MtaProcess) -> None:
    server = limited
    before = queued(server)
    exact = HEADERS + b"z" * (LIMIT - len(HEADERS) - 2) + b"\r\n"
    over = HEADERS + b"z" * (LIMIT - len(HEADERS) - 1) + b"\r\n"
    assert (len(exact), len(over)) == (LIMIT, LIMIT + 1)
    client = RawClient(server.port)
    client.cmd(b"EHLO client.test")
    start_transaction(client)
    queue_id = queue_id_of(client.cmd(exact + b"."))
    start_transaction(client)
    assert client.cmd(over + b".").startswith(b"552 5.3.4 ")
    client.close()
    assert stored(server, queue_id)[1].endswith(b"\r\n" + exact)
    assert queued(server) == before | {queue_id}


def test_declared_size_over_limit_is_refused_at_mail(limited: MtaProcess) -> None:
    client = RawClient(limited.port)
    client.cmd(b"EHLO client.test")
    assert client.cmd(b"MAIL FROM:<a@client.test> SIZE=100001").startswith(b"552 5.3.4 ")
    assert client.cmd(b"MAIL FROM:<a@client.test> SIZE=100000").startswith(b"250 ")
    client.close()


def test_recipients_beyond_the_limit_get_452(limited: MtaProcess) -> None:
    client = RawClient(limited.port)
    client.cmd(b"EHLO client.test")
    client.send(
        b"MAIL FROM:<a@client.test>\r\n"
        + b"".join(b"RCPT TO:<r%d@example.org>\r\n" % i for i in range(5))
        + b"DATA\r\n"
    )
    replies = client.replies(7)
    assert [r[:9] for r in replies[:6]] == [b"250 2.1.0"] + [b"250 2.1.5"] * 3 + [b"452 4.5.3"] * 2
    assert replies[6].startswith(b"354 ")
    queue_id = queue_id_of(client.cmd(HEADERS + b"three of five\r\n."))
    client.close()
    envelope, _ = stored(limited, queue_id)
    assert [r.address for r in envelope.recipients] == [
        "r0@example.org",
        "r1@example.org",
        "r2@example.org",
    ]


def test_connections_beyond_the_limit_get_421(limited: MtaProcess) -> None:
    clients = [RawClient(limited.port) for _ in range(4)]
    assert all(c.greeting.startswith(b"220 ") for c in clients)
    extra = RawClient(limited.port)
    assert extra.greeting == b"421 4.7.0 mx.test Error: too many connections\r\n"
    assert extra.closed_by_server()
    extra.close()
    clients.pop().close()

    def greeted_again() -> RawClient | None:
        """A client greeted with 220 once the server noticed the close, or None (421)."""
        client = RawClient(limited.port)
        if client.greeting.startswith(b"220 "):
            return client
        assert client.closed_by_server()
        client.close()
        return None

    again: RawClient = wait_until(greeted_again, timeout=5)  # a slot is free again
    assert again.cmd(b"NOOP") == b"250 2.0.0 Ok\r\n"
    for client in [*clients, again]:
        client.close()


def test_command_line_length_limit(server: MtaProcess) -> None:
    """``smtp.max_line_length`` (default 2048) counts the whole line with its CRLF."""
    client = RawClient(server.port)
    longest = b"NOOP " + b"a" * (2048 - 7)
    assert len(longest + b"\r\n") == 2048
    assert client.cmd(longest) == b"250 2.0.0 Ok\r\n"
    assert client.cmd(longest + b"a").startswith(b"500 5.5.2 Error: line too long")
    assert client.cmd(b"NOOP") == b"250 2.0.0 Ok\r\n"
    client.close()


# ----- garbage and the error budget ------------------------------------------------------


def test_garbage_lines_get_500_until_the_error_budget_then_421(server: MtaProcess) -> None:
    before = workers(server)
    rng = random.Random(7)
    client = RawClient(server.port)
    noise = bytes(b for b in range(256) if b not in b"\r\n")
    lines = [bytes(rng.choice(noise) for _ in range(rng.randint(1, 300))) for _ in range(12)]
    lines[0] = b"\x00\x00\x00"
    lines[1] = b"\x00HELO x"
    client.send(b"".join(b"%s\r\n" % line for line in lines))
    replies = read_all_replies(client)
    client.close()
    # default max_errors = 10: ten 500s, then 421 and the server hangs up
    assert [r[:10] for r in replies[:10]] == [b"500 5.5.2 "] * 10
    assert replies[10].startswith(b"421 4.7.0 mx.test ")
    assert len(replies) == 11
    assert_same_workers(server, before)


def test_random_binary_blob_is_answered_and_cut_off(server: MtaProcess) -> None:
    before = workers(server)
    blob = random.Random(11).randbytes(20_000)
    assert b"\x00" in blob and b"\n" in blob
    client = RawClient(server.port)
    client.send(blob)
    replies = read_all_replies(client)
    client.close()
    assert replies[-1].startswith(b"421 ")
    assert all(r[:1] == b"5" for r in replies[:-1]), replies
    assert len(replies) == 11
    assert_same_workers(server, before)


def test_very_long_line_without_newline(server: MtaProcess) -> None:
    before = workers(server)
    client = RawClient(server.port)
    client.cmd(b"EHLO client.test")
    client.send(b"NOOP " + b"A" * 100_000)
    client.sock.settimeout(0.5)  # the server must not answer before the line ends
    with pytest.raises(TimeoutError):
        client.sock.recv(1)
    client.sock.settimeout(10)
    assert client.cmd(b"").startswith(b"500 5.5.2 Error: line too long")
    assert client.cmd(b"NOOP") == b"250 2.0.0 Ok\r\n"  # the session is still usable
    for _ in range(9):
        client.send(b"X" * 100_000 + b"\r\n")
    replies = read_all_replies(client)
    client.close()
    assert [r[:3] for r in replies] == [b"500"] * 9 + [b"421"]
    assert_same_workers(server, before)


def test_long_line_then_disconnect_does_not_hurt(server: MtaProcess) -> None:
    before = workers(server)
    for _ in range(5):
        client = RawClient(server.port)
        client.send(b"\x00" * 100_000)
        client.close()
    assert_same_workers(server, before)


def test_max_errors_counts_every_refusal(start: Factory) -> None:
    server = start({"smtp": {"max_errors": 3}})
    client = RawClient(server.port)
    assert client.cmd(b"MAIL FROM:<a@client.test>").startswith(b"503 ")  # no EHLO yet
    assert client.cmd(b"EHLO client.test").startswith(b"250")
    assert client.cmd(b"BOGUS").startswith(b"500 ")
    assert client.cmd(b"RCPT TO:<b@example.org>") == b"503 5.5.1 Error: need MAIL command\r\n"
    assert client.reply() == b"421 4.7.0 mx.test Error: too many errors\r\n"
    assert client.closed_by_server()
    client.close()
    send_message(server)


# ----- idle timeout ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def impatient(tmp_path_factory: pytest.TempPathFactory, dead_relay: str) -> Iterator[MtaProcess]:
    """A relay that gives clients one second of silence (shared: no test queues mail)."""
    yield from running_relay(tmp_path_factory, dead_relay, {"smtp": {"idle_timeout": 1}})


def test_idle_client_gets_421_and_is_disconnected(impatient: MtaProcess) -> None:
    server = impatient
    started = time.monotonic()
    client = RawClient(server.port)
    reply = client.reply()
    assert reply.startswith(b"421 4.4.2 mx.test ")
    assert client.closed_by_server()
    assert time.monotonic() - started < 3.0
    client.close()


def test_idle_timeout_mid_data_discards_the_message(impatient: MtaProcess) -> None:
    server = impatient
    client = RawClient(server.port)
    client.cmd(b"EHLO client.test")
    start_transaction(client)
    client.send(HEADERS + b"half a message\r\n")
    assert client.reply().startswith(b"421 4.4.2 ")
    assert client.closed_by_server()
    client.close()
    assert queued(server) == set()
    assert server.files("tmp") == []


def test_busy_client_is_not_timed_out(impatient: MtaProcess) -> None:
    server = impatient
    client = RawClient(server.port)
    client.cmd(b"EHLO client.test")
    for _ in range(6):  # 2.4 s of activity, never 1 s of silence
        time.sleep(0.4)
        assert client.cmd(b"NOOP") == b"250 2.0.0 Ok\r\n"
    assert client.cmd(b"QUIT").startswith(b"221")
    client.close()


# ----- many connections ------------------------------------------------------------------

CONNECTIONS = 500


async def _read_reply(reader: asyncio.StreamReader) -> bytes:
    lines = []
    while True:
        line = await reader.readuntil(b"\r\n")
        lines.append(line)
        if line[3:4] != b"-":
            return b"".join(lines)


async def _many_clients(port: int) -> tuple[list[bytes], list[bytes]]:
    async def connect() -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return reader, writer, await _read_reply(reader)

    conns = await asyncio.gather(*(connect() for _ in range(CONNECTIONS)))
    greetings = [greeting for _, _, greeting in conns]

    async def send(i: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
        for line, code in (
            (b"EHLO client%d.test" % i, b"250"),
            (b"MAIL FROM:<s%d@client.test>" % i, b"250"),
            (b"RCPT TO:<r%d@example.org>" % i, b"250"),
            (b"DATA", b"354"),
        ):
            writer.write(line + b"\r\n")
            reply = await _read_reply(reader)
            assert reply.startswith(code), reply
        writer.write(b"Subject: %d\r\n\r\nmessage %d\r\n.\r\n" % (i, i))
        final = await _read_reply(reader)
        writer.write(b"QUIT\r\n")
        await _read_reply(reader)
        writer.close()
        await writer.wait_closed()
        return final

    finals = await asyncio.gather(*(send(i, r, w) for i, (r, w, _) in enumerate(conns)))
    return greetings, list(finals)


@pytest.mark.timeout(120)
def test_500_concurrent_connections(start: Factory) -> None:
    server = start({"smtp": {"workers": 2}})
    wait_until(lambda: server.log().count("smtpd ready") == 2)
    greetings, finals = asyncio.run(_many_clients(server.port))
    assert greetings == [b"220 mx.test ESMTP mta\r\n"] * CONNECTIONS
    ids = [queue_id_of(reply) for reply in finals]
    assert len(set(ids)) == CONNECTIONS
    assert queued(server) == set(ids)
    for i, queue_id in enumerate(ids):
        envelope, data = stored(server, queue_id)
        assert envelope.sender == f"s{i}@client.test"
        assert [r.address for r in envelope.recipients] == [f"r{i}@example.org"]
        assert data.endswith(b"\r\nSubject: %d\r\n\r\nmessage %d\r\n" % (i, i))
    assert server.files("tmp") == []


# ----- clients that vanish ---------------------------------------------------------------


@pytest.mark.parametrize("size", [2_000, 2_000_000], ids=["small", "large"])
@pytest.mark.parametrize("how", ["close", "reset"])
def test_client_vanishing_mid_data_leaves_nothing(server: MtaProcess, how: str, size: int) -> None:
    before = workers(server)
    queued_before = queued(server)
    client = RawClient(server.port)
    client.cmd(b"EHLO client.test")
    start_transaction(client)
    line = b"a line of a message that will never end\r\n"
    client.send(HEADERS + line * (size // len(line)))
    if size > 1_000_000:  # DATA is streamed to the spool: a big part is on disk by now
        wait_until(lambda: len(server.files("tmp")) == 1, timeout=5)
    if how == "reset":  # RST instead of FIN
        client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()
    wait_until(lambda: server.files("tmp") == [], timeout=5)
    # nothing turns up late either: the one worker has dealt with the vanished client long
    # before it has answered every command of a whole new session
    queue_id = send_message(server)
    assert server.files("tmp") == []
    assert queued(server) == queued_before | {queue_id}
    assert_same_workers(server, before)
