"""Which DATA checks a client gets: strict, or normalised for ``smtp.normalize_networks``.

By default a bare CR/LF or a NUL in DATA rejects the message (``smtp.bare_lf``,
``smtp.nul``).  Old senders on the inside that cannot be fixed can be listed in
``smtp.normalize_networks``: their messages are normalised instead (bare line endings
become CRLF, NULs are dropped), as Postfix's ``smtpd_forbid_bare_newline_exclusions``
does.  Normalising is safe for smuggling: the terminator is found on the raw input before
anything is changed, and a line of a lone dot that normalising makes is dot-stuffed again
when the message is sent on.

An address that is not an IP address (a UNIX socket, a test) is never in a network.
"""

from __future__ import annotations

import dataclasses
import ipaddress

from mta.protocol.session import SessionLimits
from mta.server.policy import in_networks

__all__ = ["DataLeniency"]

_CACHE_SIZE = 10_000  # client addresses remembered; a bound, not a tuning knob


class DataLeniency:
    """Gives each client address its session limits: ``strict`` or the lenient copy."""

    def __init__(self, strict: SessionLimits, networks: tuple[str, ...]) -> None:
        self.strict = strict
        self.lenient = dataclasses.replace(strict, normalize_bare_line_endings=True, strip_nul=True)
        self._networks = [ipaddress.ip_network(n, strict=False) for n in networks]
        self._cache: dict[str, SessionLimits] = {}

    def limits_for(self, client_ip: str) -> SessionLimits:
        if not self._networks:
            return self.strict
        limits = self._cache.get(client_ip)
        if limits is None:
            limits = self.lenient if self._listed(client_ip) else self.strict
            if len(self._cache) < _CACHE_SIZE:
                self._cache[client_ip] = limits
        return limits

    def _listed(self, client_ip: str) -> bool:
        return in_networks(client_ip, self._networks)
