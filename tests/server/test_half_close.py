"""A client that half-closes its side still hears every reply, its 250 included.

Clients shut down their sending side once they have said everything (``nc -N``, relays
that write a whole pipelined transaction and then wait for the replies): the server must
answer all of it, make the message durable and tell the client so, and only then close.
Before, the end of the client's input closed the connection at once and the 250 of a
message being committed was never heard (the client would send it again: a duplicate).
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from tests.helpers import MtaProcess
from tests.server.queue_view import queue_id_of, queued, running_relay

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, dead_relay: str) -> Iterator[MtaProcess]:
    yield from running_relay(tmp_path_factory, dead_relay, {})


def converse_then_half_close(port: int, data: bytes) -> bytes:
    """Send ``data`` (after the greeting), shut our side, read until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        greeting = sock.recv(4096)
        assert greeting.startswith(b"220 ")
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    return received


def test_a_whole_transaction_then_half_close_gets_every_reply(server: MtaProcess) -> None:
    wire = (
        b"EHLO client.test\r\nMAIL FROM:<a@client.test>\r\nRCPT TO:<b@example.org>\r\n"
        b"DATA\r\nSubject: half\r\n\r\nclosed\r\n.\r\nQUIT\r\n"
    )
    replies = converse_then_half_close(server.port, wire).split(b"\r\n")
    final = [line for line in replies if line.startswith(b"250 2.0.0 Ok: queued as ")]
    assert len(final) == 1, replies
    assert replies[-2].startswith(b"221 "), replies
    queue_id = queue_id_of(final[0] + b"\r\n")
    assert queue_id in queued(server)


def test_half_close_in_the_middle_of_a_message_keeps_nothing(server: MtaProcess) -> None:
    before = set(queued(server))
    wire = (
        b"EHLO client.test\r\nMAIL FROM:<a@client.test>\r\nRCPT TO:<b@example.org>\r\n"
        b"DATA\r\nSubject: cut\r\n\r\nno end"
    )
    replies = converse_then_half_close(server.port, wire)
    assert b"354 " in replies and b"queued as" not in replies
    assert set(queued(server)) == before
