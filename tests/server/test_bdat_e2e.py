"""BDAT (RFC 3030) through a real ``mta serve``: what is queued, and what a next hop gets.

A raw socket speaks CHUNKING (smtplib cannot); the stored file must hold our trace header
and then exactly the chunks' octets, and a message received in chunks and relayed with
DATA must arrive whole at a capture sink: dot-stuffed on the way, so that a chunk holding
``CRLF . CRLF`` can neither end the message early nor smuggle a second one.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterator

import pytest

from tests.delivery.sink import CaptureSink
from tests.helpers import MtaProcess, RawClient
from tests.server.queue_view import queue_id_of, running_relay
from tests.server.test_smtpd_e2e import HELO, all_envelopes, assert_stored_exactly

pytestmark = pytest.mark.timeout(60)

Factory = Callable[..., MtaProcess]

SMUGGLER = (
    b"Subject: chunks\r\n\r\n"
    b"..two dots stay two\r\n"
    b".\r\n"
    b"MAIL FROM:<evil@x.test>\r\nRCPT TO:<victim@example.org>\r\nDATA\r\n"
    b"Subject: smuggled\r\n\r\n.\r\n"
    b"end of the one message\r\n"
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, dead_relay: str) -> Iterator[MtaProcess]:
    yield from running_relay(tmp_path_factory, dead_relay, {"smtp": {"max_message_size": 200_000}})


def bdat(payload: bytes, last: bool = False) -> bytes:
    return b"BDAT %d%s\r\n" % (len(payload), b" LAST" if last else b"") + payload


ENVELOPE = b"MAIL FROM:<a@client.test>\r\nRCPT TO:<b@example.org>\r\n"


def test_chunking_is_offered(server: MtaProcess) -> None:
    client = RawClient(server.port)
    ehlo = client.cmd(b"EHLO " + HELO.encode())
    assert re.search(rb"250[ -]CHUNKING\r\n", ehlo)
    client.close()


def test_pipelined_chunks_are_stored_byte_exact(server: MtaProcess) -> None:
    client = RawClient(server.port)
    client.cmd(b"EHLO " + HELO.encode())
    head, tail = SMUGGLER[:40], SMUGGLER[40:]
    client.send(ENVELOPE + bdat(head) + bdat(tail) + b"BDAT 0 LAST\r\nQUIT\r\n")  # one write
    replies = client.replies(6)
    assert replies[:4] == [
        b"250 2.1.0 Ok\r\n",
        b"250 2.1.5 Ok\r\n",
        b"250 2.0.0 Ok: 40 octets\r\n",
        b"250 2.0.0 Ok: %d octets\r\n" % len(tail),
    ]
    queue_id = queue_id_of(replies[4])
    assert replies[5].startswith(b"221 ")
    client.close()
    assert_stored_exactly(server, queue_id, SMUGGLER, recipient="b@example.org")
    assert not [e for e in all_envelopes(server) if e.sender == "evil@x.test"]


def test_binary_chunks_of_a_large_message(server: MtaProcess) -> None:
    """8-bit octets, a CRLF split between chunks, chunks of odd sizes: stored exactly."""
    line = bytes(range(0x20, 0x7F)) + bytes(range(0x80, 0x100)) + b"\r\n"
    message = b"Subject: big\r\n\r\n" + line * 600  # about 134 KB
    cuts = [0, 1, 17, 4096, 4097, 65_536, 100_003, len(message)]
    client = RawClient(server.port)
    client.cmd(b"EHLO " + HELO.encode())
    client.send(ENVELOPE.replace(b">\r\n", b"> BODY=8BITMIME\r\n", 1))
    assert [r[:3] for r in client.replies(2)] == [b"250", b"250"]
    for a, b in itertools.pairwise(cuts):
        client.send(bdat(message[a:b], last=b == len(message)))
    replies = client.replies(len(cuts) - 1)
    assert all(r.startswith(b"250 2.0.0 Ok: ") for r in replies[:-1])
    queue_id = queue_id_of(replies[-1])
    client.close()
    stored = assert_stored_exactly(server, queue_id, message, recipient="b@example.org")
    assert stored.envelope.body_type == "8BITMIME"


def test_size_limit_holds_across_chunks_and_the_session_stays_in_step(
    server: MtaProcess,
) -> None:
    client = RawClient(server.port)
    client.cmd(b"EHLO " + HELO.encode())
    chunk = b"x" * 998 + b"\r\n"
    client.send(ENVELOPE + bdat(chunk * 150) + bdat(chunk * 60, last=True))
    replies = client.replies(4)
    assert replies[2] == b"250 2.0.0 Ok: 150000 octets\r\n"
    assert replies[3].startswith(b"552 5.3.4 ")
    assert client.cmd(b"NOOP") == b"250 2.0.0 Ok\r\n"  # not a byte of the chunks was a command
    client.close()


def test_received_in_chunks_relayed_with_data(mta_factory: Factory, sink: CaptureSink) -> None:
    relay = mta_factory({"delivery": {"relayhost": f"127.0.0.1:{sink.port}"}})
    client = RawClient(relay.port)
    client.cmd(b"EHLO " + HELO.encode())
    client.send(ENVELOPE + bdat(SMUGGLER[:25]) + bdat(SMUGGLER[25:], last=True))
    assert client.replies(4)[3].startswith(b"250 2.0.0 Ok: queued as ")
    client.close()
    [got] = sink.wait_for(1)
    assert got.data.endswith(SMUGGLER)  # our Received: header, then exactly the chunks
    assert (got.mail_from, got.rcpt_tos) == ("a@client.test", ["b@example.org"])
    assert len(sink.messages) == 1
