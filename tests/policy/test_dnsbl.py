"""DNSBL lookups against a DNS server in the test (tests/delivery/dnsserver.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from mta.config import DnsblConfig
from mta.policy.dnsbl import DnsblChecker, Listing, reversed_name
from tests.delivery.dnsserver import DnsServer

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def dns() -> Iterator[DnsServer]:
    with DnsServer(ttl=60) as server:
        yield server


def checker(dns: DnsServer, *zones: str, threshold: int = 1, **kw: object) -> DnsblChecker:
    settings = {"dns_servers": (f"127.0.0.1:{dns.port}",), "timeout": 2.0, **kw}
    return DnsblChecker(DnsblConfig(zones=zones, threshold=threshold, **settings))  # type: ignore[arg-type]


def check(c: DnsblChecker, ip: str) -> Listing:
    return asyncio.run(c.check(ip))


def test_reversed_names() -> None:
    assert reversed_name("192.0.2.1") == "1.2.0.192"
    assert reversed_name("::ffff:192.0.2.1") == "1.2.0.192"
    assert reversed_name("2001:db8::1") == ".".join(reversed("20010db8" + "0" * 23 + "1"))
    assert reversed_name("nonsense") is None


def test_a_listed_client_is_listed_and_cached(dns: DnsServer) -> None:
    dns.add_a("1.2.0.192.bl.test", "127.0.0.2")
    c = checker(dns, "bl.test")
    assert check(c, "192.0.2.1") == Listing("bl.test")
    assert check(c, "192.0.2.2") == Listing(None)  # NXDOMAIN: not listed
    asked = len(dns.queries)
    assert check(c, "192.0.2.1") == Listing("bl.test")  # from the cache
    assert check(c, "192.0.2.2") == Listing(None)
    assert len(dns.queries) == asked


def test_weights_and_threshold(dns: DnsServer) -> None:
    dns.add_a("1.2.0.192.light.test", "127.0.0.2")
    dns.add_a("2.2.0.192.light.test", "127.0.0.2")
    dns.add_a("2.2.0.192.heavy.test", "127.0.0.2")
    c = checker(dns, "light.test", "heavy.test*2", threshold=3)
    assert check(c, "192.0.2.1") == Listing(None)  # 1 < 3
    assert check(c, "192.0.2.2") == Listing("heavy.test")  # 1 + 2, named by the heaviest


def test_a_failing_lookup_never_lists_and_is_not_cached(dns: DnsServer) -> None:
    dns.servfail("1.2.0.192.bl.test")
    c = checker(dns, "bl.test")
    assert check(c, "192.0.2.1") == Listing(None)
    asked = len(dns.queries)
    assert check(c, "192.0.2.1") == Listing(None)
    assert len(dns.queries) > asked  # asked again


def test_the_cache_is_bounded(dns: DnsServer) -> None:
    c = checker(dns, "bl.test", cache_size=2)
    for ip in ("192.0.2.1", "192.0.2.2", "192.0.2.3"):
        check(c, ip)
    assert list(c._cache) == ["192.0.2.2", "192.0.2.3"]
