"""Events the client session hands to the I/O layer, and what a transaction carries.

The client twin of :mod:`mta.protocol.events`.  Every event is something the session has
decided from the server's replies; the I/O layer acts on it (start TLS, give up on this
server, report per-recipient outcomes) and never looks at a reply code itself.

These are msgspec Structs rather than dataclasses, like :class:`~mta.protocol.client.Reply`:
a transaction makes a few of them, and a Struct is built in C several times faster.

The per-recipient outcome is :class:`RecipientReply` (a recipient and the reply that decided
it), a protocol-level fact.  ``mta.protocol`` imports nothing from ``mta.delivery`` or
``mta.queue``: the delivery layer turns each one into a ``RecipientResult`` with its relay
name and the status the reply class means, as it turns the other events into
``DeliveryError`` with the texts operators know from the logs.
"""

from __future__ import annotations

from collections.abc import Generator, Mapping
from dataclasses import dataclass
from typing import Literal, Protocol

import msgspec

from mta.protocol.client import Reply

__all__ = [
    "AuthFailed",
    "ClientEvent",
    "HandshakeRefused",
    "Ready",
    "RecipientReply",
    "SendMessage",
    "StartTlsNow",
    "StoredMessage",
    "Transaction",
    "TransactionDone",
    "TransactionNotSent",
]


class StoredMessage(Protocol):
    """A message too large to hold in memory, left where it is stored: the I/O layer reads
    it in chunks (:meth:`iter_message`) and feeds them to the session, which reads only its
    length.  The queue's ``MessageFile`` is one."""

    @property
    def message_length(self) -> int:
        """Octets of the message (what SIZE announces and the chunks add up to)."""
        ...

    def iter_message(self, chunk_size: int) -> Generator[bytes, None, None]:
        """The message in chunks of at most ``chunk_size`` octets (I/O: the caller's)."""
        ...


@dataclass(frozen=True, slots=True)
class Transaction:
    """One message for one server: the envelope and the message as it is to be sent
    (not yet dot-stuffed): in memory, or stored (sent in chunks after :class:`SendMessage`)."""

    sender: str
    recipients: list[str]
    message: bytes | StoredMessage
    eight_bit: bool = False  # the body is 8BITMIME (RFC 6152)
    smtputf8: bool = False  # the envelope or header needs SMTPUTF8 (RFC 6531)
    # DSN parameters (RFC 3461 §4), said only to a server that offers DSN: " RET=.. ENVID=.."
    # for MAIL, and " NOTIFY=.. ORCPT=.." by recipient for RCPT (mta.protocol.dsn_params)
    mail_dsn: str = ""
    rcpt_dsn: Mapping[str, str] | None = None
    require_tls: bool = False  # REQUIRETLS (RFC 8689): only over TLS, to a server offering it
    tls_optional: bool = False  # "TLS-Required: No" (RFC 8689 §4.2.2): the delivery's concern


class RecipientReply(msgspec.Struct, frozen=True, gc=False):
    """One recipient's outcome: the reply that decided it (to RCPT, MAIL, DATA or the
    message; for LMTP the recipient's own reply after the message, RFC 2033 §4.2)."""

    recipient: str
    reply: Reply


class Ready(msgspec.Struct, frozen=True, gc=False):
    """The greeting and EHLO/HELO (and STARTTLS, if it happened) are done: the connection
    can carry transactions."""

    tls: bool
    esmtp: bool
    auth: str = ""  # the SASL mechanism we authenticated with, "" for none (RFC 4954)


class StartTlsNow(msgspec.Struct, frozen=True, gc=False):
    """The server said ``220`` to STARTTLS: do the TLS handshake now, then call
    :meth:`ClientSession.tls_started` (which says EHLO again, RFC 3207 §4.2)."""


class SendMessage(msgspec.Struct, frozen=True, gc=False):
    """The server said ``354`` to a transaction whose message is stored: send it now, each
    chunk through :meth:`ClientSession.message_data` as the transport takes more, then
    :meth:`ClientSession.end_message`; the session then waits for the final reply."""


class HandshakeRefused(msgspec.Struct, frozen=True, gc=False):
    """The server will not talk to us: a greeting other than ``220``, or a refused LHLO
    or HELO.  The session is closed; try another server."""

    stage: Literal["greeting", "lhlo", "helo"]
    reply: Reply


class AuthFailed(msgspec.Struct, frozen=True, gc=False):
    """We have credentials for this server and could not authenticate (RFC 4954): the
    session is closed before any transaction.  ``reason``: ``refused`` (the server's
    ``reply`` to AUTH or to a LOGIN answer, a ``535`` say), ``no_tls`` (the server offers
    AUTH but the connection is not encrypted: the password is never sent in clear), or
    ``no_mechanism`` (neither PLAIN nor LOGIN is offered; ``reply`` is the EHLO reply)."""

    reason: Literal["refused", "no_tls", "no_mechanism"]
    mechanism: str  # "PLAIN" | "LOGIN", "" when none was tried
    reply: Reply | None = None  # for "refused": the server's refusal


class TransactionDone(msgspec.Struct, frozen=True, gc=False):
    """Every recipient of the transaction, in order, with the reply that decided it."""

    outcomes: list[RecipientReply]


class TransactionNotSent(msgspec.Struct, frozen=True, gc=False):
    """The transaction was not started: the server cannot take it as it is (its SIZE
    limit, RFC 1870 §6; no SMTPUTF8, RFC 6531 §3.4; a REQUIRETLS message and no TLS or no
    REQUIRETLS offered, RFC 8689 §4.2.1).  All are permanent."""

    reason: Literal["size", "smtputf8", "requiretls"]
    size: int  # octets of the message
    limit: int | None  # the server's SIZE limit, for reason "size"


ClientEvent = Ready | StartTlsNow | HandshakeRefused | AuthFailed | SendMessage | TransactionDone
