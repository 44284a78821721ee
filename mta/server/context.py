"""What every connection of one smtpd worker shares: configuration, parser backend, spool,
committer, policy, the spool's free space, and each listener's state (listeners.py: its
session limits, leniency and TLS context; ``limits``, ``leniency`` and ``tls`` here are the
first listener's, for code that serves one).

It also keeps the worker's bookkeeping (open connections, shutdown, counters) and is the one
place where the receive path reports to logs and metrics, so the protocol code stays about
SMTP.  The worker makes one; a test can make one around a loop of its own.

Admission (:meth:`WorkerContext.admit`) is decided here: ``smtp.max_connections`` holds for
the node (the workers share a count, connections.py), and a worker whose file descriptors
run short refuses new clients with ``421`` while it still has descriptors to say so, rather
than letting accept(2) fail with EMFILE (libuv then closes the pending connections without
a word).  Both refusals are logged.

Stress mode (Postfix's ``${stress?10}{300}``): while the node's connections are at or above
``smtp.stress_threshold`` of the limit, the idle and command timeouts drop to
``smtp.stress_timeout``, so that idle and slow clients make room for new ones.  Entering and
leaving it is logged once by each worker and shown by the ``mta_smtpd_stress`` gauge.

Per-client limits (``[limits]``, mta/policy/limits.py): the :class:`Limiter` the worker
gives (asking the node's anvil) or, by default, one that counts in this process.  Its
connection check is one of the connect stage's checks; MAIL and RCPT ask it in smtpd.py;
AUTH failures through :meth:`WorkerContext.auth_failure_limit`.  Refusals are logged here
(Postfix's ``warning: ... limit exceeded`` and ``NOQUEUE: reject:``, at most
:class:`LogBudget`'s lines a second) and counted by limit.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from dataclasses import InitVar, dataclass, field
from typing import TYPE_CHECKING

from mta import metrics
from mta.config import Config, Listener
from mta.policy.auth import Authenticator, SenderLogins
from mta.policy.dnsbl import DnsblChecker
from mta.policy.limits import Limiter, LocalStore, Refusal, limiter_for
from mta.policy.tables import PolicyTables, load_tables
from mta.protocol import replies
from mta.protocol.events import AuthRequest
from mta.protocol.printable import for_log
from mta.protocol.session import ParserBackend, SessionLimits
from mta.queue.commit import GroupCommitter
from mta.queue.envelope import Envelope
from mta.queue.space import SpoolSpace
from mta.queue.spool import Spool
from mta.server.connect_access import access_connect_checks
from mta.server.connections import LocalCounter, NodeCounter
from mta.server.leniency import DataLeniency
from mta.server.listeners import ListenerState, listener_states
from mta.server.policy import RelayPolicy
from mta.server.stats import SmtpdStats
from mta.server.trace import DateCache

if TYPE_CHECKING:
    from mta.server.smtpd import ConnectCheck, SMTPProtocol

__all__ = ["LogBudget", "WorkerContext", "fd_ceiling", "session_limits"]

log = logging.getLogger("mta.smtpd")

# Leaving stress mode takes a count this much below the level that entered it, so that a
# node hovering at the threshold does not flap (and log) on every connection.
_STRESS_HYSTERESIS = 0.9
# A SASL username may be 9 KiB (RFC 4954 §4's 12288-octet responses): logged cut to this.
_MAX_LOGGED_USERNAME = 256


# Postfix's wording of each limit in its "limit exceeded" warnings
_LIMIT_NAMES = {
    "connections": "Connection concurrency",
    "connection_rate": "Connection rate",
    "message_rate": "Message delivery request rate",
    "recipient_rate": "Recipient address rate",
    "auth_failures": "Authentication failure",
}


def fd_ceiling(soft_limit: int) -> int:
    """The highest descriptor number a new connection may have.

    accept(2) gives the lowest free number, so a socket numbered ``n`` means ``0..n-1`` are
    all in use.  The headroom above the ceiling is for what the worker opens besides sockets
    (message files, segments, the log) and for the refused sockets, each held for the moment
    it takes to write ``421``: a sixteenth of the limit, at least 16.
    """
    return soft_limit - max(16, soft_limit // 16)


def session_limits(config: Config, listener: Listener | None = None) -> SessionLimits:
    """The session's limits on ``listener`` (default: the first one), all from the
    configuration (the one owner of their defaults)."""
    smtp = config.smtp
    if listener is None:
        listener = config.resolved_listeners()[0]
    return SessionLimits(
        starttls=listener.tls in ("offered", "required"),
        require_tls=listener.tls == "required",
        auth=listener.auth and bool(config.auth.passwords),  # no users, no AUTH
        auth_plaintext=listener.auth_plaintext,
        require_auth=listener.require_auth,
        hostname=config.fqdn,
        max_message_size=smtp.max_message_size,
        max_recipients=smtp.max_recipients,
        max_line_length=smtp.max_line_length,
        max_errors=smtp.max_errors,
        normalize_bare_line_endings=smtp.bare_lf == "normalize",
        strip_nul=smtp.nul == "strip",
        vrfy=smtp.vrfy,
    )


class LogBudget:
    """At most ``burst`` lines per ``period`` seconds, for refusals that come in floods (a
    full disk refuses every MAIL of every client); it counts the lines it held back."""

    def __init__(self, burst: int = 10, period: float = 1.0) -> None:
        self.burst = burst
        self.period = period
        self._window = float("-inf")  # when the current period began
        self._used = 0
        self._held = 0

    def take(self, now: float) -> int | None:
        """None: do not log this one; else log it, with how many were held back before."""
        if now - self._window >= self.period:
            self._window = now
            self._used = 0
        if self._used >= self.burst:
            self._held += 1
            return None
        self._used += 1
        held, self._held = self._held, 0
        return held


@dataclass(eq=False)
class WorkerContext:
    config: Config
    spool: Spool
    committer: GroupCommitter
    loop: asyncio.AbstractEventLoop
    parser: ParserBackend  # chosen once per process (mta.parser_backend.select)
    # every listener's state, in Config.resolved_listeners() order (listeners.py); the
    # first one's limits, leniency and TLS context are also ctx.limits, .leniency and .tls
    listeners: list[ListenerState] = field(init=False)
    limits: SessionLimits = field(init=False)
    policy: RelayPolicy = field(init=False)
    space: SpoolSpace = field(init=False)  # measured at most every MAX_AGE (loop time)
    refusal_log: LogBudget = field(default_factory=LogBudget)
    leniency: DataLeniency = field(init=False)  # per-client limits (smtp.normalize_networks)
    connections: set[SMTPProtocol] = field(default_factory=set)
    stats: SmtpdStats = field(default_factory=lambda: SmtpdStats())
    dates: DateCache = field(default_factory=DateCache)  # for Received: headers
    tls: ssl.SSLContext | None = None
    shutting_down: bool = False
    counter: NodeCounter = field(default_factory=LocalCounter)  # the node's connections
    max_fd: int = 1 << 30  # fd_ceiling of the worker's RLIMIT_NOFILE (none by default)
    # the deadlines in force (seconds): the configured ones, or the stress ones
    idle_timeout: float = field(init=False)
    command_timeout: float = field(init=False)
    stressed: bool = False
    # the connect stage's checks, in order, awaited before the greeting (smtpd._open);
    # none (the default): the greeting goes out at once, with no task per connection
    connect_checks: list[ConnectCheck] = field(default_factory=list)
    # SMTP AUTH (mta.policy.auth): None when auth.passwords (sender_logins) is not set
    authenticator: Authenticator | None = None
    sender_logins: SenderLogins | None = None
    # access tables and valid recipients (mta/policy), loaded once: a HUP replaces the
    # worker), given as ``preloaded`` or read from the configuration (ConfigError if bad)
    preloaded: InitVar[PolicyTables | None] = None
    tables: PolicyTables = field(init=False)
    dnsbl: DnsblChecker | None = field(init=False)  # [dnsbl] zones set: the lookups
    # per-client limits ([limits]); None: counted by this worker alone (the worker gives
    # one that asks the node's anvil)
    limiter: Limiter | None = None
    limit_log: LogBudget = field(default_factory=LogBudget)

    def __post_init__(self, preloaded: PolicyTables | None) -> None:
        config = self.config
        self.listeners = listener_states(config, session_limits)  # ConfigError: a cert
        first = self.listeners[0]
        self.limits, self.leniency, self.tls = first.limits, first.leniency, first.tls
        # accepted domains are listed explicitly: a [routes] entry alone is not one
        self.policy = RelayPolicy(config.relay.networks, config.accepted_domains())
        self.tables = preloaded if preloaded is not None else load_tables(config)
        self.dnsbl = DnsblChecker(config.dnsbl) if config.dnsbl.zones else None
        self.connect_checks.extend(access_connect_checks(config.access.greet_pause, self.dnsbl))
        self.space = SpoolSpace(
            self.spool.path,
            self.config.queue.min_free,
            self.config.smtp.max_message_size,
            clock=self.loop.time,
        )
        smtp = self.config.smtp
        self.idle_timeout = smtp.idle_timeout
        self.command_timeout = smtp.command_timeout
        hostname = self.limits.hostname
        self._no_fds = replies.reply(421, f"4.3.2 {hostname} Error: too many open files")
        self._too_many = replies.too_many_connections(hostname)
        if self.limiter is None:
            self.limiter = limiter_for(self.config, LocalStore(clock=self.loop.time))
        if self.limiter.counts_connections:
            self.connect_checks.append(self._limit_connection)

    def admit(self, protocol: SMTPProtocol, fd: int) -> bytes | None:
        """Count a new connection in, or return the ``421`` that refuses it (``fd`` is its
        socket's descriptor number, -1 if unknown)."""
        self.stats.opened += 1
        if fd > self.max_fd:
            detail = f"out of file descriptors (socket {fd}, ceiling {self.max_fd})"
            return self._refuse(protocol, "no_fds", self._no_fds, detail)
        connections = self.connections
        connections.add(protocol)
        counter = self.counter
        counter.set_mine(len(connections))
        total = counter.total()
        limit = self.config.smtp.max_connections
        if total > limit:
            connections.discard(protocol)
            counter.set_mine(len(connections))
            detail = f"too many connections ({total - 1} on this node, limit {limit})"
            return self._refuse(protocol, "too_many_connections", self._too_many, detail)
        if self.stressed != (total >= self._stress_level(self.stressed)):
            self._set_stress(not self.stressed, total)
        return None

    def _refuse(self, protocol: SMTPProtocol, reason: str, reply: bytes, detail: str) -> bytes:
        self.count_reject(reason)
        log.warning("refused connection from [%s]: %s", protocol.client_ip, detail)
        return reply

    def connection_closed(self, protocol: SMTPProtocol) -> None:
        if protocol.limited_as is not None:
            self.client_limiter.disconnect(protocol.limited_as)
            protocol.limited_as = None
        if protocol in self.connections:
            self.connections.discard(protocol)
            self.counter.set_mine(len(self.connections))
            self.stats.session_closed(protocol.session.reply_counts)

    # ----- per-client limits (mta/policy/limits.py) ---------------------------------------

    @property
    def client_limiter(self) -> Limiter:
        assert self.limiter is not None  # made in __post_init__
        return self.limiter

    async def _limit_connection(self, protocol: SMTPProtocol) -> bytes | None:
        """The connect stage's check of the client's open connections and connection rate.
        The address is read here, not earlier: a PROXY header may have changed it."""
        client = protocol.client_ip
        verdict = await self.client_limiter.connect(client)
        if verdict is None:
            protocol.limited_as = client  # uncounted when it closes (connection_closed)
            return None
        self.limit_refused(verdict, client, "CONNECT", "proto=SMTP", protocol.listener.name)
        return verdict.reply

    async def auth_failure_limit(self, client_ip: str, service: str = "smtp") -> bytes | None:
        """A failed AUTH from ``client_ip`` on listener ``service``: the ``421`` to send
        (then close) once the client is past ``limits.auth_failures`` per minute, else None."""
        verdict = await self.client_limiter.auth_failure(client_ip)
        if verdict is None:
            return None
        self.limit_refused(verdict, client_ip, "AUTH", "", service)
        return verdict.reply

    def limit_refused(
        self, refusal: Refusal, client: str, stage: str, detail: str, service: str = "smtp"
    ) -> None:
        """Count a refusal by a per-client limit and log it as Postfix does (at most
        :class:`LogBudget`'s lines a second; the metric counts every one)."""
        self.count_reject(refusal.limit)
        metrics.LIMIT_REJECTS.labels(refusal.limit).inc()
        held = self.limit_log.take(self.loop.time())
        if held is None:
            return
        name = _LIMIT_NAMES[refusal.limit]
        log.warning(
            "warning: %s limit exceeded: %d from unknown[%s] for service %s%s",
            name,
            refusal.count,
            client,
            service,  # the listener, as Postfix names the master.cf service
            f" ({held} more limit refusals not logged)" if held else "",
        )
        text = refusal.reply.decode("utf-8", "replace").rstrip("\r\n")
        log.info(
            "NOQUEUE: reject: %s from unknown[%s]: %s%s",
            stage,
            client,
            text,
            f"; {detail}" if detail else "",
        )

    # ----- stress mode ------------------------------------------------------------------

    def _stress_level(self, stressed: bool) -> float:
        smtp = self.config.smtp
        level = smtp.stress_threshold * smtp.max_connections
        return level * _STRESS_HYSTERESIS if stressed else level

    def check_stress(self) -> None:
        """Once a second: forget dead workers' connections, enter or leave stress mode."""
        self.counter.sweep()
        total = self.counter.total()
        if self.stressed != (total >= self._stress_level(self.stressed)):
            self._set_stress(not self.stressed, total)

    def _set_stress(self, on: bool, total: int) -> None:
        smtp = self.config.smtp
        self.stressed = on
        stress = smtp.stress_timeout
        self.idle_timeout = min(stress, smtp.idle_timeout) if on else smtp.idle_timeout
        self.command_timeout = min(stress, smtp.command_timeout) if on else smtp.command_timeout
        metrics.SMTPD_STRESS.set(1 if on else 0)
        log.warning(
            "%s stress mode: %d of %d connections on this node; timeouts: idle %gs, command %gs",
            "entering" if on else "leaving",
            total,
            smtp.max_connections,
            self.idle_timeout,
            self.command_timeout,
        )
        for protocol in list(self.connections):
            protocol.rearm_timer()  # the new deadlines apply to every session at once

    # ----- SMTP AUTH ------------------------------------------------------------------------

    def auth_succeeded(self, client_ip: str, request: AuthRequest) -> None:
        metrics.AUTH_SUCCESSES.labels(request.mechanism).inc()
        log.info(
            "client=unknown[%s], sasl_method=%s, sasl_username=%s",
            client_ip,
            request.mechanism,
            for_log(request.username[:_MAX_LOGGED_USERNAME]),
        )

    def auth_failed(self, client_ip: str, request: AuthRequest) -> None:
        """Count and log a failed AUTH as Postfix does (never the password)."""
        metrics.AUTH_FAILURES.labels(request.mechanism).inc()
        self.count_reject("auth_failed")
        log.warning(
            "warning: unknown[%s]: SASL %s authentication failed: sasl_username=%s",
            client_ip,
            request.mechanism,
            for_log(request.username[:_MAX_LOGGED_USERNAME]),
        )

    def message_received(self, envelope: Envelope) -> None:
        log.info(
            "%s: from=<%s>, size=%d, nrcpt=%d, client=[%s] (queued)",
            envelope.queue_id,
            for_log(envelope.sender),  # client text: no forged log lines
            envelope.size,
            len(envelope.recipients),
            envelope.client_address,
            extra={
                "queue_id": envelope.queue_id,
                "from": for_log(envelope.sender),
                "size": envelope.size,
                "nrcpt": len(envelope.recipients),
                "client": envelope.client_address,
            },
        )
        self.stats.received += 1
        self.stats.received_bytes += envelope.size

    def count_reject(self, reason: str) -> None:
        self.stats.rejects[reason] = self.stats.rejects.get(reason, 0) + 1

    def mail_refused_for_space(self, client_ip: str, sender: str, declared: int) -> None:
        """Count a MAIL refused with 452 4.3.1, and log it as Postfix does (at most
        :class:`LogBudget`'s lines a second; the metric counts every one)."""
        self.count_reject("insufficient_storage")
        held = self.refusal_log.take(self.loop.time())
        if held is None:
            return
        log.warning(
            "NOQUEUE: reject: MAIL from [%s]: 452 4.3.1 Insufficient system storage; "
            "from=<%s> size=%d: %s%s",
            client_ip,
            sender,
            declared,
            self.space.describe(declared),
            f" ({held} more such refusals not logged)" if held else "",
        )

    def publish_stats(self) -> None:
        """Move the hot path's plain counters and the committer's flush count into
        Prometheus (called once a second)."""
        live = [p.session.reply_counts for p in self.connections]
        self.stats.publish(live, self.committer.batches)

    def begin_shutdown(self) -> None:
        self.shutting_down = True
        for protocol in list(self.connections):
            protocol.shutdown()
