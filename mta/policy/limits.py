"""Per-client limits (Postfix's anvil and its ``smtpd_client_*_limit`` checks): the
interface smtpd asks, the rules, and the replies.

Two layers, so that where the counts live can change without touching the rules:

* a :class:`CounterStore` holds the counts: per-client open connections and per-kind event
  counts in a rate window (counters.py).  It is asynchronous and keyed by client address,
  so a cluster store (Redis: ``INCR`` on a per-window key with a TTL, a per-client count
  of open connections) fits behind it as well as :class:`LocalStore` (this worker alone)
  and mta/policy/anvil_client.py's :class:`AnvilStore` (the node's anvil process, with
  the local store as its fallback);
* a :class:`Limiter` (the :class:`ClientLimiter` smtpd uses) holds the configured limits,
  the exempt networks and the replies, and asks the store only when a limit is on and the
  client is not exempt: an exempt client costs no round trip at all.

smtpd asks once per connection (open connections and connection rate), once per MAIL
(message rate), once per accepted RCPT (recipient rate) and once per failed AUTH, never per
command.  MAIL and RCPT are decided without waiting while the client is far below its
limit (``*_now``: the store's view, at most half the limit, stands in for the answer, the
count goes to the store in the background); near the limit they wait for the exact count.
A verdict is None (go on) or a :class:`Refusal` with the reply to send, Postfix's texts:
``421 4.7.0`` closes the connection, ``450 4.7.1`` refuses one command.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from mta.config import Config
from mta.policy.counters import ClientCounters, Kind
from mta.policy.networks import Network, in_networks
from mta.protocol.replies import reply, too_many_auth_failures

__all__ = [
    "UNDECIDED",
    "ClientLimiter",
    "CounterStore",
    "Limiter",
    "LocalStore",
    "Refusal",
    "Undecided",
    "Verdict",
    "limiter_for",
]


class CounterStore(Protocol):
    """Where the per-client counts live (one owner per node, or per cluster)."""

    async def connect(self, client: str) -> tuple[int, int]:
        """Count a new connection: (open connections, connections in the rate window)."""
        ...

    def disconnect(self, client: str) -> None:
        """A connection counted by :meth:`connect` closed (no reply awaited)."""
        ...

    async def add(self, kind: Kind, client: str, amount: int) -> int:
        """Count ``amount`` events of ``kind``; how many in the client's rate window."""
        ...

    def add_now(self, kind: Kind, client: str, amount: int, ceiling: int) -> int | None:
        """Count as :meth:`add` does if the store can tell without waiting that the count
        stays at or below ``ceiling`` (or knows it exactly); else None, and nothing is
        counted: ask with :meth:`add`."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Refusal:
    """A limit was exceeded: which (a ``[limits]`` key), the count that exceeded it, and
    the reply.  ``421`` replies close the connection."""

    limit: str
    count: int
    reply: bytes


Verdict = Refusal | None


class Undecided:
    """The store must be asked: await the asynchronous method instead."""


UNDECIDED = Undecided()


class ClientLimiter(Protocol):
    """What smtpd asks; every answer is None (go on) or a :class:`Refusal`."""

    def exempt(self, client: str) -> bool: ...
    async def connect(self, client: str) -> Verdict: ...
    def disconnect(self, client: str) -> None: ...
    async def message(self, client: str) -> Verdict: ...
    def message_now(self, client: str) -> Verdict | Undecided: ...
    async def recipient(self, client: str, count: int = 1) -> Verdict: ...
    def recipient_now(self, client: str, count: int = 1) -> Verdict | Undecided: ...
    async def auth_failure(self, client: str) -> Verdict: ...


class LocalStore:
    """The counts of this process alone (one smtpd worker; the fallback of AnvilStore)."""

    def __init__(
        self, counters: ClientCounters | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.counters = counters or ClientCounters()
        self.clock = clock

    async def connect(self, client: str) -> tuple[int, int]:
        return self.counters.connect(client, self.clock())

    def disconnect(self, client: str) -> None:
        self.counters.disconnect(client)

    async def add(self, kind: Kind, client: str, amount: int) -> int:
        return self.counters.add(kind, client, amount, self.clock())

    def add_now(self, kind: Kind, client: str, amount: int, ceiling: int) -> int | None:
        return self.counters.add(kind, client, amount, self.clock())  # always exact here

    def close(self) -> None:
        pass


# Postfix's replies (smtpd_check.c), so that operators and clients recognise them.
def too_many_connections(hostname: str, client: str) -> bytes:
    return reply(421, f"4.7.0 {hostname} Error: too many connections from {client}")


def too_much_mail(client: str) -> bytes:
    return reply(450, f"4.7.1 Error: too much mail from {client}")


def too_many_recipients(client: str) -> bytes:
    return reply(450, f"4.7.1 Error: too many recipients from {client}")


_CACHE = 10_000  # exemption answers kept per process


class Limiter:
    """The ``[limits]`` rules over a :class:`CounterStore` (0 turns a limit off)."""

    def __init__(
        self,
        store: CounterStore,
        hostname: str,
        *,
        connections: int = 0,
        connection_rate: int = 0,
        message_rate: int = 0,
        recipient_rate: int = 0,
        auth_failures: int = 0,
        exempt_networks: Iterable[str] = (),
    ) -> None:
        self.store = store
        self.hostname = hostname
        self.connections = connections
        self.connection_rate = connection_rate
        self.message_rate = message_rate
        self.recipient_rate = recipient_rate
        self.auth_failures = auth_failures
        self._exempt_networks: list[Network] = [
            ipaddress.ip_network(n, strict=False) for n in exempt_networks
        ]
        self._exempt: dict[str, bool] = {}

    @property
    def counts_connections(self) -> bool:
        return bool(self.connections or self.connection_rate)

    def exempt(self, client: str) -> bool:
        """Is ``client`` in ``exempt_networks`` (an IPv4-mapped address counts as IPv4)?"""
        known = self._exempt.get(client)
        if known is None:
            known = in_networks(client, self._exempt_networks)
            if len(self._exempt) < _CACHE:
                self._exempt[client] = known
        return known

    async def connect(self, client: str) -> Verdict:
        """Count the connection and check both connection limits.  A connection that is
        refused (or whose check is cancelled: the client left) is uncounted at once; the
        caller calls :meth:`disconnect` for one that was let in, when it closes."""
        if not self.counts_connections or self.exempt(client):
            return None
        try:
            open_now, rate = await self.store.connect(client)
        except asyncio.CancelledError:
            self.store.disconnect(client)
            raise
        refusal = None
        if self.connections and open_now > self.connections:
            refusal = Refusal("connections", open_now, self._no_more_connections(client))
        elif self.connection_rate and rate > self.connection_rate:
            refusal = Refusal("connection_rate", rate, self._no_more_connections(client))
        if refusal is not None:
            self.store.disconnect(client)
        return refusal

    def disconnect(self, client: str) -> None:
        """A connection :meth:`connect` let in closed (one it did not count is ignored)."""
        if self.counts_connections and not self.exempt(client):
            self.store.disconnect(client)

    async def message(self, client: str) -> Verdict:
        """MAIL: the message rate (Postfix's smtpd_client_message_rate_limit)."""
        limit = self.message_rate
        if not limit or self.exempt(client):
            return None
        return self._message_verdict(client, await self.store.add("mail", client, 1))

    def message_now(self, client: str) -> Verdict | Undecided:
        """:meth:`message` without waiting, while the client is far below its limit (the
        store's view is at most half of it) or the store counts here; else UNDECIDED, and
        nothing was counted."""
        limit = self.message_rate
        if not limit or self.exempt(client):
            return None
        count = self.store.add_now("mail", client, 1, limit // 2)
        return UNDECIDED if count is None else self._message_verdict(client, count)

    async def recipient(self, client: str, count: int = 1) -> Verdict:
        """RCPT accepted by the other checks: the recipient rate
        (smtpd_client_recipient_rate_limit); ``count`` recipients at once."""
        limit = self.recipient_rate
        if not limit or self.exempt(client):
            return None
        return self._recipient_verdict(client, await self.store.add("rcpt", client, count))

    def recipient_now(self, client: str, count: int = 1) -> Verdict | Undecided:
        """:meth:`recipient` without waiting, as :meth:`message_now`."""
        limit = self.recipient_rate
        if not limit or self.exempt(client):
            return None
        total = self.store.add_now("rcpt", client, count, limit // 2)
        return UNDECIDED if total is None else self._recipient_verdict(client, total)

    def _message_verdict(self, client: str, count: int) -> Verdict:
        if count > self.message_rate:
            return Refusal("message_rate", count, too_much_mail(client))
        return None

    def _recipient_verdict(self, client: str, count: int) -> Verdict:
        if count > self.recipient_rate:
            return Refusal("recipient_rate", count, too_many_recipients(client))
        return None

    async def auth_failure(self, client: str) -> Verdict:
        """A failed AUTH: past ``auth_failures`` in the window, ``421`` and disconnect."""
        limit = self.auth_failures
        if not limit or self.exempt(client):
            return None
        count = await self.store.add("auth", client, 1)
        if count > limit:
            return Refusal("auth_failures", count, too_many_auth_failures(self.hostname))
        return None

    def _no_more_connections(self, client: str) -> bytes:
        return too_many_connections(self.hostname, client)


def limiter_for(config: Config, store: CounterStore) -> Limiter:
    """The limiter of ``config``'s ``[limits]`` (exempt: ``relay.networks`` unless
    ``exempt_networks`` is set, ``[]`` exempting nobody)."""
    limits = config.limits
    exempt = limits.exempt_networks
    return Limiter(
        store,
        config.fqdn,
        connections=limits.connections,
        connection_rate=limits.connection_rate,
        message_rate=limits.message_rate,
        recipient_rate=limits.recipient_rate,
        auth_failures=limits.auth_failures,
        exempt_networks=config.relay.networks if exempt is None else exempt,
    )
