"""DANE delivery (RFC 7672) against real servers: the test DNS server stands in for the
validating resolver (it sets the AD bit per name), STARTTLS sinks with trustme certificates
on 127.0.0.2 and 127.0.0.3 are the MX hosts of dest.test.

Most tests drive a :class:`Deliverer` (the delivery process's code, with the real resolver
and client) for speed; one runs ``mta serve`` end to end for the configuration, the log
line and the metric.
"""

from __future__ import annotations

import re
import smtplib
import ssl
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

import msgspec
import pytest
import trustme
import uvloop
from prometheus_client import REGISTRY

from mta.config import Config, DeliveryConfig
from mta.delivery.deliver import Deliverer
from mta.delivery.dns import Resolver
from mta.delivery.routing import NextHop
from mta.delivery.smtp_client import Transaction
from mta.queue.results import RecipientResult
from tests.delivery.dnsserver import DnsServer
from tests.delivery.sink import CaptureSink
from tests.delivery.test_dane_match import der, record
from tests.delivery.test_mx import common_port
from tests.helpers import MtaProcess, wait_until

pytestmark = pytest.mark.timeout(60)

T = TypeVar("T")
SinkFactory = Callable[..., CaptureSink]
TX = Transaction(sender="a@b.test", recipients=["c@dest.test"], message=b"Subject: x\r\n\r\nx\r\n")
MX1, MX2 = "mx1.dest.test", "mx2.dest.test"
HOSTS = ("127.0.0.2", "127.0.0.3")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return uvloop.run(coro)


def tls_count(level: str, outcome: str) -> float:
    labels = {"level": level, "outcome": outcome}
    return REGISTRY.get_sample_value("mta_delivery_tls_connections_total", labels) or 0.0


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def port() -> int:
    return common_port(HOSTS)


class Zone:
    """dest.test: MX 10 mx1 (127.0.0.2), MX 20 mx2 (127.0.0.3); solo.test: MX 10 mx1 only;
    both MX RRsets authenticated."""

    def __init__(self, dns: DnsServer, port: int) -> None:
        self.dns, self.port = dns, port
        dns.add_mx("dest.test", [(10, MX1), (20, MX2)])
        dns.add_mx("solo.test", [(10, MX1)])
        for domain in ("dest.test", "solo.test"):
            dns.authenticated(domain)
        for host, ip in zip((MX1, MX2), HOSTS, strict=True):
            dns.add_a(host, ip)
            dns.authenticated(host)

    def tlsa_name(self, host: str) -> str:
        return f"_{self.port}._tcp.{host}"

    def tlsa(self, host: str, *records: Any, authenticated: bool = True) -> None:
        for r in records:
            self.dns.add_tlsa(self.tlsa_name(host), r.usage, r.selector, r.mtype, r.data)
        self.dns.authenticated(self.tlsa_name(host), authenticated)


@pytest.fixture
def zone(port: int) -> Iterator[Zone]:
    with DnsServer() as dns:
        yield Zone(dns, port)


def tls_sink(
    factory: SinkFactory, ca: trustme.CA, ip: str, port: int, *names: str, with_ca: bool = False
) -> tuple[CaptureSink, bytes]:
    """A STARTTLS sink whose certificate from ``ca`` names ``names`` (the chain it sends
    ends with the CA's own certificate when ``with_ca``), and that certificate's DER."""
    cert = ca.issue_cert(*names)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    chain = cert.private_key_and_cert_chain_pem.bytes()
    with trustme.Blob(chain + (ca.cert_pem.bytes() if with_ca else b"")).tempfile() as path:
        context.load_cert_chain(path)
    return factory(ip, port, ssl_context=context), der(cert.cert_chain_pems[0])


def deliver(zone: Zone, tls: str = "dane", domain: str = "solo.test") -> RecipientResult:
    """One delivery to ``domain`` at level ``tls``, by a fresh Deliverer (empty caches)."""
    config = Config(
        hostname="relay.test",
        delivery=DeliveryConfig(
            tls=tls,  # type: ignore[arg-type]
            smtp_port=zone.port,
            dns_servers=(f"127.0.0.1:{zone.dns.port}",),
            connect_timeout=5.0,
            command_timeout=10.0,
        ),
    )

    async def once() -> RecipientResult:
        deliverer = Deliverer(config, Resolver(config.delivery.dns_servers, timeout=5.0))
        [result] = await deliverer.deliver(NextHop("smtp", domain, zone.port, mx=True), TX)
        await deliverer.close_idle(0)
        return result

    return run(once())


def test_dane_ee_match_delivers_authenticated(
    zone: Zone, ca: trustme.CA, sink_factory: SinkFactory
) -> None:
    sink, leaf = tls_sink(sink_factory, ca, HOSTS[0], zone.port, "unrelated.test")
    zone.tlsa(MX1, record(3, 1, 1, leaf))
    before = tls_count("dane", "dane")
    result = deliver(zone)
    assert result.status == "sent", result
    assert re.fullmatch(r"TLSv1\.[23] dane", result.tls)
    assert tls_count("dane", "dane") == before + 1
    [got] = sink.wait_for(1)
    assert got.tls and sink.server_names == [MX1]
    # the relay asked for the AD bit (the DNS server sets it only when asked) and looked
    # up the TLSA record of the MX host on the port it delivers to
    assert (zone.tlsa_name(MX1), "TLSA", "udp") in zone.dns.queries


def test_dane_ee_mismatch_defers_and_the_next_mx_takes_it(
    zone: Zone, ca: trustme.CA, sink_factory: SinkFactory
) -> None:
    sink1, _ = tls_sink(sink_factory, ca, HOSTS[0], zone.port, MX1)
    sink2, leaf2 = tls_sink(sink_factory, ca, HOSTS[1], zone.port, MX2)
    zone.tlsa(MX1, record(3, 1, 1, leaf2))  # mx1's record pins mx2's key: mismatch
    zone.tlsa(MX2, record(3, 1, 1, leaf2))
    before = tls_count("dane", "dane_failed")
    result = deliver(zone, domain="dest.test")
    assert result.status == "sent" and result.relay.startswith(f"{MX2}[127.0.0.3]"), result
    assert tls_count("dane", "dane_failed") == before + 1
    sink2.wait_for(1)
    assert sink1.connections == 1 and sink1.transactions == 0  # dropped after the handshake


def test_dane_ee_mismatch_everywhere_defers(
    zone: Zone, ca: trustme.CA, sink_factory: SinkFactory
) -> None:
    sink, _ = tls_sink(sink_factory, ca, HOSTS[0], zone.port, MX1)
    zone.tlsa(MX1, record(3, 1, 1, der(ca.cert_pem)))
    result = deliver(zone)
    assert (result.status, result.dsn) == ("deferred", "4.7.5"), result
    assert "DANE: no TLSA record matches the server certificate" in result.reply
    assert sink.transactions == 0


@pytest.mark.parametrize("selector", [0, 1])
def test_dane_ta_with_the_right_name_delivers(
    zone: Zone, ca: trustme.CA, sink_factory: SinkFactory, selector: int
) -> None:
    sink, _ = tls_sink(sink_factory, ca, HOSTS[0], zone.port, MX1, with_ca=True)
    zone.tlsa(MX1, record(2, selector, 1, der(ca.cert_pem)))
    result = deliver(zone)
    assert result.status == "sent" and result.tls.endswith(" dane"), result
    sink.wait_for(1)


def test_dane_ta_with_a_wrong_name_defers(
    zone: Zone, ca: trustme.CA, sink_factory: SinkFactory
) -> None:
    sink, _ = tls_sink(sink_factory, ca, HOSTS[0], zone.port, "other.test", with_ca=True)
    zone.tlsa(MX1, record(2, 1, 1, der(ca.cert_pem)))
    result = deliver(zone)
    assert (result.status, result.dsn) == ("deferred", "4.7.5"), result
    assert "certificate does not match mx1.dest.test, solo.test" in result.reply
    assert sink.transactions == 0


def test_implicit_mx_with_authenticated_denial_uses_the_domain_s_tlsa(
    zone: Zone, ca: trustme.CA, sink_factory: SinkFactory
) -> None:
    """No MX (NODATA, authenticated): the domain is its own exchanger and TLSA base name."""
    sink, leaf = tls_sink(sink_factory, ca, HOSTS[0], zone.port, "bare.test")
    zone.dns.add_a("bare.test", HOSTS[0])
    zone.dns.authenticated("bare.test")
    zone.tlsa("bare.test", record(3, 1, 1, leaf))
    result = deliver(zone, domain="bare.test")
    assert result.status == "sent" and result.tls.endswith(" dane"), result
    zone.dns.authenticated("bare.test", False)  # nothing about bare.test is authenticated
    result = deliver(zone, domain="bare.test")
    assert result.status == "sent" and result.tls.endswith(" unverified"), result
    sink.wait_for(2)


def test_unauthenticated_tlsa_falls_back_to_may(
    zone: Zone, ca: trustme.CA, sink_factory: SinkFactory
) -> None:
    sink, _ = tls_sink(sink_factory, ca, HOSTS[0], zone.port, MX1)
    zone.tlsa(MX1, record(3, 1, 1, der(ca.cert_pem)), authenticated=False)  # would not match
    result = deliver(zone)
    assert result.status == "sent" and result.tls.endswith(" unverified"), result
    sink.wait_for(1)


def test_only_pkix_usages_fall_back_to_may(
    zone: Zone, ca: trustme.CA, sink_factory: SinkFactory
) -> None:
    """RFC 7672 §3.1.3: PKIX-TA(0) and PKIX-EE(1) records are unusable for SMTP."""
    sink, leaf = tls_sink(sink_factory, ca, HOSTS[0], zone.port, "other.test")
    zone.tlsa(MX1, record(1, 1, 1, leaf), record(0, 0, 1, der(ca.cert_pem)))
    result = deliver(zone, tls="dane")
    assert result.status == "sent" and result.tls.endswith(" unverified"), result
    sink.wait_for(1)


def test_unauthenticated_mx_means_no_dane(
    zone: Zone, ca: trustme.CA, sink_factory: SinkFactory
) -> None:
    """RFC 7672 §2.2.1: TLSA records of MX hosts from an insecure MX RRset are not used."""
    sink, _ = tls_sink(sink_factory, ca, HOSTS[0], zone.port, MX1)
    zone.tlsa(MX1, record(3, 1, 1, der(ca.cert_pem)))  # authenticated, would not match
    zone.dns.authenticated("solo.test", False)
    result = deliver(zone)
    assert result.status == "sent" and result.tls.endswith(" unverified"), result
    assert not any(q[1] == "TLSA" for q in zone.dns.queries)
    sink.wait_for(1)


def test_unauthenticated_host_addresses_mean_no_dane(
    zone: Zone, ca: trustme.CA, sink_factory: SinkFactory
) -> None:
    """RFC 7672 §2.2.2: no TLSA lookup for an MX host whose address records are insecure."""
    sink, _ = tls_sink(sink_factory, ca, HOSTS[0], zone.port, MX1)
    zone.tlsa(MX1, record(3, 1, 1, der(ca.cert_pem)))  # authenticated, would not match
    zone.dns.authenticated(MX1, False)
    result = deliver(zone)
    assert result.status == "sent" and result.tls.endswith(" unverified"), result
    assert not any(q[1] == "TLSA" for q in zone.dns.queries)
    sink.wait_for(1)


def test_authenticated_denial_falls_back_to_may(
    zone: Zone, ca: trustme.CA, sink_factory: SinkFactory
) -> None:
    sink, _ = tls_sink(sink_factory, ca, HOSTS[0], zone.port, MX1)
    zone.dns.authenticated(zone.tlsa_name(MX1))  # NXDOMAIN, with AD
    result = deliver(zone)
    assert result.status == "sent" and result.tls.endswith(" unverified"), result
    sink.wait_for(1)


def test_tlsa_lookup_failure_defers(zone: Zone, ca: trustme.CA, sink_factory: SinkFactory) -> None:
    sink, _ = tls_sink(sink_factory, ca, HOSTS[0], zone.port, MX1)
    zone.dns.servfail(zone.tlsa_name(MX1))
    result = deliver(zone)
    assert (result.status, result.dsn) == ("deferred", "4.7.5"), result
    assert "TLSA lookup error for mx1.dest.test" in result.reply
    assert sink.connections == 0


def test_no_starttls_with_usable_tlsa_defers(
    zone: Zone, ca: trustme.CA, sink_factory: SinkFactory
) -> None:
    sink = sink_factory(HOSTS[0], zone.port)  # plain SMTP, no STARTTLS
    zone.tlsa(MX1, record(3, 1, 1, der(ca.cert_pem)))
    result = deliver(zone)
    assert (result.status, result.dsn) == ("deferred", "4.7.4"), result
    assert sink.transactions == 0


def test_dane_only_defers_without_dane(
    zone: Zone, ca: trustme.CA, sink_factory: SinkFactory
) -> None:
    sink, leaf = tls_sink(sink_factory, ca, HOSTS[0], zone.port, MX1)
    zone.tlsa(MX1, record(3, 1, 1, leaf), authenticated=False)
    result = deliver(zone, tls="dane-only")
    assert (result.status, result.dsn) == ("deferred", "4.7.5"), result
    assert sink.connections == 0
    zone.dns.authenticated(zone.tlsa_name(MX1))
    assert deliver(zone, tls="dane-only").tls.endswith(" dane")


def test_dane_levels_in_the_config() -> None:
    config = msgspec.convert(
        {"delivery": {"tls": "dane"}, "tls_policy": {"dest.test": "dane-only"}}, Config
    )
    assert config.delivery.tls == "dane" and config.tls_policy == {"dest.test": "dane-only"}
    with pytest.raises(msgspec.ValidationError, match=r"delivery\.tls"):
        msgspec.convert({"delivery": {"tls": "dane-sometimes"}}, Config)


def test_end_to_end_log_line(
    mta_factory: Callable[..., MtaProcess],
    zone: Zone,
    ca: trustme.CA,
    sink_factory: SinkFactory,
) -> None:
    sink, leaf = tls_sink(sink_factory, ca, HOSTS[0], zone.port, MX1)
    zone.tlsa(MX1, record(3, 1, 1, leaf))
    relay = mta_factory(
        {
            "delivery": {
                "smtp_port": zone.port,
                "dns_servers": [f"127.0.0.1:{zone.dns.port}"],
                "tls": "none",
            },
            "tls_policy": {"dest.test": "dane"},
        }
    )
    with smtplib.SMTP("127.0.0.1", relay.port, local_hostname="client.test") as client:
        client.sendmail("a@sender.test", ["bob@dest.test"], b"Subject: 1\r\n\r\nx\r\n")
    [got] = sink.wait_for(1)
    assert got.tls
    log = wait_until(lambda: "status=sent" in relay.log() and relay.log())
    assert re.search(
        r"to=<bob@dest\.test>, relay=mx1\.dest\.test\[127\.0\.0\.2\]:\d+, "
        r"delay=[\d.]+, delays=[\d./]+, dsn=2\.0\.0, status=sent \(.*\), tls=TLSv1\.[23] dane$",
        log,
        re.MULTILINE,
    )
    assert "Verified TLS connection established to mx1.dest.test[127.0.0.2]" in log
