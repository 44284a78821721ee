"""What a message asks of its transport: REQUIRETLS, ``TLS-Required: No`` and SMTPUTF8.

Decided once per delivery attempt from the envelope and the header section; the delivery
code asks these functions and never parses the header itself.

REQUIRETLS (RFC 8689 §4.2.1): a message whose envelope carries the ``REQUIRETLS`` MAIL
parameter goes only over TLS whose peer is authenticated — the ``verify`` level (a
``[tls_policy]`` entry, a smarthost we authenticate to, or MTA-STS ``enforce``) or ``dane``
with usable TLSA records — and only to a server that offers REQUIRETLS (the client session
checks that and passes the parameter on).  A next hop whose policy is weaker is raised: a
configured host (a relayhost or route, no MX lookup) to ``verify`` of its name; an MX next
hop cannot be raised (RFC 8689 §4.2.1 steps 1-2 want DNSSEC or MTA-STS for the MX lookup,
which only DANE and MTA-STS give), so its recipients fail with ``5.7.30`` "REQUIRETLS
support required".  A failed handshake or a certificate that does not verify stays
temporary (``4.7.5``, retried as any TLS failure), as the RFC's §5 leaves temporary
failures to the usual retries.

``TLS-Required: No`` (RFC 8689 §4.2.2, §5): the sender asks that recipient-side policy
(DANE, MTA-STS, a ``verify`` entry) not stop delivery: the message is sent under ``may``
(STARTTLS when offered, no certificate check), except to a hop we authenticate to (our
password still goes only to a proven name: local policy, which the RFC allows).  The header
field is ignored when the envelope has REQUIRETLS (RFC 8689 §4.1: REQUIRETLS wins).

SMTPUTF8 (RFC 6531 §3.2): a message needs it when the client asked for it and the envelope
addresses or the header section are not ASCII; a message sent with SMTPUTF8 whose addresses
and header are all ASCII may go to a server without it (Postfix's
``smtputf8_autodetect_classes`` reasoning: nothing in it needs the extension).
"""

from __future__ import annotations

import re

from mta.delivery.results import DeliveryError
from mta.delivery.routing import NextHop
from mta.delivery.tls_policy import TlsPolicy
from mta.queue.envelope import Envelope

__all__ = [
    "REQUIRETLS_DSN",
    "authenticated",
    "needs_smtputf8",
    "required_policy",
    "requires_tls",
    "tls_optional",
]

REQUIRETLS_DSN = "5.7.30"  # RFC 8689 §6: "REQUIRETLS support required"

# RFC 8689 §3: TLS-Required: No (the only value), case-insensitive, folding allowed.  The
# field is rare: a cheap search for its name first (a sixth of the full pattern's cost,
# which runs for every message delivered).
_TLS_REQUIRED = re.compile(rb"(?i)(?:\A|\n)tls-required[ \t]*:")
_TLS_REQUIRED_NO = re.compile(rb"(?im)^tls-required[ \t]*:[ \t\r\n]*no[ \t]*\r?$")


def requires_tls(envelope: Envelope) -> bool:
    """The message was received with ``MAIL FROM:<...> REQUIRETLS``."""
    return "REQUIRETLS" in envelope.mail_params


def tls_optional(envelope: Envelope, header: bytes) -> bool:
    """``TLS-Required: No`` in the header section, and no REQUIRETLS (which wins)."""
    if _TLS_REQUIRED.search(header) is None or requires_tls(envelope):
        return False
    return _TLS_REQUIRED_NO.search(header) is not None


def needs_smtputf8(envelope: Envelope, header: bytes) -> bool:
    """SMTPUTF8 was asked for and something in the envelope or header is not ASCII."""
    if not envelope.smtputf8:
        return False
    if not envelope.sender.isascii() or not header.isascii():
        return True
    return any(not r.address.isascii() for r in envelope.recipients)


def authenticated(policy: TlsPolicy) -> bool:
    """Whether a connection under ``policy`` authenticates its peer (PKIX or DANE)."""
    return policy.verified or (policy.level == "dane" and bool(policy.tlsa))


def required_policy(policy: TlsPolicy, nexthop: NextHop, host: str) -> TlsPolicy:
    """The policy for a REQUIRETLS message to ``host``: ``policy`` when it authenticates
    the peer, ``verify`` of the host's name for a configured host; raises a permanent
    :class:`DeliveryError` (5.7.30) for an MX host without DANE or MTA-STS."""
    if authenticated(policy):
        return policy
    if not nexthop.mx:
        names = dict.fromkeys([host.lower().rstrip("."), nexthop.target.lower().rstrip(".")])
        return TlsPolicy("verify", tuple(names), min_version=policy.min_version)
    raise DeliveryError(
        True,
        REQUIRETLS_DSN,
        f"REQUIRETLS support required: no DANE or MTA-STS policy authenticates {host}",
    )
