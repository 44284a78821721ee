"""Delivery by MX records (DESIGN.md §4), against a real DNS server and real SMTP servers.

The relay asks :class:`DnsServer` (on 127.0.0.1) and delivers to CaptureSinks listening on
other loopback addresses (127.0.0.2, 127.0.0.3, ...) with the one port the relay uses for
SMTP (``delivery.smtp_port``).  Bounces go back to the sender's domain, routed to a sink
of their own.
"""

from __future__ import annotations

import email
import email.policy
import json
import os
import smtplib
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.delivery.dnsserver import DnsServer
from tests.delivery.sink import Captured, CaptureSink
from tests.helpers import REPO, MtaProcess, free_port, wait_until

pytestmark = pytest.mark.timeout(120)

Factory = Callable[..., MtaProcess]
MX_HOSTS = ("127.0.0.2", "127.0.0.3")
MESSAGE = b"Subject: by MX\r\nMessage-ID: <mx-test@sender.test>\r\n\r\nhello\r\n"


def common_port(hosts: tuple[str, ...]) -> int:
    """A TCP port free on every one of ``hosts``."""
    for _ in range(50):
        port = free_port(hosts[0])
        try:
            for host in hosts[1:]:
                with socket.socket() as s:
                    s.bind((host, port))
        except OSError:
            continue
        return port
    raise OSError(f"no common free port on {hosts}")


class Net:
    """A DNS zone, two mail exchangers and the sender's own mail server."""

    def __init__(self, dns: DnsServer, mx1: CaptureSink, mx2: CaptureSink, home: CaptureSink):
        self.dns, self.mx1, self.mx2, self.home = dns, mx1, mx2, home

    def relay_config(self, **delivery: Any) -> dict[str, Any]:
        return {
            "delivery": {
                "smtp_port": self.mx1.port,
                "dns_servers": [f"127.0.0.1:{self.dns.port}"],
                **delivery,
            },
            "routes": {"sender.test": f"smtp:[127.0.0.1]:{self.home.port}"},
        }


@pytest.fixture
def net() -> Iterator[Net]:
    port = common_port(MX_HOSTS)
    with (
        DnsServer() as dns,
        CaptureSink(MX_HOSTS[0], port) as mx1,
        CaptureSink(MX_HOSTS[1], port) as mx2,
        CaptureSink() as home,
    ):
        dns.add_a("mx1.dest.test", MX_HOSTS[0])
        dns.add_a("mx2.dest.test", MX_HOSTS[1])
        yield Net(dns, mx1, mx2, home)


def send(server: MtaProcess, recipients: list[str], sender: str = "alice@sender.test") -> None:
    with smtplib.SMTP("127.0.0.1", server.port, local_hostname="client.test", timeout=30) as c:
        assert c.sendmail(sender, recipients, MESSAGE) == {}


def queue_cli(server: MtaProcess, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    command = [sys.executable, "-m", "mta", "--config", str(server.config_path), "queue", *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=30)


def report(bounce: Captured) -> list[email.message.Message]:
    """The per-recipient blocks of a DSN (after the per-message block)."""
    message = email.message_from_bytes(bounce.data, policy=email.policy.default)
    assert message.get_content_type() == "multipart/report"
    assert message.get_param("report-type") == "delivery-status"
    _, status, original = message.get_payload()
    assert b"Message-ID: <mx-test@sender.test>" in original.get_payload(decode=True)
    return status.get_payload()[1:]


def assert_bounced(net: Net, relay: MtaProcess, recipient: str, status: str, text: str) -> None:
    [bounce] = net.home.wait_for(1, timeout=30)
    assert (bounce.mail_from, bounce.rcpt_tos) == ("", ["alice@sender.test"])
    [block] = report(bounce)
    assert block["Final-Recipient"] == f"rfc822; {recipient}"
    assert block["Action"] == "failed"
    assert block["Status"] == status
    assert text in block["Diagnostic-Code"]
    wait_until(lambda: relay.queue_empty(("incoming", "active", "deferred", "hold")))
    assert net.mx1.messages == [] and net.mx2.messages == []


def test_mail_goes_to_the_preferred_exchanger(mta_factory: Factory, net: Net) -> None:
    net.dns.add_mx("dest.test", [(20, "mx2.dest.test"), (10, "mx1.dest.test")])
    relay = mta_factory(net.relay_config())
    send(relay, ["bob@dest.test"])
    [got] = net.mx1.wait_for(1)
    assert got.rcpt_tos == ["bob@dest.test"] and got.peer == "127.0.0.1"
    assert got.data.endswith(MESSAGE)
    wait_until(lambda: relay.queue_empty(("incoming", "active", "deferred", "hold")))
    assert net.mx2.messages == [] and net.mx2.connections == 0
    assert f"relay=mx1.dest.test[{MX_HOSTS[0]}]:{net.mx1.port}" in relay.log()


def test_falls_back_to_the_next_exchanger_when_the_first_refuses(
    mta_factory: Factory, net: Net
) -> None:
    net.dns.add_mx("dest.test", [(10, "mx1.dest.test"), (20, "mx2.dest.test")])
    net.mx1.down()
    relay = mta_factory(net.relay_config())
    send(relay, ["bob@dest.test"])
    [got] = net.mx2.wait_for(1)
    assert got.rcpt_tos == ["bob@dest.test"] and got.data.endswith(MESSAGE)
    wait_until(lambda: relay.queue_empty(("incoming", "active", "deferred", "hold")))
    assert net.mx1.messages == []
    assert "status=sent" in relay.log() and "status=deferred" not in relay.log()


def test_falls_back_when_the_first_exchanger_greets_with_an_error(
    mta_factory: Factory, net: Net
) -> None:
    net.dns.add_mx("dest.test", [(10, "mx1.dest.test"), (20, "mx2.dest.test")])
    net.mx1.greeting_reply = (421, "4.3.2 Service not available")
    relay = mta_factory(net.relay_config())
    send(relay, ["bob@dest.test"])
    [got] = net.mx2.wait_for(1)
    assert got.rcpt_tos == ["bob@dest.test"]
    assert net.mx1.connections >= 1 and net.mx1.messages == []


def test_implicit_mx_uses_the_domains_address(mta_factory: Factory, net: Net) -> None:
    net.dns.add_a("plain.test", MX_HOSTS[1])  # no MX at all (RFC 5321 §5.1)
    relay = mta_factory(net.relay_config())
    send(relay, ["bob@plain.test"])
    [got] = net.mx2.wait_for(1)
    assert got.rcpt_tos == ["bob@plain.test"]
    assert ("plain.test", "MX", "udp") in net.dns.queries
    assert net.mx1.messages == []


def test_address_literal_needs_no_dns(mta_factory: Factory, net: Net) -> None:
    relay = mta_factory(net.relay_config())
    send(relay, [f"bob@[{MX_HOSTS[1]}]"])
    [got] = net.mx2.wait_for(1)
    assert got.rcpt_tos == [f"bob@[{MX_HOSTS[1]}]"]
    assert net.dns.queries == []


def test_recipients_in_different_domains_go_to_their_own_exchangers(
    mta_factory: Factory, net: Net
) -> None:
    net.dns.add_mx("one.test", [(10, "mx1.dest.test")])
    net.dns.add_mx("two.test", [(10, "mx2.dest.test")])
    relay = mta_factory(net.relay_config())
    send(relay, ["a@one.test", "b@two.test", "c@one.test"])
    [one] = net.mx1.wait_for(1)
    [two] = net.mx2.wait_for(1)
    assert one.rcpt_tos == ["a@one.test", "c@one.test"]
    assert two.rcpt_tos == ["b@two.test"]
    assert one.data == two.data


def test_null_mx_bounces(mta_factory: Factory, net: Net) -> None:
    net.dns.add_null_mx("nomail.test")
    relay = mta_factory(net.relay_config())
    send(relay, ["bob@nomail.test"])
    assert_bounced(net, relay, "bob@nomail.test", "5.1.10", "does not accept mail (null MX)")


def test_nxdomain_bounces(mta_factory: Factory, net: Net) -> None:
    relay = mta_factory(net.relay_config())
    send(relay, ["bob@nowhere.test"])
    assert_bounced(net, relay, "bob@nowhere.test", "5.1.2", "NXDOMAIN")


def test_servfail_defers(mta_factory: Factory, net: Net) -> None:
    net.dns.servfail("broken.test")
    relay = mta_factory(net.relay_config())
    send(relay, ["bob@broken.test"])
    [queued] = wait_until(lambda: relay.files("deferred"))
    wait_until(lambda: "status=deferred" in relay.log())
    listing = queue_cli(relay, "list", "--json")
    assert listing.returncode == 0, listing.stderr
    [entry] = json.loads(listing.stdout)
    assert entry["id"] == queued.name
    assert entry["state"] == "deferred"
    assert entry["recipients"] == ["bob@broken.test"]
    assert "broken.test" in entry["last_error"]
    assert "Temporary DNS failure" in entry["last_error"]
    assert net.home.messages == []  # no bounce for a temporary failure


def test_exchanger_without_address_does_not_bounce_while_another_is_in_trouble(
    mta_factory: Factory, net: Net
) -> None:
    """mx1 does not exist (NXDOMAIN), mx2's name server fails (SERVFAIL): that may pass,
    so the message must wait, not bounce (RFC 5321 §5.1: temporary beats permanent)."""
    net.dns.add_mx("half.test", [(10, "gone.dest.test"), (20, "flaky.dest.test")])
    net.dns.servfail("flaky.dest.test")
    relay = mta_factory(net.relay_config())
    send(relay, ["bob@half.test"])
    wait_until(lambda: relay.files("deferred"))
    wait_until(lambda: "status=deferred" in relay.log())
    assert "status=bounced" not in relay.log()
    assert net.home.messages == []
