"""Which recipients exist at the domains we accept mail for (Postfix's
relay_recipient_maps / local_recipient_maps).

A recipient at an accepted domain that is not listed is refused at RCPT with ``550 5.1.1``,
never accepted and bounced later: a bounce would go to a forged sender (backscatter).

The table file has one entry per line: ``user@domain`` (that address) or ``@domain``
(every local part at that domain); ``#`` comment lines and blank lines are ignored; case
does not matter, nor does a trailing dot.  ``"any"`` in the configuration instead of a
path accepts every local part (the operator said so explicitly).  ``postmaster`` is always
valid at every accepted domain (RFC 5321 §4.5.1).
"""

from __future__ import annotations

from mta.policy.access import TableError

__all__ = ["ANY", "RecipientTable", "load_recipients", "parse_recipients"]

ANY = "any"


class RecipientTable:
    def __init__(self, addresses: frozenset[str], domains: frozenset[str], any_: bool) -> None:
        self.addresses = addresses
        self.domains = domains
        self.any = any_

    @classmethod
    def accepting_any(cls) -> RecipientTable:
        return cls(frozenset(), frozenset(), True)

    def __len__(self) -> int:
        return len(self.addresses) + len(self.domains)

    def knows(self, recipient: str) -> bool:
        """Is ``recipient`` (an address at an accepted domain) a valid one?"""
        if self.any:
            return True
        local, _, domain = recipient.rpartition("@")
        domain = domain.lower().rstrip(".")
        if domain in self.domains or local.lower() == "postmaster":
            return True
        return f"{local.lower()}@{domain}" in self.addresses


def parse_recipients(text: str, source: str) -> RecipientTable:
    addresses: set[str] = set()
    domains: set[str] = set()
    for number, line in enumerate(text.splitlines(), 1):
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        local, at, domain = entry.lower().rstrip(".").rpartition("@")
        if not at or not domain or " " in entry or "\t" in entry:
            raise TableError(f"{source}, line {number}: {entry!r}: not user@domain or @domain")
        if local:
            addresses.add(f"{local}@{domain}")
        else:
            domains.add(domain)
    return RecipientTable(frozenset(addresses), frozenset(domains), False)


def load_recipients(path: str) -> RecipientTable:
    """The table named by ``relay.recipients``: "any", or a file; TableError if bad."""
    if path == ANY:
        return RecipientTable.accepting_any()
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise TableError(f"{path}: cannot read: {exc}") from None
    return parse_recipients(text, path)
