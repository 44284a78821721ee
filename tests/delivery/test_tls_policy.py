"""Outbound TLS policy levels (mta/delivery/tls_policy.py) against real STARTTLS sinks.

The sinks present certificates from a trustme test CA; the client connects to them as the
delivery process does (one :class:`OutboundConnection`, or a :class:`Deliverer` for the
plaintext retry and the per-destination lookup), and once end to end through ``mta serve``
with MX records from the test DNS server, for the configuration and the ``tls=`` log field.
"""

from __future__ import annotations

import logging
import re
import smtplib
import ssl
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import pytest
import trustme
import uvloop
from prometheus_client import REGISTRY

from mta.config import Config, DeliveryConfig
from mta.delivery.deliver import Deliverer
from mta.delivery.dns import Resolver
from mta.delivery.results import DeliveryError
from mta.delivery.routing import NextHop
from mta.delivery.smtp_client import OutboundConnection, TlsHandshakeError, Transaction
from mta.delivery.tls_policy import PolicyTable, TlsPolicy, client_context
from tests.delivery.dnsserver import DnsServer
from tests.delivery.sink import CaptureSink
from tests.helpers import MtaProcess, wait_until

pytestmark = pytest.mark.timeout(60)

T = TypeVar("T")
Factory = Callable[..., MtaProcess]
TX = Transaction(sender="a@b.test", recipients=["c@dest.test"], message=b"Subject: x\r\n\r\nx\r\n")
MX = "mx.dest.test"
VERIFY = TlsPolicy("verify", (MX, "dest.test"))


def tls_count(level: str, outcome: str) -> float:
    labels = {"level": level, "outcome": outcome}
    return REGISTRY.get_sample_value("mta_delivery_tls_connections_total", labels) or 0.0


def run(coro: Coroutine[Any, Any, T]) -> T:
    return uvloop.run(coro)


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def ca_file(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


def tls_sink(ca: trustme.CA, *names: str) -> CaptureSink:
    """A STARTTLS sink whose certificate, from ``ca``, names ``names``."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert(*names).configure_cert(context)
    return CaptureSink(ssl_context=context)


async def connect(port: int, policy: TlsPolicy, ca_file: str = "") -> OutboundConnection:
    return await OutboundConnection.open(
        host=MX,
        ip="127.0.0.1",
        port=port,
        helo_name="mx.test",
        command_timeout=10.0,
        policy=policy,
        context=client_context(policy.verified, ca_file),
    )


async def deliver_once(port: int, policy: TlsPolicy, ca_file: str = "") -> str:
    conn = await connect(port, policy, ca_file)
    [result] = await conn.send(TX)
    await conn.quit()
    assert result.status == "sent"
    return result.tls


def refused(port: int, policy: TlsPolicy, ca_file: str = "") -> DeliveryError:
    with pytest.raises(DeliveryError) as caught:
        run(deliver_once(port, policy, ca_file))
    assert not caught.value.permanent
    return caught.value


@pytest.mark.parametrize("names", [(MX,), ("dest.test",), ("*.dest.test",)])
def test_verify_accepts_the_test_ca_and_sends_sni(
    ca: trustme.CA, ca_file: str, names: tuple[str, ...]
) -> None:
    with tls_sink(ca, *names) as sink:
        before = tls_count("verify", "verified")
        tls = run(deliver_once(sink.port, VERIFY, ca_file))
        [got] = sink.wait_for(1)
    assert tls_count("verify", "verified") == before + 1
    assert got.tls
    assert re.fullmatch(r"TLSv1\.[23] verified", tls)
    assert sink.server_names == [MX]  # the MX host name, whichever name the certificate has


def test_verify_defers_a_wrong_name(ca: trustme.CA, ca_file: str) -> None:
    before = tls_count("verify", "untrusted")
    with tls_sink(ca, "other.test", "mx.dest.test.evil") as sink:
        error = refused(sink.port, VERIFY, ca_file)
        assert sink.messages == [] and sink.transactions == 0
    assert tls_count("verify", "untrusted") == before + 1
    assert error.dsn == "4.7.5"
    assert "certificate does not match mx.dest.test, dest.test" in error.reply


def test_verify_defers_an_unknown_ca(ca_file: str) -> None:
    with tls_sink(trustme.CA(), MX) as sink:
        error = refused(sink.port, VERIFY, ca_file)
        assert sink.messages == []
    assert error.dsn == "4.7.5" and "not verified" in error.reply
    assert not isinstance(error, TlsHandshakeError)  # never retried in plaintext


def test_encrypt_and_verify_defer_a_server_without_starttls(ca_file: str) -> None:
    with CaptureSink() as sink:
        for policy in (TlsPolicy("encrypt"), VERIFY):
            error = refused(sink.port, policy, ca_file)
            assert error.dsn == "4.7.4" and "TLS is required" in error.reply
        assert sink.transactions == 0


def test_encrypt_takes_any_certificate(ca: trustme.CA) -> None:
    with tls_sink(trustme.CA(), "other.test") as sink:
        tls = run(deliver_once(sink.port, TlsPolicy("encrypt")))
        sink.wait_for(1)
    assert re.fullmatch(r"TLSv1\.[23] unverified", tls)
    assert sink.server_names == [MX]


def test_none_never_starts_tls(ca: trustme.CA) -> None:
    with tls_sink(ca, MX) as sink:
        assert run(deliver_once(sink.port, TlsPolicy("none"))) == "none"
        [got] = sink.wait_for(1)
    assert not got.tls and sink.server_names == []


def deliverer(port: int, tls: str, **policy: str) -> Deliverer:
    config = Config(
        hostname="mx.test",
        delivery=DeliveryConfig(tls=tls, command_timeout=10.0),  # type: ignore[arg-type]
        tls_policy={k.format(port=port): v for k, v in policy.items()},
    )
    return Deliverer(config, Resolver())


async def deliver_via(d: Deliverer, port: int) -> str:
    [result] = await d.deliver(NextHop("smtp", "127.0.0.1", port), TX)
    await d.close_idle(0)
    assert result.status != "failed", result
    return result.tls if result.status == "sent" else result.dsn


def test_may_retries_a_broken_handshake_in_plaintext(
    ca: trustme.CA, caplog: pytest.LogCaptureFixture
) -> None:
    with tls_sink(ca, MX) as sink, caplog.at_level(logging.WARNING, "mta.delivery"):
        sink.broken_tls = True
        before = tls_count("may", "failed"), tls_count("none", "plaintext")
        assert run(deliver_via(deliverer(sink.port, "may"), sink.port)) == "none"
        assert (tls_count("may", "failed"), tls_count("none", "plaintext")) == (
            before[0] + 1,
            before[1] + 1,
        )
        [got] = sink.wait_for(1)
        assert sink.connections == 2  # one failed handshake, one plaintext retry
    assert not got.tls
    assert "TLS handshake with 127.0.0.1[127.0.0.1]" in caplog.text
    assert "retrying in plaintext" in caplog.text


def test_the_destination_entry_overrides_the_default(ca: trustme.CA) -> None:
    with tls_sink(ca, MX) as sink:
        sink.broken_tls = True
        # default may would fall back; the entry for this next hop says encrypt: deferred
        strict = deliverer(sink.port, "may", **{"[127.0.0.1]:{port}": "encrypt"})
        assert run(deliver_via(strict, sink.port)) == "4.7.5"
        assert sink.connections == 1 and sink.messages == []
        # default encrypt, the entry says may: delivered in plaintext
        lax = deliverer(sink.port, "encrypt", **{"[127.0.0.1]:{port}": "may"})
        assert run(deliver_via(lax, sink.port)) == "none"
        sink.wait_for(1)


def test_policy_lookup_order() -> None:
    table = PolicyTable(
        "may",
        {
            "Example.org.": "verify",
            ".example.net": "encrypt",
            "mail.example.net": "none",
            "[10.0.0.5]:25": "verify",
        },
    )
    assert table.level("example.org", 25, mx=True) == "verify"
    assert table.level("sub.example.org", 25, mx=True) == "may"  # exact entry only
    assert table.level("a.b.example.net", 25, mx=True) == "encrypt"
    assert table.level("example.net", 25, mx=True) == "may"  # ".x" is subdomains only
    assert table.level("mail.example.net", 25, mx=True) == "none"
    assert table.level("10.0.0.5", 25, mx=False) == "verify"
    assert table.level("10.0.0.5", 587, mx=False) == "may"
    policy = table.policy("example.org", 25, True, "MX1.Example.org.")
    assert policy == TlsPolicy("verify", ("mx1.example.org", "example.org"))


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"tls_policy": {"example.org": "secure"}}, "tls_policy.example.org: level 'secure'"),
        ({"tls_policy": {"[10.0.0.5]": "verify"}}, "tls_policy.[10.0.0.5]: a next hop is"),
        ({"tls_policy": {"a b": "may"}}, "tls_policy.a b: not a domain"),
        ({"delivery": {"tls": "secure"}}, "delivery.tls"),
        ({"delivery": {"tls_ca_file": "/nonexistent.pem"}}, "tls_ca_file: cannot read"),
    ],
)
def test_bad_tls_config_names_the_key(config: dict[str, Any], message: str) -> None:
    with pytest.raises((msgspec.ValidationError, ValueError)) as caught:
        msgspec.convert(config, Config)
    assert message in str(caught.value)


def test_old_values_keep_working() -> None:
    for level in ("may", "none"):
        assert msgspec.convert({"delivery": {"tls": level}}, Config).delivery.tls == level
    assert Config().delivery.tls == "may"


@pytest.fixture
def dns() -> Iterator[DnsServer]:
    with DnsServer() as server:
        yield server


def test_end_to_end_levels_and_log_lines(
    mta_factory: Factory, dns: DnsServer, ca: trustme.CA, ca_file: str, tmp_path: Path
) -> None:
    """Default none, verify for dest.test: one sink, two destinations, two log lines."""
    with tls_sink(ca, MX) as sink:
        for domain in ("dest.test", "plain.test"):
            dns.add_mx(domain, [(10, f"mx.{domain}")])
            dns.add_a(f"mx.{domain}", "127.0.0.1")
        relay = mta_factory(
            {
                "delivery": {
                    "smtp_port": sink.port,
                    "dns_servers": [f"127.0.0.1:{dns.port}"],
                    "tls": "none",
                    "tls_ca_file": ca_file,
                },
                "tls_policy": {"dest.test": "verify"},
            }
        )
        with smtplib.SMTP("127.0.0.1", relay.port, local_hostname="client.test") as client:
            client.sendmail("a@sender.test", ["bob@dest.test"], b"Subject: 1\r\n\r\nx\r\n")
            client.sendmail("a@sender.test", ["bob@plain.test"], b"Subject: 2\r\n\r\nx\r\n")
        got = {m.rcpt_tos[0]: m.tls for m in sink.wait_for(2)}
    assert got == {"bob@dest.test": True, "bob@plain.test": False}
    assert sink.server_names == [MX]
    log = wait_until(lambda: relay.log().count("status=sent") == 2 and relay.log())
    assert re.search(
        r"to=<bob@dest\.test>, relay=mx\.dest\.test\[127\.0\.0\.1\]:\d+, "
        r"delay=[\d.]+, delays=[\d./]+, dsn=2\.0\.0, status=sent \(.*\), tls=TLSv1\.[23] verified$",
        log,
        re.MULTILINE,
    )
    assert re.search(
        r"to=<bob@plain\.test>, .*, dsn=2\.0\.0, status=sent \(.*\), tls=none$", log, re.M
    )
    assert "Verified TLS connection established to mx.dest.test[127.0.0.1]" in log
