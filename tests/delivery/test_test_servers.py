"""The delivery tests' servers, checked against real clients: smtplib and dnspython.

If these fail, delivery test failures mean nothing; so each knob the delivery tests rely on
(rejections, failures, down/up, STARTTLS, LMTP, truncation) is exercised here on its own.
"""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import smtplib
import socket
import ssl
import struct
from collections.abc import Callable, Iterator

import dns.asyncresolver
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.resolver
import pytest

from tests.delivery import sink as sink_module
from tests.delivery.dnsserver import DnsServer
from tests.delivery.sink import CaptureSink
from tests.helpers import RawClient

Connect = Callable[[CaptureSink], RawClient]
HELO = "client.test"  # also spares smtplib a getfqdn() lookup
MESSAGE = b"Subject: hi\r\n\r\nHello.\r\n"


@pytest.fixture
def tls_sink(sink_factory: Callable[..., CaptureSink]) -> CaptureSink:
    return sink_factory(tls=True)


@pytest.fixture
def lmtp_sink(sink_factory: Callable[..., CaptureSink]) -> CaptureSink:
    return sink_factory(lmtp=True)


@pytest.fixture
def dns_server() -> Iterator[DnsServer]:
    with DnsServer(ttl=123) as server:
        server.add_mx("example.test", [(20, "mx2.example.test"), (10, "mx1.example.test")])
        server.add_a("mx1.example.test", "192.0.2.1")
        server.add_a("mx1.example.test", "192.0.2.2")
        server.add_aaaa("mx1.example.test", "2001:db8::1")
        server.add_null_mx("nomail.test")
        yield server


@pytest.fixture
def raw() -> Iterator[Connect]:
    """Open RawClients on a sink; all are closed after the test."""
    opened: list[RawClient] = []

    def connect(server: CaptureSink) -> RawClient:
        opened.append(RawClient(server.port, server.host))
        return opened[-1]

    yield connect
    for client in opened:
        client.close()


def smtp(server: CaptureSink) -> smtplib.SMTP:
    return smtplib.SMTP(server.host, server.port, local_hostname=HELO, timeout=5)


def unverified() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


# -- CaptureSink: the happy path -------------------------------------------------------------


def test_sendmail_is_recorded_as_sent(sink: CaptureSink) -> None:
    with smtp(sink) as client:
        refused = client.sendmail("a@x.test", ["b@x.test", "c@x.test"], MESSAGE)
    assert refused == {}
    [got] = sink.wait_for(1)
    assert (got.mail_from, got.rcpt_tos) == ("a@x.test", ["b@x.test", "c@x.test"])
    assert got.data == MESSAGE
    assert (got.helo, got.peer, got.tls) == (HELO, "127.0.0.1", False)
    assert got.mail_params == {"SIZE": str(len(MESSAGE))}  # smtplib adds SIZE when offered


def test_ehlo_advertises_the_extensions(sink: CaptureSink) -> None:
    with smtp(sink) as client:
        client.ehlo()
        features = set(client.esmtp_features)
    assert {"pipelining", "8bitmime", "size", "enhancedstatuscodes", "smtputf8"} <= features
    assert "starttls" not in features


def test_null_sender_utf8_and_params(sink: CaptureSink) -> None:
    with smtp(sink) as client:
        client.sendmail("", ["ü@x.test"], MESSAGE, mail_options=["SMTPUTF8", "BODY=8BITMIME"])
    [got] = sink.wait_for(1)
    assert (got.mail_from, got.rcpt_tos) == ("", ["ü@x.test"])
    assert got.mail_params == {"SIZE": str(len(MESSAGE)), "SMTPUTF8": None, "BODY": "8BITMIME"}


def test_dot_stuffed_lines_come_back_unstuffed(sink: CaptureSink) -> None:
    body = b"Subject: dots\r\n\r\n.\r\n..\r\n.leading\r\nmiddle . dot\r\n"
    with smtp(sink) as client:
        client.sendmail("a@x.test", ["b@x.test"], body)
    assert sink.wait_for(1)[0].data == body


def test_with_a_data_limit_a_message_is_kept_as_its_first_octets_length_and_digest(
    sink_factory: Callable[..., CaptureSink],
) -> None:
    sink = sink_factory(data_limit=16)
    body = b"Subject: long\r\n\r\n" + b".dotted line\r\n" * 1000
    with smtp(sink) as client:
        client.sendmail("a@x.test", ["b@x.test"], body)
    [got] = sink.wait_for(1)
    assert got.data == body[:16]
    assert (got.size, got.sha256) == (len(body), hashlib.sha256(body).hexdigest())


def test_only_crlf_dot_crlf_ends_the_data(sink: CaptureSink, raw: Connect) -> None:
    client = raw(sink)
    for line in (b"EHLO raw.test", b"MAIL FROM:<a@x.test>", b"RCPT TO:<b@x.test>", b"DATA"):
        client.cmd(line)
    client.send(b"bare\n.\nlf\r\n..x\r\nend\r\n.\r\n")
    assert client.reply().startswith(b"250 ")
    assert sink.messages[0].data == b"bare\n.\nlf\r\n.x\r\nend\r\n"


def test_empty_message(sink: CaptureSink, raw: Connect) -> None:
    client = raw(sink)
    for line in (b"HELO raw.test", b"MAIL FROM:<>", b"RCPT TO:<b@x.test>", b"DATA"):
        client.cmd(line)
    assert client.cmd(b".").startswith(b"250 ")
    assert sink.messages[0].data == b""


@pytest.mark.parametrize("chunk", [10_000, 1], ids=["one-write", "byte-by-byte"])
def test_pipelined_commands_are_answered_in_order(
    sink: CaptureSink, raw: Connect, chunk: int
) -> None:
    sink.rcpt_replies = {"bad@x.test": (550, "5.1.1 No such user")}
    stream = (
        b"EHLO raw.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<bad@x.test>\r\n"
        b"RCPT TO:<b@x.test>\r\nDATA\r\nbody\r\n.\r\nNOOP\r\nQUIT\r\n"
    )
    client = raw(sink)
    for i in range(0, len(stream), chunk):
        client.send(stream[i : i + chunk])
    codes = [reply[:3] for reply in client.replies(8)]
    assert codes == [b"250", b"250", b"550", b"250", b"354", b"250", b"250", b"221"]
    assert sink.wait_for(1)[0].rcpt_tos == ["b@x.test"]


def test_many_transactions_on_one_connection(sink: CaptureSink) -> None:
    with smtp(sink) as client:
        for n in range(3):
            client.sendmail("a@x.test", [f"r{n}@x.test"], MESSAGE)
        client.rset()
        client.noop()
    assert [m.rcpt_tos for m in sink.wait_for(3)] == [["r0@x.test"], ["r1@x.test"], ["r2@x.test"]]
    assert (sink.connections, sink.transactions) == (1, 3)


def test_commands_out_of_sequence_are_refused(sink: CaptureSink, raw: Connect) -> None:
    client = raw(sink)
    assert client.cmd(b"MAIL FROM:<a@x.test>").startswith(b"503 ")
    assert client.cmd(b"EHLO raw.test").startswith(b"250-")
    assert client.cmd(b"RCPT TO:<b@x.test>").startswith(b"503 ")
    assert client.cmd(b"MAIL FROM:<a@x.test>").startswith(b"250 ")
    assert client.cmd(b"MAIL FROM:<a@x.test>").startswith(b"503 ")
    assert client.cmd(b"DATA").startswith(b"554 ")
    assert client.cmd(b"MAIL FROM:a@x.test").startswith(b"503 ")  # still nested
    assert client.cmd(b"RSET").startswith(b"250 ")
    assert client.cmd(b"MAIL FROM:a@x.test").startswith(b"501 ")
    assert client.cmd(b"STARTTLS").startswith(b"502 ")
    assert client.cmd(b"LHLO raw.test").startswith(b"500 ")
    assert client.cmd(b"VRFY a").startswith(b"500 ")


def test_wait_for_and_clear(sink: CaptureSink) -> None:
    with pytest.raises(TimeoutError):
        sink.wait_for(1, timeout=0.05)
    with smtp(sink) as client:
        client.sendmail("a@x.test", ["b@x.test"], MESSAGE)
    sink.wait_for(1)
    sink.clear()
    assert (sink.messages, sink.connections, sink.transactions) == ([], 0, 0)


# -- CaptureSink: misbehaviour on demand ------------------------------------------------------


def test_refused_recipient_is_reported_and_the_others_get_the_message(sink: CaptureSink) -> None:
    sink.rcpt_replies = {"Bad@X.test": (550, "5.1.1 No such user")}
    with smtp(sink) as client:
        refused = client.sendmail("a@x.test", ["bad@x.test", "good@x.test"], MESSAGE)
    assert refused == {"bad@x.test": (550, b"5.1.1 No such user")}
    assert sink.wait_for(1)[0].rcpt_tos == ["good@x.test"]


def test_every_recipient_refused(sink: CaptureSink) -> None:
    sink.rcpt_replies = {"b@x.test": (450, "4.2.1 Try later")}
    with smtp(sink) as client, pytest.raises(smtplib.SMTPRecipientsRefused):
        client.sendmail("a@x.test", ["b@x.test"], MESSAGE)
    assert sink.messages == []


def test_data_reply_failure_records_nothing(sink: CaptureSink) -> None:
    sink.data_reply = (451, "4.3.0 Try again later")
    with smtp(sink) as client:
        with pytest.raises(smtplib.SMTPDataError) as failure:
            client.sendmail("a@x.test", ["b@x.test"], MESSAGE)
        assert failure.value.smtp_code == 451
        sink.data_reply = None
        client.sendmail("a@x.test", ["b@x.test"], MESSAGE)  # same connection, works again
    assert len(sink.wait_for(1)) == 1
    assert sink.transactions == 2


def test_mail_reply_and_size_limit(sink: CaptureSink) -> None:
    sink.mail_reply = (553, "5.1.8 Bad sender")
    with smtp(sink) as client, pytest.raises(smtplib.SMTPSenderRefused):
        client.sendmail("a@x.test", ["b@x.test"], MESSAGE)
    sink.mail_reply, sink.max_size = None, 10
    with smtp(sink) as client, pytest.raises(smtplib.SMTPSenderRefused) as failure:
        client.sendmail("a@x.test", ["b@x.test"], MESSAGE)
    assert failure.value.smtp_code == 552
    assert sink.messages == []


def test_greeting_421(sink: CaptureSink) -> None:
    sink.greeting_reply = (421, "4.3.2 Busy")
    with pytest.raises(smtplib.SMTPConnectError) as failure:
        smtp(sink)
    assert failure.value.smtp_code == 421
    assert sink.connections == 1


def test_down_refuses_connections_and_up_listens_on_the_same_port(sink: CaptureSink) -> None:
    port = sink.port
    open_before = smtp(sink)
    sink.down()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((sink.host, port), timeout=2)
    open_before.sendmail("a@x.test", ["early@x.test"], MESSAGE)  # open sessions carry on
    open_before.quit()
    sink.up()
    assert sink.port == port
    with smtp(sink) as client:
        client.sendmail("a@x.test", ["late@x.test"], MESSAGE)
    assert [m.rcpt_tos for m in sink.wait_for(2)] == [["early@x.test"], ["late@x.test"]]


def test_drop_connections(sink: CaptureSink) -> None:
    client = smtp(sink)
    sink.drop_connections()
    with pytest.raises(smtplib.SMTPServerDisconnected):
        client.noop()
    client.close()


# -- CaptureSink: STARTTLS and LMTP ------------------------------------------------------------


def test_starttls(tls_sink: CaptureSink) -> None:
    with smtp(tls_sink) as client:
        client.ehlo()
        assert client.has_extn("starttls")
        client.starttls(context=unverified())
        client.ehlo()
        assert not client.has_extn("starttls")
        client.sendmail("a@x.test", ["b@x.test"], MESSAGE)
    [got] = tls_sink.wait_for(1)
    assert (got.tls, got.helo, got.data) == (True, HELO, MESSAGE)


def test_starttls_certificate_verifies_against_cert_pem(tls_sink: CaptureSink) -> None:
    context = ssl.create_default_context(cadata=tls_sink.cert_pem.decode())
    with smtp(tls_sink) as client:
        client.starttls(context=context)  # checks the hostname "127.0.0.1" too
        assert client.noop()[0] == 250


def test_plaintext_pipelined_after_starttls_is_discarded(
    tls_sink: CaptureSink, raw: Connect
) -> None:
    client = raw(tls_sink)
    client.cmd(b"EHLO raw.test")
    client.send(b"STARTTLS\r\nMAIL FROM:<injected@x.test>\r\n")
    assert client.reply().startswith(b"220 ")
    with unverified().wrap_socket(client.sock, server_hostname="localhost") as tls:
        tls.sendall(b"NOOP\r\n")
        assert tls.recv(1024).startswith(b"250 ")  # not a 503 for the injected MAIL


def test_lmtp_replies_once_per_recipient(lmtp_sink: CaptureSink) -> None:
    lmtp_sink.rcpt_replies = {"gone@x.test": (550, "5.1.1 No such user")}
    lmtp_sink.lmtp_data_replies = {"full@x.test": (452, "4.2.2 Mailbox full")}
    with smtplib.LMTP(lmtp_sink.host, lmtp_sink.port, local_hostname=HELO, timeout=5) as client:
        client.ehlo()  # smtplib.LMTP sends LHLO
        client.mail("a@x.test")
        assert client.rcpt("ok@x.test")[0] == 250
        assert client.rcpt("gone@x.test")[0] == 550
        assert client.rcpt("full@x.test")[0] == 250
        assert client.data(MESSAGE)[0] == 250  # for ok@x.test
        assert client.getreply() == (452, b"4.2.2 Mailbox full")  # for full@x.test
        assert client.noop()[0] == 250
    [got] = lmtp_sink.wait_for(1)
    assert (got.rcpt_tos, got.helo, got.data) == (["ok@x.test"], HELO, MESSAGE)


def test_lmtp_refuses_smtp_greetings(lmtp_sink: CaptureSink, raw: Connect) -> None:
    client = raw(lmtp_sink)
    assert b"LMTP" in client.greeting
    assert client.cmd(b"EHLO raw.test").startswith(b"500 ")
    assert client.cmd(b"HELO raw.test").startswith(b"500 ")
    assert client.cmd(b"LHLO raw.test").startswith(b"250-")


@pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl CLI")
def test_openssl_fallback_makes_a_usable_certificate() -> None:
    cert, _key = sink_module._self_signed_openssl()
    assert cert.startswith(b"-----BEGIN CERTIFICATE-----")
    ssl.create_default_context(cadata=cert.decode())  # parses


# -- DnsServer ----------------------------------------------------------------------------------


def resolver(server: DnsServer, lifetime: float = 2.0) -> dns.resolver.Resolver:
    r = dns.resolver.Resolver(configure=False)
    r.nameservers, r.port, r.lifetime = [server.host], server.port, lifetime
    return r


def test_mx_answer_is_authoritative_with_the_ttl(dns_server: DnsServer) -> None:
    answer = resolver(dns_server).resolve("example.test", "MX")
    assert sorted((mx.preference, mx.exchange.to_text()) for mx in answer) == [
        (10, "mx1.example.test."),
        (20, "mx2.example.test."),
    ]
    assert answer.rrset is not None and answer.rrset.ttl == 123
    assert answer.response.flags & dns.flags.AA


def test_a_and_aaaa_with_the_async_resolver(dns_server: DnsServer) -> None:
    async def lookup() -> tuple[set[str], set[str]]:
        r = dns.asyncresolver.Resolver(configure=False)
        r.nameservers, r.port, r.lifetime = [dns_server.host], dns_server.port, 2.0
        a = await r.resolve("MX1.Example.TEST", "A")  # names are case-insensitive
        aaaa = await r.resolve("mx1.example.test.", "AAAA")
        return {x.to_text() for x in a}, {x.to_text() for x in aaaa}

    assert asyncio.run(lookup()) == ({"192.0.2.1", "192.0.2.2"}, {"2001:db8::1"})


def test_null_mx(dns_server: DnsServer) -> None:
    [mx] = resolver(dns_server).resolve("nomail.test", "MX")
    assert (mx.preference, mx.exchange.to_text()) == (0, ".")


def test_nxdomain_and_nodata(dns_server: DnsServer) -> None:
    r = resolver(dns_server)
    with pytest.raises(dns.resolver.NXDOMAIN):
        r.resolve("missing.example.test", "A")
    with pytest.raises(dns.resolver.NoAnswer):
        r.resolve("example.test", "A")  # exists, but has only MX
    response = dns.query.udp(
        dns.message.make_query("example.test", "AAAA"),
        dns_server.host,
        port=dns_server.port,
        timeout=2,
    )
    assert response.rcode() == dns.rcode.NOERROR and not response.answer
    assert response.authority[0].name.to_text() == "example.test."


def test_servfail_and_timeout(dns_server: DnsServer) -> None:
    dns_server.servfail("broken.test")
    dns_server.timeout("slow.test")
    with pytest.raises(dns.resolver.NoNameservers):
        resolver(dns_server).resolve("broken.test", "MX")
    with pytest.raises(dns.resolver.LifetimeTimeout):
        resolver(dns_server, lifetime=0.3).resolve("slow.test", "MX")
    assert ("slow.test", "MX", "udp") in dns_server.queries


def test_truncated_udp_falls_back_to_tcp(dns_server: DnsServer) -> None:
    dns_server.truncate_udp()
    query = dns.message.make_query("example.test", "MX")
    udp = dns.query.udp(query, dns_server.host, port=dns_server.port, timeout=2)
    assert udp.flags & dns.flags.TC and not udp.answer
    tcp = dns.query.tcp(query, dns_server.host, port=dns_server.port, timeout=2)
    assert len(tcp.answer[0]) == 2
    before = len(dns_server.queries)
    assert len(resolver(dns_server).resolve("example.test", "MX")) == 2
    assert dns_server.queries[before:] == [
        ("example.test", "MX", "udp"),
        ("example.test", "MX", "tcp"),
    ]


def test_oversized_udp_answer_is_truncated(dns_server: DnsServer) -> None:
    for n in range(60):  # 60 A records do not fit in 512 octets
        dns_server.add_a("many.test", f"192.0.2.{n}")
    query = dns.message.make_query("many.test", "A", use_edns=False)
    udp = dns.query.udp(query, dns_server.host, port=dns_server.port, timeout=2)
    assert udp.flags & dns.flags.TC
    assert len(resolver(dns_server).resolve("many.test", "A")) == 60
    assert dns_server.queries[-1] == ("many.test", "A", "tcp")


def test_tcp_answers_several_queries_on_one_connection(dns_server: DnsServer) -> None:
    queries = [dns.message.make_query(name, "A") for name in ("mx1.example.test", "nope.test")]
    wires = [q.to_wire() for q in queries]
    with socket.create_connection((dns_server.host, dns_server.port), timeout=2) as sock:
        sock.sendall(b"".join(struct.pack("!H", len(w)) + w for w in wires))
        stream = sock.makefile("rb")
        rcodes = []
        for _ in queries:
            (size,) = struct.unpack("!H", stream.read(2))
            rcodes.append(dns.message.from_wire(stream.read(size)).rcode())
        stream.close()
    assert rcodes == [dns.rcode.NOERROR, dns.rcode.NXDOMAIN]
    assert [q[2] for q in dns_server.queries] == ["tcp", "tcp"]
