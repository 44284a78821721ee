"""The relay behind Debian's haproxy (send-proxy, send-proxy-v2): clients connect from
127.0.0.2 through haproxy on 127.0.0.3, and relay control, per-client limits, logs and the
``Received:`` header see 127.0.0.2, not the balancer; a PROXY header from elsewhere gets
no greeting; a v2 header comes before implicit TLS."""

from __future__ import annotations

import smtplib
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from tests.delivery.sink import CaptureSink
from tests.edge.conftest import Certs
from tests.edge.haproxy import BALANCER, CLIENT, Frontend, Haproxy, client_source
from tests.helpers import MtaProcess, free_port, wait_until
from tests.master import scrape

pytestmark = pytest.mark.timeout(90)

MESSAGE = b"Subject: behind haproxy\r\n\r\nhello\r\n"


@dataclass
class Edge:
    relay: MtaProcess
    plain: int  # the relay's proxy_protocol listener
    implicit: int  # the relay's implicit-TLS proxy_protocol listener
    v1: int  # haproxy frontends: send-proxy to plain
    v2: int  # send-proxy-v2 to plain
    v1_tls: int  # send-proxy to implicit
    v2_tls: int  # send-proxy-v2 to implicit


@pytest.fixture
def edge_factory(
    mta_factory: Callable[..., MtaProcess],
    haproxy_factory: Callable[[list[Frontend]], Haproxy],
    sink: CaptureSink,
    certs: Certs,
) -> Callable[..., Edge]:
    def start(relay_networks: list[str], limits: dict[str, Any] | None = None) -> Edge:
        plain, implicit = free_port(), free_port()
        listeners: dict[str, Any] = {
            "edge": {"listen": [f"127.0.0.1:{plain}"], "proxy_protocol": True},
            "edge_tls": {
                "listen": [f"127.0.0.1:{implicit}"],
                "proxy_protocol": True,
                "tls": "implicit",
                "tls_cert": str(certs.cert),
                "tls_key": str(certs.key),
                "auth": False,  # relay control alone decides here (AUTH is another test's)
                "require_auth": False,
            },
        }
        relay = mta_factory(
            {
                "smtp": {"proxy_networks": ["127.0.0.1/32"]},  # haproxy connects from .1
                "relay": {"networks": relay_networks},
                "delivery": {"relayhost": f"127.0.0.1:{sink.port}"},
                "listeners": listeners,
                "limits": limits or {},
            }
        )
        ports = [free_port(BALANCER) for _ in range(4)]
        haproxy_factory(
            [
                Frontend(ports[0], plain, "send-proxy"),
                Frontend(ports[1], plain, "send-proxy-v2"),
                Frontend(ports[2], implicit, "send-proxy"),
                Frontend(ports[3], implicit, "send-proxy-v2"),
            ]
        )
        return Edge(relay, plain, implicit, *ports)

    return start


def _received(data: bytes) -> bytes:
    """The relay's Received: header (the first header, unfolded)."""
    head = data.split(b"\r\n\r\n", 1)[0]
    assert head.startswith(b"Received: ")
    lines = head.split(b"\r\n")
    end = next(i for i, line in enumerate(lines[1:], 1) if not line[:1].isspace())
    return b" ".join(line.strip() for line in lines[:end])


def test_relay_control_and_received_see_the_client_behind_haproxy(
    edge_factory: Callable[..., Edge], sink: CaptureSink, certs: Certs
) -> None:
    edge = edge_factory([f"{CLIENT}/32"])  # the client may relay; the balancer may not
    for port in (edge.v1, edge.v2):
        with smtplib.SMTP(
            BALANCER, port, timeout=10, source_address=client_source(), local_hostname="client.test"
        ) as c:
            assert c.sendmail("a@client.test", ["b@example.test"], MESSAGE) == {}
    # v2 before implicit TLS: the client's TLS goes through haproxy untouched
    for port in (edge.v1_tls, edge.v2_tls):
        with smtplib.SMTP_SSL(
            BALANCER,
            port,
            timeout=10,
            source_address=client_source(),
            local_hostname="client.test",
            context=certs.client(),
        ) as c:
            c.ehlo("client.test")
            assert not c.has_extn("starttls")  # already under TLS (RFC 8314)
            assert c.sendmail("a@client.test", ["b@example.test"], MESSAGE) == {}
    messages = sink.wait_for(4, timeout=30)
    received = sorted(_received(m.data) for m in messages)
    for header in received:
        assert f"([{CLIENT}])".encode() in header, header
        assert b"127.0.0.1" not in header and BALANCER.encode() not in header, header
    assert sum(b" with ESMTPS id " in h for h in received) == 2
    log = edge.relay.log()
    assert f"connect from unknown[{CLIENT}] via [127.0.0.1] on edge" in log
    assert f"connect from unknown[{CLIENT}] via [127.0.0.1] on edge_tls" in log


def test_a_client_behind_haproxy_outside_relay_networks_is_refused(
    edge_factory: Callable[..., Edge], sink: CaptureSink
) -> None:
    edge = edge_factory(["127.0.0.1/32"])  # the balancer's address would relay; .2 must not
    for port in (edge.v1, edge.v2):
        with smtplib.SMTP(
            BALANCER, port, timeout=10, source_address=client_source(), local_hostname="client.test"
        ) as c:
            with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
                c.sendmail("a@client.test", ["b@example.test"], MESSAGE)
            assert refused.value.recipients["b@example.test"][0] == 554
    assert f"RCPT from unknown[{CLIENT}]: 554 5.7.1" in edge.relay.log()
    assert sink.messages == []


def test_per_client_limits_count_the_client_behind_haproxy(
    edge_factory: Callable[..., Edge],
) -> None:
    """Every connection reaches the relay from haproxy's address; the limit must count
    127.0.0.2 and 127.0.0.4, not the balancer."""
    edge = edge_factory(["192.0.2.0/24"], {"connections": 2, "exempt_networks": []})

    def greeting(source: str) -> tuple[socket.socket, bytes]:
        sock = socket.create_connection((BALANCER, edge.v2), timeout=10, source_address=(source, 0))
        return sock, sock.recv(1024)

    held = [greeting(CLIENT) for _ in range(2)]
    assert all(reply.startswith(b"220 ") for _, reply in held)
    third, reply = greeting(CLIENT)
    assert reply.startswith(b"421 4.7.0") and f"from {CLIENT}".encode() in reply, reply
    other, reply = greeting("127.0.0.4")  # another client through the same balancer
    assert reply.startswith(b"220 "), reply
    for sock in (third, other, *(sock for sock, _ in held)):
        sock.close()
    line = f"limit exceeded: 3 from unknown[{CLIENT}] for service edge"
    wait_until(lambda: line in edge.relay.log(), timeout=10)


def test_a_proxy_header_from_outside_proxy_networks_gets_no_greeting(
    edge_factory: Callable[..., Edge],
) -> None:
    edge = edge_factory([f"{CLIENT}/32"])
    header = f"PROXY TCP4 {CLIENT} 127.0.0.1 40000 25\r\n".encode()
    with socket.create_connection(
        ("127.0.0.1", edge.plain), timeout=10, source_address=client_source()
    ) as raw:
        raw.sendall(header + b"EHLO forged.test\r\n")
        try:
            answer = raw.recv(1024)
        except ConnectionResetError:  # closed before our bytes were read: a reset
            answer = b""
        assert answer == b""  # closed, not one reply
    assert f"PROXY header from [{CLIENT}]" in edge.relay.log()
    rejects = "mta_smtpd_rejects_total"
    wait_until(lambda: scrape(edge.relay.metrics_port).value(rejects, reason="proxy_untrusted"))
