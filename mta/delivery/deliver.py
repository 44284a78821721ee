"""Delivering one message's recipients for one next hop, by whichever transport it names.

For SMTP/LMTP it finds the candidate servers (MX hosts by preference and their addresses,
or the one configured host), takes an idle connection to the first that has one or opens a
new one, and falls back to the next candidate when a server cannot be reached, greets with
an error or drops the connection before taking the message.  Each transaction holds a
slot for its next hop, granted by the queue manager (destination shaping, slots.py); a
suspended destination is deferred without connecting.
Idle connections are kept for :data:`IDLE_SECONDS` for the next message to the same server
and TLS policy.  The TLS policy of each connection is decided before connecting, from the
next hop (:class:`~mta.delivery.tls_policy.PolicyTable`); under ``may`` a failed STARTTLS
handshake is retried once in plaintext on the same server (Postfix does the same).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict

from mta.config import Config
from mta.delivery.dns import Resolver
from mta.delivery.maildir import deliver_maildir
from mta.delivery.results import DeliveryError
from mta.delivery.routing import NextHop
from mta.delivery.slots import Lease, SlotClient
from mta.delivery.smtp_client import OutboundConnection, TlsHandshakeError, Transaction
from mta.delivery.stored import MessageReadError
from mta.delivery.tls_policy import PolicyTable, TlsPolicy
from mta.queue.results import RecipientResult

__all__ = ["Deliverer"]

log = logging.getLogger("mta.delivery")

IDLE_SECONDS = 10.0
MAX_IDLE_PER_SERVER = 32
MAX_ADDRESSES_TRIED = 5  # like Postfix's smtp_mx_address_limit
IdleKey = tuple[str, int, bool, TlsPolicy]  # address, port, LMTP, TLS policy


class Deliverer:
    def __init__(self, config: Config, resolver: Resolver) -> None:
        self.config = config
        self.resolver = resolver
        self.helo_name = config.fqdn
        self._idle: dict[IdleKey, list[tuple[float, OutboundConnection]]] = defaultdict(list)
        delivery = config.delivery
        self.tls = PolicyTable(delivery.tls, config.tls_policy, delivery.tls_ca_file)
        self.slots = SlotClient(delivery.destination_concurrency)

    async def deliver(self, nexthop: NextHop, tx: Transaction) -> list[RecipientResult]:
        if nexthop.kind == "discard":
            return [
                RecipientResult(
                    address=r,
                    status="sent",
                    dsn="2.0.0",
                    reply="250 2.0.0 discarded",
                    relay="discard",
                )
                for r in tx.recipients
            ]
        try:
            if nexthop.kind == "maildir":
                return await asyncio.to_thread(self._maildir, nexthop.target, tx)
            async with self.slots.slot(nexthop.key) as lease:
                if lease.dead:  # Postfix's words for a dead destination's mail
                    reason = f"delivery temporarily suspended: {lease.reason}"
                    error = DeliveryError(False, "4.4.1", reason)
                    return [error.result_for(r) for r in tx.recipients]
                return await self._remote(nexthop, tx, lease)
        except MessageReadError as exc:
            if exc.corrupt:
                raise  # the whole message is bad: the caller reports it
            # an I/O error on our side: no server is to blame, try again later
            error = DeliveryError(False, "4.3.0", f"451 4.3.0 {exc}", "local")
            return [error.result_for(r) for r in tx.recipients]

    @staticmethod
    def _maildir(template: str, tx: Transaction) -> list[RecipientResult]:
        return [deliver_maildir(template, r, tx.sender, tx.message) for r in tx.recipients]

    async def _remote(
        self, nexthop: NextHop, tx: Transaction, lease: Lease
    ) -> list[RecipientResult]:
        """Try the candidate servers in order (at most :data:`MAX_ADDRESSES_TRIED`
        addresses); the first that takes the transaction gives the results.

        A plain loop, not an async generator of candidates: a generator left early (the
        usual case, the first server takes the message) is finalised by the event loop
        with a task of its own, which cost more than the rest of this function."""
        try:
            hosts = await self._hosts(nexthop)
        except DeliveryError as exc:
            return [exc.result_for(r) for r in tx.recipients]
        last_error: DeliveryError | None = None
        lookup_error: DeliveryError | None = None
        tried = 0
        for host in hosts:
            try:
                addresses = await self.resolver.addresses(host)
            except DeliveryError as exc:
                # One exchanger that does not exist must not bounce mail that another one,
                # whose lookup failed for now, may take later: a temporary error wins.
                if lookup_error is None or (lookup_error.permanent and not exc.permanent):
                    lookup_error = exc
                continue
            for ip in addresses[: MAX_ADDRESSES_TRIED - tried]:
                tried += 1
                try:
                    policy = self.tls.policy(nexthop.target, nexthop.port, nexthop.mx, host)
                    key = (ip, nexthop.port, nexthop.kind == "lmtp", policy)
                    conn = self._take_idle(key) or await self._open(host, ip, nexthop, policy)
                    results = await conn.send(tx)
                except DeliveryError as exc:
                    last_error = exc
                    log.debug("%s: %s; trying the next server", nexthop.key, exc.reply)
                    continue
                self._keep_idle(conn, key)
                lease.up()
                return results
            if tried >= MAX_ADDRESSES_TRIED:
                break
        if last_error is not None:
            lease.unreachable(last_error.reply)
        # Lookup errors count only when no server could be tried at all.
        error = last_error or lookup_error
        if error is None:
            error = DeliveryError(False, "4.4.4", f"no server found for {nexthop.target}")
        return [error.result_for(r) for r in tx.recipients]

    async def _hosts(self, nexthop: NextHop) -> list[str]:
        """The servers to try, best first: the MX hosts, or the one configured host."""
        if nexthop.mx:
            return await self.resolver.mx_hosts(nexthop.target)
        return [nexthop.target]

    async def _open(
        self, host: str, ip: str, nexthop: NextHop, policy: TlsPolicy
    ) -> OutboundConnection:
        try:
            return await self._connect(host, ip, nexthop, policy)
        except TlsHandshakeError as exc:
            if policy.level != "may":
                raise
            log.warning("%s; retrying in plaintext", exc.reply)
            return await self._connect(host, ip, nexthop, TlsPolicy("none"))

    async def _connect(
        self, host: str, ip: str, nexthop: NextHop, policy: TlsPolicy
    ) -> OutboundConnection:
        delivery = self.config.delivery
        return await OutboundConnection.open(
            host=host,
            ip=ip,
            port=nexthop.port,
            helo_name=self.helo_name,
            lmtp=nexthop.kind == "lmtp",
            connect_timeout=delivery.connect_timeout,
            command_timeout=delivery.command_timeout,
            policy=policy,
            context=self.tls.context(policy),
            # the source address by family (Postfix's smtp_bind_address and _address6)
            bind=delivery.bind_address6 if ":" in ip else delivery.bind_address,
        )

    def _take_idle(self, key: IdleKey) -> OutboundConnection | None:
        idle = self._idle.get(key)
        while idle:
            _, conn = idle.pop()
            if conn.reusable:
                return conn
            conn.abort()
        return None

    def _keep_idle(self, conn: OutboundConnection, key: IdleKey) -> None:
        idle = self._idle[key]
        if conn.usable and len(idle) < MAX_IDLE_PER_SERVER:
            idle.append((time.monotonic(), conn))
        else:
            asyncio.get_running_loop().create_task(conn.quit())

    async def close_idle(self, older_than: float = IDLE_SECONDS) -> None:
        """Close connections idle longer than ``older_than`` seconds (0: all of them)."""
        now = time.monotonic()
        closing: list[OutboundConnection] = []
        for idle in self._idle.values():
            keep = [(t, c) for t, c in idle if now - t < older_than]
            closing.extend(c for t, c in idle if now - t >= older_than)
            idle[:] = keep
        await asyncio.gather(*(c.quit() for c in closing))
