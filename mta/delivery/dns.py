"""MX and address lookups with dnspython's async resolver, cached for each answer's TTL.

Classification (RFC 5321 §5.1, RFC 7505): NXDOMAIN and a null MX (``0 .``) are permanent;
SERVFAIL, timeouts and unreachable servers are temporary; a domain that exists without MX
records is its own mail exchanger (implicit MX).  Hosts of equal preference are shuffled so
that load spreads as RFC 5321 §5.1 asks.  A host's IPv4 and IPv6 addresses are tried in
the order of ``delivery.address_preference`` (Postfix's smtp_address_preference), the two
families interleaved, so the other family is always among the first addresses tried and an
IPv6 address that does not answer falls back to IPv4 (as Postfix's
smtp_balance_inet_protocols does).

DNSSEC is left to the resolver in ``delivery.dns_servers``: every query sets the AD bit
(RFC 6840 §5.7), so a validating resolver says whether its answer is authenticated.
:meth:`Resolver.mx` and :meth:`Resolver.tlsa` report that, for DANE (RFC 7672 §2.2);
nothing else depends on it.
"""

from __future__ import annotations

import functools
import ipaddress
import itertools
import random
from typing import Literal, NamedTuple

import dns.asyncresolver
import dns.exception
import dns.flags
import dns.message
import dns.nameserver
import dns.rdatatype
import dns.resolver

from mta import metrics
from mta.config import parse_hostport
from mta.delivery.dane import TlsaRecord
from mta.delivery.results import DeliveryError

__all__ = ["MxAnswer", "Resolver", "order_addresses"]

AddressPreference = Literal["any", "ipv6", "ipv4"]


class MxAnswer(NamedTuple):
    hosts: list[str]  # best preference first
    authenticated: bool  # the resolver set AD: the MX RRset (or its absence) is DNSSEC-secure


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
        resolver.flags = dns.flags.RD | dns.flags.AD  # ask for the AD bit (RFC 6840 §5.7)
        self._resolver = resolver

    async def mx_hosts(self, domain: str) -> list[str]:
        """Mail exchangers for ``domain``, best preference first; raises DeliveryError."""
        return (await self.mx(domain)).hosts

    async def mx(self, domain: str) -> MxAnswer:
        """:meth:`mx_hosts` and whether the answer was authenticated."""
        if domain.startswith("[") and domain.endswith("]"):
            return MxAnswer([domain], False)  # address literal: no lookup
        try:
            answer = await self._query(domain, "MX")
        except dns.resolver.NoAnswer as exc:
            # RFC 5321 §5.1: no MX, the domain's address records are used
            return MxAnswer([domain], _authenticated(exc.response()))
        records = sorted(answer, key=lambda r: (r.preference, random.random()))
        if len(records) == 1 and records[0].exchange == dns.name.root:
            raise DeliveryError(
                True, "5.1.10", f"556 5.1.10 Domain {domain} does not accept mail (null MX)"
            )
        hosts = [r.exchange.to_text(omit_final_dot=True) for r in records]
        return MxAnswer(hosts, _authenticated(answer.response))

    async def addresses_authenticated(self, host: str) -> bool:
        """Whether the A and AAAA answers for ``host`` (cached by :meth:`addresses`) were
        authenticated, records or denial; False when a lookup fails."""
        for rdtype in ("A", "AAAA"):
            try:
                answer = await self._resolver.resolve(
                    host, rdtype, search=False, raise_on_no_answer=False
                )
            except dns.exception.DNSException:
                return False
            if not _authenticated(answer.response):
                return False
        return True

    async def tlsa(self, host: str, port: int) -> tuple[list[TlsaRecord], bool]:
        """The TLSA records of ``_PORT._tcp.HOST`` (RFC 6698 §3) and whether the answer,
        records or denial (NXDOMAIN, NODATA), was authenticated; raises DeliveryError
        (temporary) when the lookup fails.  CNAMEs are followed by the resolver."""
        name = f"_{port}._tcp.{host.rstrip('.')}"
        metrics.DNS_LOOKUPS.labels("TLSA").inc()
        try:
            answer = await self._resolver.resolve(
                name, "TLSA", search=False, raise_on_no_answer=False
            )
        except dns.resolver.NXDOMAIN as exc:
            return [], all(_authenticated(r) for r in exc.responses().values())
        except dns.exception.DNSException as exc:
            metrics.DNS_FAILURES.labels("TLSA", "temporary").inc()
            raise DeliveryError(False, "4.4.3", f"DNS error for {name} type=TLSA: {exc}") from None
        records = [
            TlsaRecord(r.usage, r.selector, r.mtype, r.cert)
            for r in answer.rrset or ()
            if r.rdtype == dns.rdatatype.TLSA
        ]
        return records, _authenticated(answer.response)

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

    async def txt(self, name: str) -> list[str]:
        """The TXT records at ``name``, each one's strings joined (as RFC 8461 §3.1 reads
        them); [] when there are none or the name does not exist.  Raises DeliveryError
        for a temporary failure."""
        try:
            answer = await self._query(name, "TXT")
        except dns.resolver.NoAnswer:
            return []
        except DeliveryError as exc:
            if exc.permanent:  # NXDOMAIN: no record
                return []
            raise
        return [b"".join(r.strings).decode("ascii", "replace") for r in answer]

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


def _authenticated(response: dns.message.Message) -> bool:
    return bool(response.flags & dns.flags.AD)


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
