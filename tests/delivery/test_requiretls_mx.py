"""REQUIRETLS to an MX next hop, through a Deliverer (mta/delivery/deliver.py) with MX
records from the test DNS server and two TLS sinks on 127.0.0.2 and 127.0.0.3: an MX host
that does not offer REQUIRETLS is left (QUIT) for the next one (RFC 8689 §4.2.1), and an MX
next hop whose policy does not authenticate the server fails with 5.7.30 untried."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
import uvloop

from mta.config import Config, DeliveryConfig
from mta.delivery.deliver import Deliverer
from mta.delivery.dns import Resolver
from mta.delivery.routing import NextHop
from mta.delivery.smtp_client import Transaction
from mta.queue.results import RecipientResult
from tests.delivery.dnsserver import DnsServer
from tests.delivery.sink import CaptureSink
from tests.delivery.test_mx import common_port

pytestmark = pytest.mark.timeout(60)

HOSTS = ("127.0.0.2", "127.0.0.3")
TX = Transaction("a@b.test", ["c@dest.test"], b"Subject: x\r\n\r\nx\r\n", require_tls=True)


def tls_sink(ca: trustme.CA, host: str, port: int, name: str) -> CaptureSink:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert(name).configure_cert(context)
    return CaptureSink(host, port, ssl_context=context)


@pytest.fixture
def net(tmp_path: Path) -> Iterator[tuple[DnsServer, CaptureSink, CaptureSink, str]]:
    ca = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    port = common_port(HOSTS)
    with (
        DnsServer() as dns,
        tls_sink(ca, HOSTS[0], port, "mx1.dest.test") as mx1,
        tls_sink(ca, HOSTS[1], port, "mx2.dest.test") as mx2,
    ):
        dns.add_mx("dest.test", [(10, "mx1.dest.test"), (20, "mx2.dest.test")])
        dns.add_a("mx1.dest.test", HOSTS[0])
        dns.add_a("mx2.dest.test", HOSTS[1])
        mx2.extensions = ["REQUIRETLS"]
        yield dns, mx1, mx2, str(ca_file)


def deliver(net: tuple[DnsServer, CaptureSink, CaptureSink, str], **tls: str) -> RecipientResult:
    dns, mx1, _, ca_file = net
    dns_server = f"127.0.0.1:{dns.port}"
    config = Config(
        hostname="mx.test",
        delivery=DeliveryConfig(
            smtp_port=mx1.port, dns_servers=[dns_server], tls_ca_file=ca_file, command_timeout=10
        ),
        tls_policy=tls,
    )

    async def run() -> RecipientResult:
        deliverer = Deliverer(config, Resolver((dns_server,)))
        [result] = await deliverer.deliver(NextHop("smtp", "dest.test", mx1.port, True), TX)
        await deliverer.close_idle(0)
        return result

    return uvloop.run(run())


def test_an_mx_host_without_requiretls_is_left_for_the_next(
    net: tuple[DnsServer, CaptureSink, CaptureSink, str],
) -> None:
    _, mx1, mx2, _ = net
    result = deliver(net, **{"dest.test": "verify"})
    assert (result.status, result.remote_mta) == ("sent", "mx2.dest.test")
    [got] = mx2.wait_for(1)
    assert got.tls and "REQUIRETLS" in got.mail_params
    assert mx1.connections == 1 and mx1.transactions == 0 and mx1.messages == []
    assert "QUIT" in mx1.lines


def test_an_mx_next_hop_without_dane_or_mta_sts_fails_with_5_7_30(
    net: tuple[DnsServer, CaptureSink, CaptureSink, str],
) -> None:
    _, mx1, mx2, _ = net
    result = deliver(net)  # delivery.tls "may": nothing authenticates the MX hosts
    assert (result.status, result.dsn) == ("failed", "5.7.30")
    assert "REQUIRETLS support required" in result.reply
    assert mx1.connections == 0 and mx2.connections == 0
