"""Issue 10, item 6: a relay's memory must not grow with the size of the mail it carries.

A real relay (``mta serve``: master, smtpd, queue manager, delivery processes) takes 50
messages of 20 MB from a few concurrent clients and relays them to a capture sink, while
the resident memory of the whole tree (the sum over the master and every child, from
``/proc``) is sampled.  The peak must stay under 400 MiB, where the delivery processes
used to hold each message several times over (1,329 MB measured before the fix), and
every message must arrive byte-exact: the sink keeps the SHA-256 of each message's data,
compared with the digest of the trace header the relay added and the message as sent.

The sink runs in this test's process, not in the tree, and keeps only a digest and the
first octets of each message (``CaptureSink(data_limit=...)``), so the test itself does
not hold a gigabyte either.  Each client sends precomputed wire bytes over a raw socket
(smtplib would rewrite line ends and dot-stuff 20 MB with regular expressions for each
message, which costs more than the relay does).
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable

import pytest

from mta.protocol.client import dot_stuff
from tests.delivery.sink import Captured, CaptureSink
from tests.faults.memory_helpers import MIB, TreeRss
from tests.helpers import MtaProcess, RawClient, wait_until

MESSAGES = 50
MESSAGE_SIZE = 20_000_000  # octets: "20 MB", as the issue measured
CLIENTS = 5  # concurrent sessions, MESSAGES / CLIENTS messages each
PEAK_LIMIT = 400 * MIB  # the bound for the whole tree


def body(octets: int) -> bytes:
    """A body of about ``octets``: CRLF lines, every fourth starting with a dot."""
    dotted = b".a line that starts with a dot " + b"d" * 60 + b"\r\n"
    plain = b"an ordinary line of the body " + b"p" * 70 + b"\r\n"
    block = dotted + plain * 3
    return block * (octets // len(block))


def headers(n: int) -> bytes:
    return f"Message-ID: <big{n}@client.test>\r\nSubject: big {n}\r\n\r\n".encode()


def send_messages(port: int, numbers: range, wire_body: bytes) -> None:
    """One session: each message's headers, then the shared (stuffed) body and the end."""
    client = RawClient(port, timeout=60)
    assert client.cmd(b"EHLO client.test").startswith(b"250")
    for n in numbers:
        assert client.cmd(b"MAIL FROM:<a@client.test>").startswith(b"250")
        assert client.cmd(f"RCPT TO:<big{n}@example.test>".encode()).startswith(b"250")
        assert client.cmd(b"DATA").startswith(b"354")
        client.send(headers(n))
        client.send(wire_body)
        assert client.reply().startswith(b"250"), f"message {n} refused"
    client.cmd(b"QUIT")
    client.close()


def number(captured: Captured) -> int:
    """The message's number, from its recipient ``big<n>@example.test``."""
    return int(captured.rcpt_tos[0].removeprefix("big").partition("@")[0])


def arrived_whole(captured: Captured, message_body: bytes) -> bool:
    """The sink saw the relay's trace header (as its first octets show it), then exactly
    the message as sent: its headers and its body."""
    trace = captured.data[: captured.data.find(b"Message-ID: <big")]
    digest = hashlib.sha256(trace + headers(number(captured)))
    digest.update(message_body)
    size = len(trace) + len(headers(number(captured))) + len(message_body)
    return trace.startswith(b"Received: ") and (captured.size, captured.sha256) == (
        size,
        digest.hexdigest(),
    )


@pytest.mark.timeout(300)
def test_fifty_messages_of_20_mb_relay_byte_exact_in_bounded_memory(
    mta_factory: Callable[..., MtaProcess], sink_factory: Callable[..., CaptureSink]
) -> None:
    sink = sink_factory(data_limit=4096)
    relay = mta_factory({"delivery": {"relayhost": f"127.0.0.1:{sink.port}"}})
    message_body = body(MESSAGE_SIZE - 64)
    wire_body = dot_stuff(message_body)  # the body, stuffed, then "." CRLF
    per_client = MESSAGES // CLIENTS
    start = time.monotonic()
    with TreeRss(relay.pid) as rss:
        clients = [
            threading.Thread(
                target=send_messages,
                args=(relay.port, range(i * per_client, (i + 1) * per_client), wire_body),
            )
            for i in range(CLIENTS)
        ]
        for client in clients:
            client.start()
        for client in clients:
            client.join(240)
        accepted = time.monotonic() - start
        captured = sink.wait_for(MESSAGES, timeout=240)
        wait_until(relay.queue_empty, timeout=30)
    delivered = time.monotonic() - start
    print(
        f"\n{MESSAGES} x {MESSAGE_SIZE / 1e6:.0f} MB: accepted in {accepted:.1f} s, "
        f"delivered in {delivered:.1f} s; {rss.report()}"
    )
    assert not any(client.is_alive() for client in clients)
    assert sorted(number(c) for c in captured) == list(range(MESSAGES)), "each exactly once"
    damaged = [number(c) for c in captured if not arrived_whole(c, message_body)]
    assert not damaged, f"messages that did not arrive byte-exact: {damaged}"
    assert rss.peak < PEAK_LIMIT, rss.report()
