"""The RCPT stage: one pure function of the session's facts and the loaded tables.

Like Postfix with its default ``smtpd_delay_reject = yes``, the client, HELO and sender
checks are made at RCPT, not when those arrive: the client learns which recipient was
refused and why, and every check sees the whole picture.  The order is Postfix's
``smtpd_recipient_restrictions`` written out:

1. access tables: client, HELO, sender, recipient (``check_*_access``).  REJECT / DEFER /
   ``4NN``/``5NN`` refuse; HOLD marks the message and goes on; OK and DISCARD end the
   access checks and skip the DNSBL (a whitelist) -- but never permit relaying: relay
   control below always applies (Postfix ≥ 2.10 evaluates ``smtpd_relay_restrictions``
   apart, so an access table's OK cannot make an open relay; neither can it here);
2. relay control: clients in ``relay.networks`` and authenticated clients may send
   anywhere (``permit_mynetworks``, ``permit_sasl_authenticated``); everyone else only to
   the accepted domains and ``postmaster`` (``reject_unauth_destination``), and not with
   routing in the local part (``%``, ``!``, ``@`` in a quoted part: the percent hack,
   bang paths; Postfix's ``allow_untrusted_routing = no``);
3. DNSBL (``reject_rbl_client``), for clients not permitted above;
4. recipient validation (``smtpd_reject_unlisted_recipient``): a recipient at an accepted
   domain must be in ``relay.recipients`` -- for every client, as in Postfix.

The verdict carries the reply, the reason counted in ``mta_smtpd_rejects_total`` and, for
HOLD / DISCARD, what happens to the message.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple

from mta.policy.access import Action, Kind
from mta.policy.tables import PolicyTables

__all__ = ["Facts", "Verdict", "destination_is_ours", "recipient_stage", "routed_local_part"]

_ROUTING = frozenset("%!@")  # routing operators in a local part (RFC 1123 §5.2.16, UUCP)
_Hit = tuple[Action, str, str, str]  # an access table's action, key, wording, reason


class Facts(NamedTuple):
    """What the session knows when a RCPT arrives (a tuple: made for every RCPT)."""

    client_ip: str  # as relay control sees it (from PROXY, or the socket)
    helo: str
    sender: str  # "" for <>
    recipient: str
    trusted_network: bool  # the client is in relay.networks
    authenticated: str | None = None  # the AUTH identity, if any: it may relay
    dnsbl_zone: str | None = None  # the blocklist that lists the client, if any


@dataclass(frozen=True, slots=True)
class Verdict:
    """The answer to one RCPT: ``reply`` None accepts (with the default 250)."""

    reply: bytes | None = None
    reason: str = ""  # a refusal's reason (metrics label), or "hold" / "discard"
    hold: bool = False  # accepted, and the message is put on hold
    discard: bool = False  # accepted, and the message is dropped after DATA
    note: str = ""  # for HOLD / DISCARD: the log text (Postfix's "triggers HOLD action")

    @property
    def accepted(self) -> bool:
        return self.reply is None


ACCEPT = Verdict()


def _refusal(text: str, reason: str) -> Verdict:
    return Verdict(reply=f"{text}\r\n".encode("utf-8", "replace"), reason=reason)


def recipient_stage(facts: Facts, tables: PolicyTables) -> Verdict:
    """Decide one RCPT (see the module docstring for the order)."""
    hold = discard = permitted = False
    note = ""
    hits = _access_lookups(facts, tables) if tables.has_access else ()
    for action, key, what, reason in hits:
        kind = action.kind
        if kind is Kind.REJECT or kind is Kind.DEFER:
            return _refusal(action.reply_text(key, what), reason)
        if kind is Kind.HOLD:
            hold = True
            note = note or f"<{key}>: {what} triggers HOLD action"
            continue
        if kind is Kind.DISCARD:
            discard = True
            note = f"<{key}>: {what} triggers DISCARD action"
        permitted = True  # OK or DISCARD: the other access checks are skipped
        break
    may_relay = facts.trusted_network or facts.authenticated is not None
    recipient = facts.recipient
    if not may_relay and not destination_is_ours(recipient, tables.accepted_domains):
        return _refusal(f"554 5.7.1 <{recipient}>: Relay access denied", "relay_denied")
    if not (may_relay or permitted) and facts.dnsbl_zone:
        return _refusal(
            f"554 5.7.1 Service unavailable; Client host [{facts.client_ip}] blocked using "
            f"{facts.dnsbl_zone}",
            "dnsbl",
        )
    if not _recipient_known(recipient, tables):
        return _refusal(
            f"550 5.1.1 <{recipient}>: Recipient address rejected: User unknown in relay "
            "recipient table",
            "unknown_recipient",
        )
    if hold or discard:
        return Verdict(
            hold=hold, discard=discard, reason="discard" if discard else "hold", note=note
        )
    return ACCEPT


def _access_lookups(facts: Facts, tables: PolicyTables) -> Iterator[_Hit]:
    """The access tables' answers, in order, each with the key and wording of its reply;
    an empty table (the common case) costs one truth test."""
    if tables.client and (action := tables.client.client(facts.client_ip)) is not None:
        yield action, f"unknown[{facts.client_ip}]", "Client host", "access_client"
    if tables.helo and (action := tables.helo.helo(facts.helo)) is not None:
        yield action, facts.helo, "Helo command", "access_helo"
    if tables.sender and (action := tables.sender.address(facts.sender)) is not None:
        yield action, facts.sender, "Sender address", "access_sender"
    if tables.recipient and (action := tables.recipient.address(facts.recipient)) is not None:
        yield action, facts.recipient, "Recipient address", "access_recipient"


def _recipient_known(recipient: str, tables: PolicyTables) -> bool:
    at = recipient.rfind("@")
    if at < 0:
        return True  # "postmaster" (RFC 5321 §4.5.1); nothing else gets here without @
    if recipient[at + 1 :].lower().rstrip(".") not in tables.accepted_domains:
        return True  # not ours to validate: relayed for a trusted client
    return tables.recipients.knows(recipient)


def routed_local_part(local: str) -> bool:
    """Does a local part carry routing (``user%host``, ``host!user``, ``"user@host"``)?
    Quotes and backslash escapes are undone first, as Postfix's resolver does."""
    if local.startswith('"') and local.endswith('"') and len(local) >= 2:
        local = local[1:-1].replace("\\\\", "\0").replace("\\", "").replace("\0", "\\")
    return not _ROUTING.isdisjoint(local)


def destination_is_ours(recipient: str, domains: frozenset[str]) -> bool:
    """May anyone send mail to ``recipient``?  ``postmaster`` without a domain, and any
    address at an accepted domain whose local part does not route elsewhere; an address
    literal (``user@[192.0.2.1]``) never is, unless listed as such."""
    local, at, domain = recipient.rpartition("@")
    if not at:
        return recipient.lower() == "postmaster"
    if domain.lower().rstrip(".") not in domains:
        return False
    return not routed_local_part(local)
