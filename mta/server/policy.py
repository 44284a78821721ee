"""What smtpd decides about a transaction: relay control (RCPT) and spool room (MAIL).

Relay control: who may send mail where.  No open relay, ever, by default.  Clients inside
``relay.networks`` (default: loopback) and clients that authenticated with SMTP AUTH may
relay to any domain; every other client may only
send to the domains we accept mail for (``relay.domains`` and ``delivery.local_domains``;
a ``[routes]`` entry alone is not one) and to ``postmaster`` (RFC 5321 §4.5.1), without
routing in the local part (mta/policy/decide.py).  Everything else gets
``554 5.7.1 <addr>: Relay access denied``, as Postfix's ``reject_unauth_destination`` does.
The RCPT stage as a whole (access tables, DNSBL, valid recipients) is decided in
mta/policy/decide.py; this class answers "is the client in relay.networks".

Spool room: ``MAIL`` gets ``452 4.3.1 Insufficient system storage`` while the spool lacks
room for the transaction (:func:`storage_refusal`; the rule is in mta/queue/space.py).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from mta.policy.decide import destination_is_ours
from mta.policy.networks import Network, in_networks
from mta.protocol import replies
from mta.queue.space import SpoolSpace

__all__ = ["RelayPolicy", "declared_size", "in_networks", "storage_refusal"]


def declared_size(params: dict[str, str | None]) -> int:
    """The ``SIZE`` a MAIL command declared (RFC 1870), 0 when none; the session has
    already refused one that is not a number or exceeds the fixed limit (552)."""
    value = params.get("SIZE")
    return int(value) if value else 0


def storage_refusal(space: SpoolSpace, declared: int) -> bytes | None:
    """MAIL: the ``452`` refusing it while the spool lacks room for it, else None.

    Answered at MAIL, as Postfix does (``smtpd_check_queue``), and not at RCPT, which
    RFC 1870 §6.1 also allows: the spool holds one copy of a message whatever its
    recipients, so the answer cannot differ from one recipient to the next, and refusing
    at MAIL spares the client its RCPTs (and, pipelined, they get ``503``, not a 250 that
    leads nowhere).  452 rather than 552: the shortage is temporary (RFC 1870 §6.1, RFC
    3463 4.3.1 "mail system full"), so the client keeps the message and tries again.
    """
    return None if space.has_room(declared) else replies.INSUFFICIENT_STORAGE


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
        return self.client_may_relay(client_ip) or destination_is_ours(recipient, self.domains)

    def _in_networks(self, client_ip: str) -> bool:
        return in_networks(client_ip, self.networks)
