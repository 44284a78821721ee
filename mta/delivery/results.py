"""Per-recipient delivery results, classified once at the boundary (as chasquid does).

``sent`` — the next hop took responsibility (2xx); ``deferred`` — try again later (4xx,
timeouts, refused connections, DNS trouble); ``failed`` — permanent (5xx, null MX,
NXDOMAIN): the sender gets a bounce.
"""

from __future__ import annotations

from typing import Literal

import msgspec

__all__ = ["DeliveryError", "RecipientResult", "Status"]

Status = Literal["sent", "deferred", "failed"]


class RecipientResult(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    address: str
    status: Status
    dsn: str  # enhanced status code, "2.0.0"
    reply: str  # what the next hop said, or what went wrong, for logs and DSNs
    relay: str = "none"  # "host[ip]:port" or "local"/"discard"
    remote_mta: str = ""  # the host name that answered, for Remote-MTA in a DSN


class DeliveryError(Exception):
    """A destination could not be reached or refused as a whole."""

    def __init__(self, permanent: bool, dsn: str, reply: str, relay: str = "none") -> None:
        super().__init__(reply)
        self.permanent = permanent
        self.dsn = dsn
        self.reply = reply
        self.relay = relay

    def result_for(self, address: str) -> RecipientResult:
        return RecipientResult(
            address=address,
            status="failed" if self.permanent else "deferred",
            dsn=self.dsn,
            reply=self.reply,
            relay=self.relay,
        )
