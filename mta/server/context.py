"""What every connection of one smtpd worker shares: configuration, spool, committer, policy.

It also keeps the worker's bookkeeping (open connections, shutdown) and is the one place
where the receive path reports to logs and metrics, so the protocol code stays about SMTP.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from mta import metrics
from mta.config import Config
from mta.protocol.session import SessionLimits
from mta.queue.commit import GroupCommitter
from mta.queue.envelope import Envelope
from mta.queue.spool import Spool
from mta.server.policy import RelayPolicy

if TYPE_CHECKING:
    from mta.server.smtpd import SMTPProtocol

__all__ = ["WorkerContext", "session_limits"]

log = logging.getLogger("mta.smtpd")


def session_limits(config: Config) -> SessionLimits:
    smtp = config.smtp
    return SessionLimits(
        hostname=config.fqdn,
        max_message_size=smtp.max_message_size,
        max_recipients=smtp.max_recipients,
        max_line_length=smtp.max_line_length,
        max_errors=smtp.max_errors,
        normalize_bare_line_endings=smtp.bare_lf == "normalize",
    )


@dataclass(eq=False)
class WorkerContext:
    config: Config
    spool: Spool
    committer: GroupCommitter
    loop: asyncio.AbstractEventLoop
    limits: SessionLimits = field(init=False)
    policy: RelayPolicy = field(init=False)
    connections: set[SMTPProtocol] = field(default_factory=set)
    shutting_down: bool = False

    def __post_init__(self) -> None:
        self.limits = session_limits(self.config)
        relay = self.config.relay
        local = (*relay.domains, *self.config.routes, *self.config.delivery.local_domains)
        self.policy = RelayPolicy(relay.networks, local)

    def connection_opened(self, protocol: SMTPProtocol) -> None:
        self.connections.add(protocol)
        metrics.CONNECTIONS_OPENED.inc()
        metrics.CONNECTIONS_CURRENT.inc()

    def connection_closed(self, protocol: SMTPProtocol) -> None:
        self.connections.discard(protocol)
        metrics.CONNECTIONS_CURRENT.dec()

    def message_received(self, envelope: Envelope) -> None:
        log.info(
            "%s: from=<%s>, size=%d, nrcpt=%d, client=[%s] (queued)",
            envelope.queue_id,
            envelope.sender,
            envelope.size,
            len(envelope.recipients),
            envelope.client_address,
        )
        metrics.MESSAGES_RECEIVED.inc()
        metrics.BYTES_RECEIVED.inc(envelope.size)

    def count_reject(self, reason: str) -> None:
        metrics.REJECTS.labels(reason).inc()

    def count_replies(self, out: bytes) -> None:
        """Count replies by class: each line that starts a reply ("250 " not "250-")."""
        for line in out.split(b"\r\n"):
            if len(line) > 3 and line[3] == 0x20:
                metrics.REPLIES.labels(chr(line[0]) + "xx").inc()

    def begin_shutdown(self) -> None:
        self.shutting_down = True
        for protocol in list(self.connections):
            protocol.shutdown()
