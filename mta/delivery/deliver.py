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
handshake is retried once in plaintext on the same server (Postfix does the same).  Under
``dane``/``dane-only`` the policy of each server is its DANE policy when DNSSEC-authenticated
TLSA records apply (:func:`~mta.delivery.dane.dane_policy`), else the non-DANE level; a
failed TLSA lookup or a failed DANE match moves on to the next server.  For MX next hops
without a ``[tls_policy]`` entry, the domain's MTA-STS policy (asked once per next hop)
narrows the MX hosts and decides the level where DANE does not apply (RFC 8461 §2:
DANE beats MTA-STS; :mod:`mta.delivery.mta_sts_apply`).  A REQUIRETLS message raises the
policy to one that authenticates the server (or fails with 5.7.30), a ``TLS-Required: No``
one lowers it to ``may`` and ignores MTA-STS (RFC 8689, :mod:`mta.delivery.requiretls`).
A relayhost or route with credentials in ``delivery.smtp_auth_file`` is authenticated to
(:mod:`mta.delivery.credentials`; its TLS level defaults to ``verify``), and a next hop on
one of ``delivery.tls_wrapper_ports`` (465) gets TLS before the greeting (RFC 8314), at
least at ``encrypt``: a plaintext retry on such a port would be pointless.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict

from mta.config import Config
from mta.delivery import mta_sts_apply, requiretls
from mta.delivery.credentials import load_credentials
from mta.delivery.dane import dane_policy
from mta.delivery.dns import Resolver
from mta.delivery.maildir import deliver_maildir
from mta.delivery.mta_sts import StsPolicy
from mta.delivery.mta_sts_cache import StsPolicies
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
IdleKey = tuple[str, int, bool, TlsPolicy, str]  # address, port, LMTP, TLS policy, login


class Deliverer:
    def __init__(self, config: Config, resolver: Resolver) -> None:
        self.config = config
        self.resolver = resolver
        self.helo_name = config.fqdn
        self._idle: dict[IdleKey, list[tuple[float, OutboundConnection]]] = defaultdict(list)
        delivery = config.delivery
        self.credentials = load_credentials(config)  # checked at start: serve, reload
        self.tls = PolicyTable(
            delivery.tls, config.tls_policy, delivery.tls_ca_file, self.credentials
        )
        self.slots = SlotClient(delivery.destination_concurrency)
        self.sts = StsPolicies(config, resolver) if config.mta_sts.enabled else None

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
            hosts, mx_secure = await self._hosts(nexthop)
            sts = None if tx.tls_optional else await self._sts_policy(nexthop)
            if sts is not None:
                hosts = mta_sts_apply.allowed_hosts(nexthop.target, sts, hosts)
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
            try:
                policy = await self._message_policy(nexthop, host, mx_secure, sts, tx)
            except DeliveryError as exc:  # TLSA lookup error, dane-only without DANE, 5.7.30
                last_error = exc
                log.debug("%s: %s; trying the next server", nexthop.key, exc.reply)
                continue
            for ip in addresses[: MAX_ADDRESSES_TRIED - tried]:
                tried += 1
                try:
                    key = (ip, nexthop.port, nexthop.kind == "lmtp", policy, self._login(nexthop))
                    conn = self._take_idle(key) or await self._open(
                        host, ip, nexthop, policy, None if policy.tlsa else sts
                    )
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

    async def _hosts(self, nexthop: NextHop) -> tuple[list[str], bool]:
        """The servers to try, best first: the MX hosts, or the one configured host; and
        whether DNSSEC vouches for them (a configured host is trusted as configured)."""
        if nexthop.mx:
            return await self.resolver.mx(nexthop.target)
        return [nexthop.target], True

    async def _message_policy(
        self, nexthop: NextHop, host: str, mx_secure: bool, sts: StsPolicy | None, tx: Transaction
    ) -> TlsPolicy:
        """RFC 8689: REQUIRETLS raises the server's policy (or fails with 5.7.30),
        ``TLS-Required: No`` lowers it to ``may`` except for a hop we authenticate to
        (:mod:`mta.delivery.requiretls`)."""
        if tx.tls_optional and not self._login(nexthop):
            return TlsPolicy("may")
        policy = await self._policy(nexthop, host, mx_secure, sts)
        return requiretls.required_policy(policy, nexthop, host) if tx.require_tls else policy

    async def _policy(
        self, nexthop: NextHop, host: str, mx_secure: bool, sts: StsPolicy | None
    ) -> TlsPolicy:
        """The TLS policy of one server, decided before connecting.  DANE beats everything
        else where it applies; where it does not, the non-DANE level is the MTA-STS
        policy's (enforce) or ``may`` (Postfix)."""
        policy = self.tls.policy(nexthop.target, nexthop.port, nexthop.mx, host)
        if policy.level in ("dane", "dane-only"):
            found = await dane_policy(self.resolver, host, nexthop.port, nexthop.target, mx_secure)
            if found is not None:
                return found
            if policy.level == "dane-only":  # Postfix's dane-only: DANE or defer
                raise DeliveryError(
                    False,
                    "4.7.5",
                    f"no DNSSEC-authenticated usable TLSA records for {host}:{nexthop.port}",
                )
            policy = TlsPolicy("may")
        if sts is not None and sts.mode == "enforce":
            return mta_sts_apply.enforced_tls(host)
        if self._implicit_tls(nexthop) and not policy.required:
            # TLS from the first byte is at least encrypt (as Postfix's wrappermode wants)
            return TlsPolicy("encrypt", min_version=policy.min_version)
        return policy

    async def _sts_policy(self, nexthop: NextHop) -> StsPolicy | None:
        """The MTA-STS policy in force for an MX next hop, unless a [tls_policy] entry
        names the domain (an operator's word wins) or the policy says ``none``."""
        if self.sts is None or not nexthop.mx or self.tls.has_entry(nexthop.target):
            return None
        policy = await self.sts.policy_for(nexthop.target.lower().rstrip("."))
        return policy if policy is not None and policy.mode != "none" else None

    def _implicit_tls(self, nexthop: NextHop) -> bool:
        return nexthop.kind == "smtp" and nexthop.port in self.config.delivery.tls_wrapper_ports

    def _login(self, nexthop: NextHop) -> str:
        found = self.credentials.lookup(nexthop) if self.credentials is not None else None
        return found.username if found is not None else ""

    async def _open(
        self,
        host: str,
        ip: str,
        nexthop: NextHop,
        policy: TlsPolicy,
        sts: StsPolicy | None = None,
    ) -> OutboundConnection:
        trial = mta_sts_apply.trial_tls(sts, host)
        if trial is not None:  # MTA-STS testing: try as enforce would, report, go on
            try:
                return await self._connect(host, ip, nexthop, trial)
            except mta_sts_apply.TLS_FAILURES as exc:
                mta_sts_apply.would_fail(nexthop.target, exc.reply, "tls")
        try:
            return await self._connect(host, ip, nexthop, policy)
        except mta_sts_apply.TLS_FAILURES as exc:
            mta_sts_apply.enforce_failed(policy, exc)
            if policy.level != "may" or not isinstance(exc, TlsHandshakeError):
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
            credentials=self.credentials.lookup(nexthop) if self.credentials else None,
            implicit_tls=self._implicit_tls(nexthop),
            # the source address by family (Postfix's smtp_bind_address and _address6)
            bind=delivery.bind_address6 if ":" in ip else delivery.bind_address,
            chunking=delivery.chunking,
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
