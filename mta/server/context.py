"""What every connection of one smtpd worker shares: configuration, parser backend, spool,
committer, policy.

It also keeps the worker's bookkeeping (open connections, shutdown, counters) and is the one
place where the receive path reports to logs and metrics, so the protocol code stays about
SMTP.  The worker makes one; a test can make one around a loop of its own.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from mta.config import Config
from mta.protocol.printable import for_log
from mta.protocol.session import ParserBackend, SessionLimits
from mta.queue.commit import GroupCommitter
from mta.queue.envelope import Envelope
from mta.queue.spool import Spool
from mta.server.leniency import DataLeniency
from mta.server.policy import RelayPolicy
from mta.server.stats import SmtpdStats
from mta.server.trace import DateCache

if TYPE_CHECKING:
    from mta.server.smtpd import SMTPProtocol

__all__ = ["WorkerContext", "session_limits"]

log = logging.getLogger("mta.smtpd")


def session_limits(config: Config) -> SessionLimits:
    """The session's limits, all from the configuration (the one owner of their defaults)."""
    smtp = config.smtp
    return SessionLimits(
        starttls=bool(smtp.tls_cert),
        hostname=config.fqdn,
        max_message_size=smtp.max_message_size,
        max_recipients=smtp.max_recipients,
        max_line_length=smtp.max_line_length,
        max_errors=smtp.max_errors,
        normalize_bare_line_endings=smtp.bare_lf == "normalize",
        strip_nul=smtp.nul == "strip",
    )


@dataclass(eq=False)
class WorkerContext:
    config: Config
    spool: Spool
    committer: GroupCommitter
    loop: asyncio.AbstractEventLoop
    parser: ParserBackend  # chosen once per process (mta.parser_backend.select)
    limits: SessionLimits = field(init=False)
    policy: RelayPolicy = field(init=False)
    leniency: DataLeniency = field(init=False)  # per-client limits (smtp.normalize_networks)
    connections: set[SMTPProtocol] = field(default_factory=set)
    stats: SmtpdStats = field(default_factory=lambda: SmtpdStats())
    dates: DateCache = field(default_factory=DateCache)  # for Received: headers
    tls: ssl.SSLContext | None = None
    shutting_down: bool = False

    def __post_init__(self) -> None:
        self.limits = session_limits(self.config)
        self.leniency = DataLeniency(self.limits, self.config.smtp.normalize_networks)
        relay = self.config.relay
        local = (*relay.domains, *self.config.routes, *self.config.delivery.local_domains)
        self.policy = RelayPolicy(relay.networks, local)
        smtp = self.config.smtp
        if smtp.tls_cert:
            self.tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self.tls.load_cert_chain(smtp.tls_cert, smtp.tls_key)

    def connection_opened(self, protocol: SMTPProtocol) -> None:
        self.connections.add(protocol)
        self.stats.opened += 1

    def connection_closed(self, protocol: SMTPProtocol) -> None:
        self.connections.discard(protocol)
        self.stats.session_closed(protocol.session.reply_counts)

    def message_received(self, envelope: Envelope) -> None:
        log.info(
            "%s: from=<%s>, size=%d, nrcpt=%d, client=[%s] (queued)",
            envelope.queue_id,
            for_log(envelope.sender),  # client text: no forged log lines
            envelope.size,
            len(envelope.recipients),
            envelope.client_address,
        )
        self.stats.received += 1
        self.stats.received_bytes += envelope.size

    def count_reject(self, reason: str) -> None:
        self.stats.rejects[reason] = self.stats.rejects.get(reason, 0) + 1

    def publish_stats(self) -> None:
        """Move the hot path's plain counters and the committer's flush count into
        Prometheus (called once a second)."""
        live = [p.session.reply_counts for p in self.connections]
        self.stats.publish(live, self.committer.batches)

    def begin_shutdown(self) -> None:
        self.shutting_down = True
        for protocol in list(self.connections):
            protocol.shutdown()
