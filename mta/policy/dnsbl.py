"""DNS blocklist lookups of client addresses (Postfix's ``reject_rbl_client``, with
postscreen's ``zone*weight`` and threshold).

A client ``192.0.2.1`` is listed by ``zone`` when ``1.2.0.192.zone`` has an A record
(RFC 5782 §2.1; IPv6: the 32 reversed nibbles).  Each zone that lists it adds its weight
(``zone*2``; default 1); reaching ``dnsbl.threshold`` refuses the client's recipients with
``554 5.7.1 Service unavailable; Client host [ip] blocked using zone``.

The lookup is started at connect and awaited only at the first RCPT, so the greeting and
EHLO never wait for DNS.  Answers are cached per address for their TTL (at most
:data:`MAX_TTL`), at most ``cache_size`` addresses (the oldest go first).  A lookup that
fails (timeout, SERVFAIL, no server) counts as "not listed": a broken blocklist never
refuses mail.  Failures are not cached, so the next connection asks again.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.nameserver
import dns.resolver

from mta.config import DnsblConfig, parse_hostport
from mta.policy.networks import client_address

__all__ = ["DnsblChecker", "Listing", "reversed_name"]

log = logging.getLogger("mta.smtpd")

MAX_TTL = 3600.0  # seconds an answer is kept at most, whatever its TTL
NEGATIVE_TTL = 300.0  # "not listed" (NXDOMAIN) kept this long at most


@dataclass(frozen=True, slots=True)
class Listing:
    """The verdict on one address: the zone named in the reply (the heaviest listing),
    None when the weights of the listing zones stay below the threshold."""

    zone: str | None


def reversed_name(client_ip: str) -> str | None:
    """``192.0.2.1`` → ``1.2.0.192``; IPv6 as reversed nibbles; None for no address."""
    address = client_address(client_ip)
    if address is None:
        return None
    if isinstance(address, ipaddress.IPv4Address):
        return ".".join(reversed(str(address).split(".")))
    return ".".join(reversed(address.exploded.replace(":", "")))


class DnsblChecker:
    def __init__(self, config: DnsblConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.zones = [_zone_weight(z) for z in config.zones]
        self.threshold = config.threshold
        self.cache_size = config.cache_size
        self.clock = clock
        resolver = dns.asyncresolver.Resolver(configure=not config.dns_servers)
        if config.dns_servers:
            resolver.nameservers = [
                dns.nameserver.Do53Nameserver(host, port)
                for host, port in (parse_hostport(s, 53) for s in config.dns_servers)
            ]
        resolver.lifetime = config.timeout
        self._resolver = resolver
        self._cache: OrderedDict[str, tuple[float, Listing]] = OrderedDict()

    async def check(self, client_ip: str) -> Listing:
        """Is ``client_ip`` listed?  Never raises for DNS trouble (then: not listed)."""
        cached = self._cache.get(client_ip)
        if cached is not None and cached[0] > self.clock():
            return cached[1]
        name = reversed_name(client_ip)
        if name is None:
            return Listing(None)
        answers = await asyncio.gather(*(self._query(f"{name}.{zone}") for zone, _ in self.zones))
        failed = any(answer is None for answer in answers)  # then not cached: ask again
        score, heaviest, best = 0, None, 0
        for (zone, weight), answer in zip(self.zones, answers, strict=True):
            if answer is not None and answer >= 0:
                score += weight
                if weight > best:
                    heaviest, best = zone, weight
        listing = Listing(heaviest if score >= self.threshold else None)
        if not failed:
            self._remember(client_ip, listing, min(abs(a) for a in answers if a is not None))
        return listing

    async def _query(self, qname: str) -> float | None:
        """The A answer's TTL (≥ 0) if listed, -TTL if not listed, None if the lookup failed."""
        try:
            answer = await self._resolver.resolve(qname, "A", search=False)
        except dns.resolver.NXDOMAIN:
            return -NEGATIVE_TTL
        except dns.resolver.NoAnswer:
            return -NEGATIVE_TTL
        except (dns.exception.DNSException, OSError) as exc:
            log.warning("warning: dnsbl lookup %s failed: %s", qname, exc)
            return None
        return float(min(answer.rrset.ttl if answer.rrset else 0, MAX_TTL))

    def _remember(self, client_ip: str, listing: Listing, ttl: float) -> None:
        cache = self._cache
        cache[client_ip] = (self.clock() + min(ttl, MAX_TTL), listing)
        cache.move_to_end(client_ip)
        while len(cache) > self.cache_size:
            cache.popitem(last=False)


def _zone_weight(entry: str) -> tuple[str, int]:
    name, _, weight = entry.partition("*")
    return name.strip().strip(".").lower(), int(weight) if weight else 1
