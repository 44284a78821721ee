"""MX and address lookups with dnspython's async resolver, cached for each answer's TTL.

Classification (RFC 5321 §5.1, RFC 7505): NXDOMAIN and a null MX (``0 .``) are permanent;
SERVFAIL, timeouts and unreachable servers are temporary; a domain that exists without MX
records is its own mail exchanger (implicit MX).  Hosts of equal preference are shuffled so
that load spreads as RFC 5321 §5.1 asks.  A host's IPv4 and IPv6 addresses are tried in
the order of ``delivery.address_preference`` (Postfix's smtp_address_preference), the two
families interleaved, so the other family is always among the first addresses tried and an
IPv6 address that does not answer falls back to IPv4 (as Postfix's
smtp_balance_inet_protocols does).
"""

from __future__ import annotations

import functools
import ipaddress
import itertools
import random
from typing import Literal

import dns.asyncresolver
import dns.exception
import dns.nameserver
import dns.resolver

from mta import metrics
from mta.config import parse_hostport
from mta.delivery.results import DeliveryError

__all__ = ["Resolver", "order_addresses"]

AddressPreference = Literal["any", "ipv6", "ipv4"]


class Resolver:
    def __init__(
        self,
        servers: tuple[str, ...] = (),
        timeout: float = 10.0,
        preference: AddressPreference = "any",
    ) -> None:
        self.preference = preference
        resolver = dns.asyncresolver.Resolver(configure=not servers)
        if servers:
            resolver.nameservers = [
                dns.nameserver.Do53Nameserver(host, port)
                for host, port in (parse_hostport(s, 53) for s in servers)
            ]
        resolver.cache = dns.resolver.Cache()
        resolver.lifetime = timeout
        self._resolver = resolver

    async def mx_hosts(self, domain: str) -> list[str]:
        """Mail exchangers for ``domain``, best preference first; raises DeliveryError."""
        if domain.startswith("[") and domain.endswith("]"):
            return [domain]  # address literal: no lookup
        try:
            answer = await self._query(domain, "MX")
        except dns.resolver.NoAnswer:
            return [domain]  # RFC 5321 §5.1: no MX, the domain's address records are used
        records = sorted(answer, key=lambda r: (r.preference, random.random()))
        if len(records) == 1 and records[0].exchange == dns.name.root:
            raise DeliveryError(
                True, "5.1.10", f"556 5.1.10 Domain {domain} does not accept mail (null MX)"
            )
        return [r.exchange.to_text(omit_final_dot=True) for r in records]

    async def addresses(self, host: str) -> list[str]:
        """The addresses of ``host`` in the order to try (:func:`order_addresses`); raises
        DeliveryError when none."""
        address = _address_literal(host)
        if address is not None:
            return [address]
        found: dict[str, list[str]] = {"A": [], "AAAA": []}
        errors: list[DeliveryError] = []
        for rdtype in ("A", "AAAA"):
            try:
                answer = await self._query(host, rdtype)
            except dns.resolver.NoAnswer:
                continue
            except DeliveryError as exc:
                errors.append(exc)
                continue
            found[rdtype].extend(r.address for r in answer)
        if found["A"] or found["AAAA"]:
            return order_addresses(found["A"], found["AAAA"], self.preference)
        if errors and not all(e.permanent for e in errors):
            raise next(e for e in errors if not e.permanent)
        if errors:
            raise errors[0]
        raise DeliveryError(True, "5.1.2", f"Host or domain name not found: {host} has no address")

    async def _query(self, name: str, rdtype: str) -> dns.resolver.Answer:
        metrics.DNS_LOOKUPS.labels(rdtype).inc()
        try:
            return await self._resolver.resolve(name, rdtype, search=False)
        except dns.resolver.NXDOMAIN:
            metrics.DNS_FAILURES.labels(rdtype, "nxdomain").inc()
            raise DeliveryError(
                True, "5.1.2", f"Host or domain name not found: {name} type={rdtype}: NXDOMAIN"
            ) from None
        except dns.resolver.NoAnswer:
            raise
        except (dns.resolver.NoNameservers, dns.exception.Timeout) as exc:
            metrics.DNS_FAILURES.labels(rdtype, "temporary").inc()
            raise DeliveryError(
                False, "4.4.3", f"Temporary DNS failure for {name} type={rdtype}: {exc}"
            ) from None
        except dns.exception.DNSException as exc:
            metrics.DNS_FAILURES.labels(rdtype, "temporary").inc()
            raise DeliveryError(False, "4.4.3", f"DNS error for {name}: {exc}") from None


def order_addresses(v4: list[str], v6: list[str], preference: AddressPreference) -> list[str]:
    """Both families interleaved, the preferred one first (``any``: a random one)."""
    if preference == "any":
        preference = random.choice(("ipv4", "ipv6"))
    first, second = (v6, v4) if preference == "ipv6" else (v4, v6)
    pairs = itertools.zip_longest(first, second)
    return [address for pair in pairs for address in pair if address is not None]


@functools.lru_cache(maxsize=1024)
def _address_literal(host: str) -> str | None:
    """``host`` as an address if it is one (``192.0.2.1``, ``[192.0.2.1]``,
    ``[IPv6:2001:db8::1]``), else None.  Cached: a relayhost or route names the same host
    for every message, and parsing it took longer than the rest of the lookup."""
    literal = host[1:-1] if host.startswith("[") else host
    if literal.lower().startswith("ipv6:"):
        literal = literal[5:]
    try:
        return str(ipaddress.ip_address(literal))
    except ValueError:
        return None
