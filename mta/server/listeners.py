"""What sessions on one listener share, built once per worker: the listener's session limits
(its TLS and AUTH rules), its DATA leniency, its TLS context and who may send it a PROXY
header.

The master binds the addresses of every listener in :meth:`Config.listen_addresses` order,
and each smtpd worker gets its sockets in that order; :func:`pair_sockets` matches them up
again.  Building the states loads every certificate, so a file that cannot be loaded stops
the worker (ConfigError) before it serves anything.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass

from mta.config import Config, Listener
from mta.protocol.session import SessionLimits
from mta.server.leniency import DataLeniency
from mta.server.policy import Network
from mta.server.tls import server_context

__all__ = ["ListenerState", "listener_states", "pair_sockets"]


@dataclass(eq=False, slots=True)
class ListenerState:
    listener: Listener
    limits: SessionLimits  # the strict ones; leniency gives each client its own
    leniency: DataLeniency
    tls: ssl.SSLContext | None  # STARTTLS or implicit TLS; None: no TLS here
    proxy_networks: tuple[Network, ...]  # who may send a PROXY header (smtp.proxy_networks)

    @property
    def name(self) -> str:
        return self.listener.name

    @property
    def implicit_tls(self) -> bool:
        return self.listener.tls == "implicit"


def listener_states(
    config: Config, session_limits: Callable[[Config, Listener], SessionLimits]
) -> list[ListenerState]:
    """A state for every listener, in order (``session_limits`` makes a listener's limits:
    ``mta.server.context.session_limits``); ConfigError if a certificate cannot be loaded."""
    networks = tuple(ipaddress.ip_network(n, strict=False) for n in config.smtp.proxy_networks)
    states = []
    for listener in config.resolved_listeners():
        limits = session_limits(config, listener)
        states.append(
            ListenerState(
                listener=listener,
                limits=limits,
                leniency=DataLeniency(limits, config.smtp.normalize_networks),
                tls=server_context(config, listener),
                proxy_networks=networks if listener.proxy_protocol else (),
            )
        )
    return states


def pair_sockets(
    states: list[ListenerState], sockets: list[socket.socket]
) -> list[tuple[socket.socket, ListenerState]]:
    """Each socket with the listener whose address it was bound to (same order)."""
    owners = [state for state in states for _ in state.listener.listen]
    if len(owners) != len(sockets):
        raise ValueError(f"{len(sockets)} sockets for {len(owners)} listening addresses")
    return list(zip(sockets, owners, strict=True))
