"""Hostile octets against a real relay and a real next hop (issue 10, item 7).

The probe found that ``CRLF NUL . CRLF`` went through byte for byte: a next hop that drops
NULs then reads the end of the data and the smuggled ``MAIL FROM:<admin@bank.test>`` as a
second message.  And an EHLO name of 1,900 characters with NUL, ESC and DEL went into
``Received:`` as one 1,939-octet line.  Here a relay runs in front of a capture sink, and
the sink is the judge: what it receives is what a next hop would receive.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest

from tests.delivery.sink import CaptureSink
from tests.faults.input_helpers import HELO, relay_to, send_raw_transaction, settled
from tests.helpers import MtaProcess, RawClient, wait_until
from tests.master import scrape

pytestmark = pytest.mark.timeout(90)

Factory = Callable[..., MtaProcess]

SMUGGLING = (
    b"Subject: first\r\n\r\nhello\r\n\x00.\r\n"
    b"MAIL FROM:<admin@bank.test>\r\nRCPT TO:<victim@example.org>\r\nDATA\r\n"
    b"Subject: smuggled\r\n\r\nwire the money\r\n.\r\n"
)
CONTROL = b"Subject: control\r\n\r\nafter the attempt\r\n.\r\n"


def test_nul_smuggling_is_refused_and_nothing_reaches_the_next_hop(
    mta_factory: Factory, sink: CaptureSink
) -> None:
    server = relay_to(mta_factory, sink)
    client = RawClient(server.port)
    assert client.cmd(b"EHLO " + HELO).startswith(b"250")
    reply = send_raw_transaction(client, b"good@client.test", SMUGGLING)
    assert reply.startswith(b"550 5.5.2 ") and b"NUL" in reply, reply
    # The session goes on: a normal message after it is taken and delivered.
    assert send_raw_transaction(client, b"control@client.test", CONTROL).startswith(b"250 ")
    assert client.cmd(b"QUIT").startswith(b"221 ")
    client.close()
    settled(server, sink, 1)
    (only,) = sink.messages  # neither the first message nor a smuggled second one
    assert only.mail_from == "control@client.test"
    assert b"bank.test" not in only.data
    assert sink.transactions == 1
    wait_until(
        lambda: scrape(server.metrics_port).value("mta_smtpd_rejects_total", reason="nul") == 1,
        timeout=10,
    )


def test_nul_stripped_for_a_listed_network_stays_one_message(
    mta_factory: Factory, sink: CaptureSink
) -> None:
    """Normalising is safe too: the line that becomes "." is dot-stuffed on the way out."""
    server = relay_to(mta_factory, sink, normalize_networks=["127.0.0.0/8"])
    client = RawClient(server.port)
    assert client.cmd(b"EHLO " + HELO).startswith(b"250")
    assert send_raw_transaction(client, b"good@client.test", SMUGGLING).startswith(b"250 ")
    assert client.cmd(b"QUIT").startswith(b"221 ")
    client.close()
    settled(server, sink, 1)
    (only,) = sink.messages
    assert only.mail_from == "good@client.test" and only.rcpt_tos == ["rcpt@example.org"]
    assert b"hello\r\n.\r\nMAIL FROM:<admin@bank.test>\r\n" in only.data
    assert b"\x00" not in only.data
    assert sink.transactions == 1


@pytest.mark.parametrize("verb", [b"EHLO", b"HELO"])
def test_hostile_helo_names_get_501(mta_factory: Factory, sink: CaptureSink, verb: bytes) -> None:
    server = relay_to(mta_factory, sink)
    names = [
        b"x\x00\x1b\x7f" + b"y" * 1900,  # the probe's name: 1,904 octets
        b"a\x00b.test",
        b"a\x1b[2Jb.test",
        b"a\x7fb.test",
        b"y" * 256,
    ]
    for name in names:
        client = RawClient(server.port)
        reply = client.cmd(verb + b" " + name)
        assert reply.startswith(b"501 5.5.2 "), (name[:20], reply)
        assert client.cmd(b"MAIL FROM:<a@client.test>").startswith(b"503 ")  # not greeted
        client.close()


def test_long_valid_helo_gives_a_received_header_of_short_lines(
    mta_factory: Factory, sink: CaptureSink
) -> None:
    server = relay_to(mta_factory, sink)
    helo = b".".join([b"a" * 63, b"b" * 63, b"c" * 63, b"d" * 61])  # 253 octets, valid
    client = RawClient(server.port)
    assert client.cmd(b"EHLO " + helo).startswith(b"250")
    sender = "a\u2028b@client.test".encode()  # SMTPUTF8 allows it; the log must not break
    assert client.cmd(b"MAIL FROM:<" + sender + b"> SMTPUTF8").startswith(b"250 ")
    assert client.cmd(b"RCPT TO:<rcpt@example.org>").startswith(b"250 ")
    assert client.cmd(b"DATA").startswith(b"354 ")
    client.send(b"Subject: long helo\r\n\r\nbody\r\n.\r\n")
    assert client.reply().startswith(b"250 ")
    client.close()
    settled(server, sink, 1)
    data = sink.messages[0].data
    head = data.split(b"\r\n\r\n", 1)[0]
    received = re.match(rb"Received: .*?\r\n(?=\S)", head, re.S)
    assert received, head
    lines = received.group().split(b"\r\n")[:-1]
    assert all(len(line) <= 998 for line in head.split(b"\r\n"))  # RFC 5322 §2.1.1
    assert all(len(line) <= 78 or len(line.split()) <= 2 for line in lines[:-1]), lines
    assert helo in received.group()
    assert not re.search(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]", head)
    log = server.log()
    assert "from=<a\\u2028b@client.test>" in log
    assert "\u2028" not in log
