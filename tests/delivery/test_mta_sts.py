"""MTA-STS (RFC 8461): parsing (no sockets), then fetching, caching and applying policies
against real servers: the test DNS server serves ``_mta-sts`` TXT records and the
addresses, a local HTTPS server (sts_server.py) serves the policy with a certificate from
the test CA, and STARTTLS capture sinks play the MX hosts.  In process (a Deliverer) where
that is enough, through ``mta serve`` for the log line and the cache across restarts.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import re
import smtplib
import socket
import ssl
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import pytest
import trustme
import uvloop
from prometheus_client import REGISTRY

from mta.config import Config, DeliveryConfig, MtaStsConfig, QueueConfig
from mta.delivery.deliver import Deliverer
from mta.delivery.dns import Resolver
from mta.delivery.mta_sts import (
    StsPolicy,
    StsPolicyError,
    mx_matches,
    parse_policy,
    parse_txt,
)
from mta.delivery.mta_sts_cache import StsPolicies
from mta.delivery.routing import NextHop
from mta.delivery.smtp_client import Transaction
from mta.queue.results import RecipientResult
from tests.delivery.dnsserver import DnsServer
from tests.delivery.sink import CaptureSink
from tests.delivery.sts_server import PolicyServer, policy_text, start_policy_server
from tests.helpers import MtaProcess, wait_until

pytestmark = pytest.mark.timeout(60)

T = TypeVar("T")
DOMAIN = "dest.test"
MX = "mx.dest.test"
TX = Transaction(sender="a@b.test", recipients=[f"c@{DOMAIN}"], message=b"Subject: x\r\n\r\nx\r\n")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return uvloop.run(coro)


def fetches(result: str) -> float:
    labels = {"result": result}
    return REGISTRY.get_sample_value("mta_delivery_mta_sts_fetches_total", labels) or 0.0


def failures(mode: str, reason: str) -> float:
    labels = {"mode": mode, "reason": reason}
    return REGISTRY.get_sample_value("mta_delivery_mta_sts_failures_total", labels) or 0.0


# -- parsing ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("records", "expected"),
    [
        (["v=STSv1; id=20160831085700Z;"], "20160831085700Z"),
        (["v=STSv1; id=abc"], "abc"),
        (["v=STSv1;id=abc;ext_1=x.y"], "abc"),
        (["v=STSv1; id=abc;", "v=spf1 -all"], "abc"),  # other records are discarded
        (["v=STSv1; id=a;", "v=STSv1; id=b;"], None),  # two: no policy
        ([], None),
        (["v=STSv2; id=abc;"], None),
        (["id=abc; v=STSv1;"], None),  # the version must come first
        (["v=STSv1; id=;"], None),
        (["v=STSv1; id=abc-def;"], None),  # id: letters and digits only
        (["v=STSv1; id=" + "a" * 33 + ";"], None),  # at most 32
        (["v=STSv1; id=a; id=b;"], None),
        (["v=STSv1; ext=1;"], None),  # no id
        (["v=STSv1; id=abc;; "], None),
        (["v=STSv1; id=abc; bad field;"], None),
    ],
)
def test_txt_record(records: list[str], expected: str | None) -> None:
    assert parse_txt(records) == expected


def test_policy_parses_lf_and_crlf_and_ignores_unknown_keys() -> None:
    text = "version: STSv1\nmode: enforce\nmx: MX1.Example.com.\nmx: *.example.net\n"
    expected = StsPolicy("enforce", 604800, ("mx1.example.com", "*.example.net"))
    assert parse_policy(text + "max_age: 604800\n") == expected
    crlf = (text + "future_key: anything at all\nmax_age: 604800").replace("\n", "\r\n")
    assert parse_policy(crlf) == expected
    assert parse_policy("version: STSv1\nmode: none\nmax_age: 0\n").mx == ()


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("mode: enforce\nmx: a.test\nmax_age: 1\n", "version"),
        ("version: STSv2\nmode: enforce\nmx: a.test\nmax_age: 1\n", "version"),
        ("version: STSv1\nmode: strict\nmx: a.test\nmax_age: 1\n", "mode"),
        ("version: STSv1\nmode: enforce\nmx: a.test\n", "max_age"),
        ("version: STSv1\nmode: enforce\nmx: a.test\nmax_age: 31557601\n", "over 31557600"),
        ("version: STSv1\nmode: enforce\nmx: a.test\nmax_age: -1\n", "max_age"),
        ("version: STSv1\nmode: enforce\nmx: a.test\nmax_age: 12345678901\n", "max_age"),
        ("version: STSv1\nmode: testing\nmax_age: 1\n", "no mx"),
        ("version: STSv1\nmode: enforce\nmx: *.*.a.test\nmax_age: 1\n", "mx"),
        ("version: STSv1\nmode: enforce\nmx: a.test:25\nmax_age: 1\n", "mx"),
        ("version: STSv1\nmode: enforce\nmode: none\nmx: a.test\nmax_age: 1\n", "twice"),
        ("version: STSv1\nmode enforce\nmx: a.test\nmax_age: 1\n", "not a policy field"),
        ("<html>version: STSv1</html>", "not a policy field"),
    ],
)
def test_invalid_policies(text: str, problem: str) -> None:
    with pytest.raises(StsPolicyError, match=problem):
        parse_policy(text)


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"fetch_timeout": 0}, "mta_sts.fetch_timeout"),
        ({"cache_size": 0}, "mta_sts.cache_size"),
        ({"enable": True}, "unknown field `enable`"),
    ],
)
def test_bad_mta_sts_config_names_the_key(section: dict[str, Any], message: str) -> None:
    with pytest.raises(msgspec.ValidationError, match=message):
        msgspec.convert({"mta_sts": section}, Config)
    assert Config().mta_sts.enabled  # on by default


def test_max_age_limit_is_allowed() -> None:
    text = "version: STSv1\nmode: enforce\nmx: a.test\nmax_age: 31557600\n"
    assert parse_policy(text).max_age == 31557600


@pytest.mark.parametrize(
    ("pattern", "host", "matches"),
    [
        ("mail.example.com", "mail.example.com", True),
        ("mail.example.com", "MAIL.Example.COM.", True),
        ("mail.example.com", "mail2.example.com", False),
        ("*.example.com", "mx1.example.com", True),
        ("*.example.com", "example.com", False),  # one label, not zero
        ("*.example.com", "a.b.example.com", False),  # nor two
        ("*.example.com", "mx1.example.com.evil", False),
        ("*.example.com", ".example.com", False),
    ],
)
def test_mx_patterns(pattern: str, host: str, matches: bool) -> None:
    assert mx_matches(pattern, host) is matches


# -- servers ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def ca_file(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


@pytest.fixture
def dns() -> Iterator[DnsServer]:
    with DnsServer() as server:
        yield server


@pytest.fixture
def https(ca: trustme.CA, dns: DnsServer) -> Iterator[PolicyServer]:
    """The policy host of dest.test, in DNS, serving an enforce policy for mx.dest.test."""
    with start_policy_server(ca, f"mta-sts.{DOMAIN}") as server:
        dns.add_a(f"mta-sts.{DOMAIN}", server.host)
        dns.set_txt(f"_mta-sts.{DOMAIN}", "v=STSv1; id=1;")
        server.serve(policy_text("enforce", MX))
        yield server


def tls_sink(ca: trustme.CA, *names: str) -> CaptureSink:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert(*names).configure_cert(context)
    return CaptureSink(ssl_context=context)


def config(dns: DnsServer, ca_file: str, spool: Path, tls: str = "may", **extra: Any) -> Config:
    return Config(
        hostname="mx.test",
        queue=QueueConfig(path=str(spool)),
        delivery=DeliveryConfig(
            dns_servers=(f"127.0.0.1:{dns.port}",),
            tls_ca_file=ca_file,
            tls=tls,  # type: ignore[arg-type]
            command_timeout=10.0,
        ),
        mta_sts=MtaStsConfig(fetch_timeout=5.0),
        **extra,
    )


def policies(dns: DnsServer, ca_file: str, spool: Path) -> StsPolicies:
    cfg = config(dns, ca_file, spool)
    return StsPolicies(cfg, Resolver(cfg.delivery.dns_servers))


def test_fetch_cache_and_reuse(
    dns: DnsServer, https: PolicyServer, ca_file: str, tmp_path: Path
) -> None:
    before = fetches("ok")
    assert run(policies(dns, ca_file, tmp_path).policy_for(DOMAIN)) == StsPolicy(
        "enforce", 86400, (MX,)
    )
    assert https.requests == [(f"mta-sts.{DOMAIN}", "/.well-known/mta-sts.txt")]
    assert fetches("ok") == before + 1
    record = json.loads((tmp_path / "mta-sts" / DOMAIN).read_text())
    assert record["id"] == "1" and "mode: enforce" in record["text"]

    async def twice_in_a_new_process() -> list[StsPolicy | None]:
        fresh = policies(dns, ca_file, tmp_path)  # as after a restart: the file only
        return [await fresh.policy_for(DOMAIN), await fresh.policy_for(DOMAIN)]

    assert [p and p.mode for p in run(twice_in_a_new_process())] == ["enforce", "enforce"]
    assert https.count == 1  # same id: no fetch

    https.serve(policy_text("testing", MX))
    dns.set_txt(f"_mta-sts.{DOMAIN}", "v=STSv1; id=2;")
    policy = run(policies(dns, ca_file, tmp_path).policy_for(DOMAIN))
    assert policy is not None and policy.mode == "testing" and https.count == 2
    assert json.loads((tmp_path / "mta-sts" / DOMAIN).read_text())["id"] == "2"


def test_one_fetch_in_flight_per_domain(
    dns: DnsServer, https: PolicyServer, ca_file: str, tmp_path: Path
) -> None:
    async def together() -> list[StsPolicy | None]:
        sts = policies(dns, ca_file, tmp_path)
        return await asyncio.gather(*(sts.policy_for(DOMAIN) for _ in range(5)))

    assert {p and p.mode for p in run(together())} == {"enforce"}
    assert https.count == 1


@pytest.mark.parametrize(
    ("status", "content_type", "body", "kind"),
    [
        (301, "text/plain", "", "http"),  # redirects are not followed
        (404, "text/plain", "", "http"),
        (200, "text/html", policy_text("enforce", MX), "http"),
        (200, "text/plain", policy_text("enforce", MX) + "x" * 70_000, "http"),
        (200, "text/plain", "version: STSv1\nmode: strict\n", "invalid"),
    ],
    ids=["redirect", "404", "html", "too-big", "invalid"],
)
def test_refused_responses_give_no_policy(
    dns: DnsServer,
    https: PolicyServer,
    ca_file: str,
    tmp_path: Path,
    status: int,
    content_type: str,
    body: str,
    kind: str,
) -> None:
    https.serve(body, status, content_type)
    before = fetches(kind)
    assert run(policies(dns, ca_file, tmp_path).policy_for(DOMAIN)) is None
    assert fetches(kind) == before + 1
    assert https.count == 1
    assert not (tmp_path / "mta-sts" / DOMAIN).exists()


def test_policy_host_certificate_must_name_it(
    ca: trustme.CA, dns: DnsServer, ca_file: str, tmp_path: Path
) -> None:
    with start_policy_server(ca, "www.dest.test") as server:
        dns.add_a(f"mta-sts.{DOMAIN}", server.host)
        dns.set_txt(f"_mta-sts.{DOMAIN}", "v=STSv1; id=1;")
        server.serve(policy_text("enforce", MX))
        before = fetches("tls")
        assert run(policies(dns, ca_file, tmp_path).policy_for(DOMAIN)) is None
        assert fetches("tls") == before + 1
        assert server.count == 0  # refused at the handshake, nothing asked


def test_a_silent_policy_host_times_out(dns: DnsServer, ca_file: str, tmp_path: Path) -> None:
    host = f"127.{random.randrange(1, 255)}.{random.randrange(256)}.2"
    with socket.socket() as silent:  # listens, never accepts: the handshake never ends
        try:
            silent.bind((host, 443))
        except PermissionError:
            pytest.skip("binding port 443 (RFC 8461's policy URL) needs root")
        silent.listen()
        dns.add_a(f"mta-sts.{DOMAIN}", host)
        dns.set_txt(f"_mta-sts.{DOMAIN}", "v=STSv1; id=1;")
        cfg = msgspec.structs.replace(
            config(dns, ca_file, tmp_path), mta_sts=MtaStsConfig(fetch_timeout=0.5)
        )
        before = fetches("timeout")
        sts = StsPolicies(cfg, Resolver(cfg.delivery.dns_servers))
        assert run(sts.policy_for(DOMAIN)) is None
    assert fetches("timeout") == before + 1


def test_no_txt_or_failed_fetch_keeps_the_cached_policy(
    dns: DnsServer, https: PolicyServer, ca_file: str, tmp_path: Path
) -> None:
    assert run(policies(dns, ca_file, tmp_path).policy_for(DOMAIN)) is not None
    dns.set_txt(f"_mta-sts.{DOMAIN}")  # the record is gone (stripped?): §5, a hint only
    policy = run(policies(dns, ca_file, tmp_path).policy_for(DOMAIN))
    assert policy is not None and policy.mode == "enforce"
    dns.set_txt(f"_mta-sts.{DOMAIN}", "v=STSv1; id=2;")
    https.serve("", 500)
    policy = run(policies(dns, ca_file, tmp_path).policy_for(DOMAIN))
    assert policy is not None and policy.mode == "enforce"  # §5.1: the cached one holds
    assert https.count == 2


def test_an_expired_policy_is_not_used(
    dns: DnsServer, https: PolicyServer, ca_file: str, tmp_path: Path
) -> None:
    cfg = config(dns, ca_file, tmp_path)
    now = [1_000_000.0]

    def sts() -> StsPolicies:  # a new resolver each time: its cache would keep the TXT
        return StsPolicies(cfg, Resolver(cfg.delivery.dns_servers), clock=lambda: now[0])

    https.serve(policy_text("enforce", MX, max_age=60))
    assert run(sts().policy_for(DOMAIN)) is not None
    dns.set_txt(f"_mta-sts.{DOMAIN}")
    now[0] += 59
    assert run(sts().policy_for(DOMAIN)) is not None
    now[0] += 2
    assert run(sts().policy_for(DOMAIN)) is None


class CountingResolver(Resolver):
    asked = 0

    async def txt(self, name: str) -> list[str]:
        self.asked += 1
        return await super().txt(name)


def test_the_txt_answer_is_remembered_for_a_minute(
    dns: DnsServer, ca_file: str, tmp_path: Path
) -> None:
    cfg = config(dns, ca_file, tmp_path)
    now = [1_000_000.0]
    resolver = CountingResolver(cfg.delivery.dns_servers)
    sts = StsPolicies(cfg, resolver, clock=lambda: now[0])

    async def ask(times: int) -> None:
        for _ in range(times):
            assert await sts.policy_for("plain.test") is None

    run(ask(3))
    assert resolver.asked == 1
    now[0] += 61
    run(ask(1))
    assert resolver.asked == 2


# -- applying it: a Deliverer in process ---------------------------------------------------


def deliver(cfg: Config) -> RecipientResult:
    async def once() -> RecipientResult:
        deliverer = Deliverer(cfg, Resolver(cfg.delivery.dns_servers))
        [result] = await deliverer.deliver(
            NextHop("smtp", DOMAIN, cfg.delivery.smtp_port, True), TX
        )
        await deliverer.close_idle(0)
        return result

    return run(once())


def mx_at(dns: DnsServer, *hosts: str) -> None:
    dns.add_mx(DOMAIN, [(10 * (i + 1), host) for i, host in enumerate(hosts)])
    for host in hosts:
        dns.add_a(host, "127.0.0.1")


def sink_config(sink: CaptureSink, cfg: Config) -> Config:
    delivery = msgspec.structs.replace(cfg.delivery, smtp_port=sink.port)
    return msgspec.structs.replace(cfg, delivery=delivery)


def test_enforce_defers_a_certificate_for_another_name(
    ca: trustme.CA, dns: DnsServer, https: PolicyServer, ca_file: str, tmp_path: Path
) -> None:
    mx_at(dns, MX)
    before = failures("enforce", "tls")
    with tls_sink(ca, "dest.test") as sink:  # verify would take it; MTA-STS wants the MX
        result = deliver(sink_config(sink, config(dns, ca_file, tmp_path, tls="none")))
        assert sink.messages == []
    assert (result.status, result.dsn) == ("deferred", "4.7.5")
    assert "certificate does not match mx.dest.test" in result.reply
    assert failures("enforce", "tls") == before + 1


def test_enforce_skips_mx_hosts_outside_the_patterns(
    ca: trustme.CA,
    dns: DnsServer,
    https: PolicyServer,
    ca_file: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    mx_at(dns, "mx.elsewhere.test", MX)
    with tls_sink(ca, MX, "mx.elsewhere.test") as sink, caplog.at_level(logging.INFO):
        result = deliver(sink_config(sink, config(dns, ca_file, tmp_path)))
        sink.wait_for(1)
    assert result.status == "sent" and result.relay.startswith(f"{MX}[")
    assert re.fullmatch(r"TLSv1\.[23] mta-sts verified", result.tls)
    assert "mta-sts: enforce: dest.test: MX host mx.elsewhere.test does not match" in caplog.text


def test_enforce_with_no_matching_mx_defers(
    ca: trustme.CA, dns: DnsServer, https: PolicyServer, ca_file: str, tmp_path: Path
) -> None:
    mx_at(dns, "mx.elsewhere.test")
    before = failures("enforce", "mx")
    with tls_sink(ca, "mx.elsewhere.test") as sink:
        result = deliver(sink_config(sink, config(dns, ca_file, tmp_path)))
        assert sink.connections == 0
    assert (result.status, result.dsn) == ("deferred", "4.7.5")
    assert "MTA-STS policy of dest.test allows none of its MX hosts" in result.reply
    assert failures("enforce", "mx") == before + 1


def test_a_tls_policy_entry_wins_over_mta_sts(
    ca: trustme.CA, dns: DnsServer, https: PolicyServer, ca_file: str, tmp_path: Path
) -> None:
    mx_at(dns, "mx.elsewhere.test")
    with CaptureSink() as sink:
        for entry in (DOMAIN, ".test"):
            cfg = config(dns, ca_file, tmp_path, tls_policy={entry: "may"})
            assert deliver(sink_config(sink, cfg)).status == "sent"
        assert https.count == 0
        cfg = config(dns, ca_file, tmp_path, tls_policy={f"other.{DOMAIN}": "may"})
        assert deliver(sink_config(sink, cfg)).dsn == "4.7.5"  # the policy, not the entry
        assert https.count == 1


def test_testing_delivers_and_logs_what_would_fail(
    ca: trustme.CA,
    dns: DnsServer,
    https: PolicyServer,
    ca_file: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    https.serve(policy_text("testing", MX))
    mx_at(dns, MX)
    before = failures("testing", "tls")
    with tls_sink(ca, "wrong.test") as sink, caplog.at_level(logging.INFO):
        result = deliver(sink_config(sink, config(dns, ca_file, tmp_path)))
        sink.wait_for(1)
    assert result.status == "sent" and re.fullmatch(r"TLSv1\.[23] unverified", result.tls)
    assert re.search(
        r"mta-sts: testing: dest\.test: would fail: Server certificate not verified for "
        r"mx\.dest\.test\[127\.0\.0\.1\]:\d+: certificate does not match mx\.dest\.test",
        caplog.text,
    )
    assert failures("testing", "tls") == before + 1


def test_testing_logs_mx_hosts_outside_the_patterns(
    dns: DnsServer,
    https: PolicyServer,
    ca_file: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    https.serve(policy_text("testing", MX))
    mx_at(dns, "mx.elsewhere.test")
    with CaptureSink() as sink, caplog.at_level(logging.INFO):
        result = deliver(sink_config(sink, config(dns, ca_file, tmp_path)))
    assert (result.status, result.tls) == ("sent", "none")
    assert (
        "mta-sts: testing: dest.test: would fail: MX host mx.elsewhere.test does not match"
        in caplog.text
    )


def test_a_failed_fetch_with_a_cached_policy_keeps_enforcing(
    ca: trustme.CA, dns: DnsServer, https: PolicyServer, ca_file: str, tmp_path: Path
) -> None:
    mx_at(dns, MX)
    assert run(policies(dns, ca_file, tmp_path).policy_for(DOMAIN)) is not None
    dns.set_txt(f"_mta-sts.{DOMAIN}", "v=STSv1; id=2;")
    https.serve("", 503)
    with tls_sink(ca, "wrong.test") as sink:
        result = deliver(sink_config(sink, config(dns, ca_file, tmp_path)))
        assert sink.messages == []
    assert (result.status, result.dsn) == ("deferred", "4.7.5")
    assert https.count == 2


# -- end to end: mta serve ------------------------------------------------------------------

Factory = Callable[..., MtaProcess]


def test_end_to_end_enforce_and_the_cache_across_restarts(
    mta_factory: Factory, ca: trustme.CA, dns: DnsServer, https: PolicyServer, ca_file: str
) -> None:
    mx_at(dns, MX)
    with tls_sink(ca, MX) as sink:
        settings = {
            "delivery": {
                "smtp_port": sink.port,
                "dns_servers": [f"127.0.0.1:{dns.port}"],
                "tls_ca_file": ca_file,
            },
        }
        relay = mta_factory(settings)

        def send(n: int) -> str:
            with smtplib.SMTP("127.0.0.1", relay.port, local_hostname="client.test") as c:
                c.sendmail("a@sender.test", [f"bob@{DOMAIN}"], f"Subject: {n}\r\n\r\nx\r\n")
            sink.wait_for(n)
            return wait_until(lambda: relay.log().count("status=sent") == 1 and relay.log())

        log = send(1)
        assert re.search(r"to=<bob@dest\.test>, .*tls=TLSv1\.[23] mta-sts verified", log)
        assert "mta-sts: dest.test: policy id 1 fetched: mode=enforce" in log
        assert https.count == 1
        cache = Path(relay.spool) / "mta-sts" / DOMAIN
        assert json.loads(cache.read_text())["id"] == "1"
        relay.stop()

        spool = {"queue": {"path": str(relay.spool)}}  # the restarts keep the spool
        relay = mta_factory({**settings, **spool})
        send(2)
        assert https.count == 1  # the spool's copy, no fetch
        relay.stop()

        dns.set_txt(f"_mta-sts.{DOMAIN}", "v=STSv1; id=2;")
        relay = mta_factory({**settings, **spool})
        send(3)
        assert https.count == 2  # a new id: fetched again
        assert json.loads(cache.read_text())["id"] == "2"
