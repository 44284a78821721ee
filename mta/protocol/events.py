"""Events the server session hands to the I/O layer.

Events marked *decision* leave the session waiting: it processes no further input until the
server calls :meth:`ServerSession.accept` or :meth:`ServerSession.reject`.  That is how
policy (relay control) and the asynchronous durable commit fit a sans-I/O core while
pipelined replies keep their order.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True, frozen=True)
class MailFrom:
    """*Decision*: the client opened a transaction (``sender`` is ``""`` for ``<>``)."""

    sender: str
    params: dict[str, str | None] = field(default_factory=dict)


@dataclass(slots=True, frozen=True)
class RcptTo:
    """*Decision*: the client named a recipient; the server applies relay policy."""

    recipient: str
    params: dict[str, str | None] = field(default_factory=dict)


@dataclass(slots=True, frozen=True)
class DataStart:
    """*Decision*: the client sent DATA; accept means ``354`` and chunks will follow."""


@dataclass(slots=True, frozen=True)
class DataChunk:
    """Decoded message bytes (dot-unstuffed) to append to the message being received."""

    data: bytes


@dataclass(slots=True, frozen=True)
class DataEnd:
    """*Decision*: the message is complete and within limits; make it durable, then accept."""

    size: int


@dataclass(slots=True, frozen=True)
class DataAborted:
    """The message was refused by the session itself (``reason``); discard what was kept."""

    reason: str  # "too_big" | "bare_line_ending" | "nul" | "connection_lost"


@dataclass(slots=True, frozen=True)
class StartTls:
    """*Decision*: the client asked for TLS; accept means ``220``, then the server must
    start the handshake before it feeds any further bytes."""


@dataclass(slots=True, frozen=True)
class AuthRequest:
    """*Decision*: the client gave credentials with AUTH (RFC 4954); accept means ``235``
    and the session is authenticated as ``username``, reject answers the server's reply
    (``535``, or ``421`` which closes the session).  ``authzid`` is the identity to act
    as (PLAIN's, RFC 4616), "" for none.  The password is kept out of ``repr``."""

    mechanism: str  # "PLAIN" | "LOGIN"
    authzid: str
    username: str
    password: str = field(repr=False)


@dataclass(slots=True, frozen=True)
class TransactionReset:
    """RSET, HELO/EHLO or a failed transaction dropped the sender and recipients."""


Event = (
    MailFrom
    | RcptTo
    | DataStart
    | DataChunk
    | DataEnd
    | DataAborted
    | StartTls
    | AuthRequest
    | TransactionReset
)
