"""Per-recipient delivery results, classified once at the boundary (as chasquid does).

``sent`` — the next hop took responsibility (2xx); ``deferred`` — try again later (4xx,
timeouts, refused connections, DNS trouble); ``failed`` — permanent (5xx, null MX,
NXDOMAIN): the sender gets a bounce.

A delivery agent makes them, the queue manager applies them: the type both share lives here,
in the library below both daemons.
"""

from __future__ import annotations

from typing import Literal

import msgspec

__all__ = ["RecipientResult", "Status"]

Status = Literal["sent", "deferred", "failed"]


class RecipientResult(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    address: str
    status: Status
    dsn: str  # enhanced status code, "2.0.0"
    reply: str  # what the next hop said, or what went wrong, for logs and DSNs
    relay: str = "none"  # "host[ip]:port" or "local"/"discard"
    remote_mta: str = ""  # the host name that answered, for Remote-MTA in a DSN
    tls: str = ""  # outbound TLS: "none", "TLSv1.3 unverified", "TLSv1.3 verified"; "": n/a
    # RFC 3461 §5.2: the next hop offered DSN and was given the recipient's DSN parameters,
    # so notifying the sender of success is its job, not ours
    dsn_passed: bool = False
    # a success notice is due (NOTIFY had SUCCESS): "delivered" (final delivery: maildir,
    # LMTP) or "relayed" (a next hop without DSN); "" for none
    success_action: str = ""
