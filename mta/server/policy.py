"""Relay control: who may send mail where.  No open relay, ever, by default.

Clients inside ``relay.networks`` (default: loopback) may relay to any domain; every other
client may only send to the domains we accept mail for (``relay.domains``, the routed and
local domains) and to ``postmaster`` (RFC 5321 §4.5.1).  Everything else gets
``554 5.7.1 Relay access denied``, as Postfix's ``reject_unauth_destination`` does.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

__all__ = ["RelayPolicy"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class RelayPolicy:
    def __init__(self, networks: Iterable[str], domains: Iterable[str]) -> None:
        self.networks: list[Network] = [ipaddress.ip_network(n, strict=False) for n in networks]
        self.domains = frozenset(d.lower().rstrip(".") for d in domains)
        self._client_cache: dict[str, bool] = {}

    def client_may_relay(self, client_ip: str) -> bool:
        """Is this client address inside one of the relay networks?"""
        allowed = self._client_cache.get(client_ip)
        if allowed is None:
            allowed = self._in_networks(client_ip)
            if len(self._client_cache) < 10_000:
                self._client_cache[client_ip] = allowed
        return allowed

    def allows(self, client_ip: str, recipient: str) -> bool:
        """May ``client_ip`` hand us mail for ``recipient``?"""
        if self.client_may_relay(client_ip):
            return True
        at = recipient.rfind("@")
        if at < 0:
            return recipient.lower() == "postmaster"
        return recipient[at + 1 :].lower().rstrip(".") in self.domains

    def _in_networks(self, client_ip: str) -> bool:
        try:
            address = ipaddress.ip_address(client_ip.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self.networks)
