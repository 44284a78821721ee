"""Outbound TLS policy: which security level a next hop gets, and the TLS context for it.

The levels are Postfix's (``smtp_tls_security_level``, ``smtp_tls_policy_maps``):

- ``none``: no STARTTLS;
- ``may``: STARTTLS when offered, no certificate check; a failed handshake is retried in
  plaintext on the same host once (the caller does that);
- ``encrypt``: TLS or defer (``4.7.4`` when STARTTLS is not offered, ``4.7.5`` when the
  handshake fails), no certificate check;
- ``verify``: as encrypt, and the chain must verify against ``delivery.tls_ca_file`` (or the
  system store) and a name in the certificate must match the MX host name or the next-hop
  domain (Postfix's ``smtp_tls_verify_cert_match = hostname, nexthop``);
- ``dane``/``dane-only``: DNSSEC-authenticated TLSA records of the MX host decide
  (:mod:`mta.delivery.dane`, which makes the connection's policy); without them ``dane``
  is ``may`` and ``dane-only`` defers.

The level is decided here, before connecting, from the next hop: ``[host]:port`` (a
bracketed route or relayhost), then the exact domain, then ``.parent`` entries for its
subdomains, then ``verify`` for a next hop we authenticate to (``delivery.smtp_auth_file``
has credentials for it: a password goes only to a server whose certificate proves its
name), then ``delivery.tls``.  An entry may raise the lowest TLS version for its
destination (``"encrypt protocols=>=TLSv1.3"``, Postfix's syntax); a server that cannot
speak it fails the handshake (``4.7.5`` under encrypt and verify).

``dane`` policies carry their TLSA records, MTA-STS's say where they came from
(``source``); the names to match come from the policy, not the level.  Invariants:
every context made by this module has TLS 1.2 or higher as its minimum; the SNI is the MX
host name whenever it is a name and not an address.
"""

from __future__ import annotations

import ipaddress
import ssl
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from mta.config import TlsLevel, split_tls_policy
from mta.delivery.credentials import CredentialTable
from mta.delivery.routing import NextHop

if TYPE_CHECKING:
    from mta.delivery.dane import TlsaRecord

__all__ = [
    "PolicyTable",
    "TlsLevel",
    "TlsPolicy",
    "cert_matches",
    "client_context",
]


@dataclass(frozen=True, slots=True)
class TlsPolicy:
    """What one connection must achieve: its level, and for ``verify`` the names of which
    one must match the server's certificate (lower case, no trailing dot); for ``dane``
    (made by :func:`mta.delivery.dane.dane_policy`) the usable TLSA records too."""

    level: TlsLevel = "may"
    match: tuple[str, ...] = ()
    tlsa: tuple[TlsaRecord, ...] = ()
    source: str = ""  # what decided it when not the table: "mta-sts" (in the tls= log field)
    min_version: str = "1.2"  # the lowest TLS version: "1.2" or "1.3"

    @property
    def starttls(self) -> bool:
        return self.level != "none"

    @property
    def required(self) -> bool:
        return self.level in ("encrypt", "verify", "dane", "dane-only")

    @property
    def verified(self) -> bool:
        return self.level == "verify"


def _clean(name: str) -> str:
    return name.lower().rstrip(".")


def _entry_key(key: str) -> str:
    if key.startswith("."):
        return "." + _clean(key[1:])
    return key.lower() if key.startswith("[") else _clean(key)


class PolicyTable:
    """The default level and the per-destination entries, looked up per next hop."""

    def __init__(
        self,
        default: TlsLevel,
        entries: dict[str, str],
        ca_file: str = "",
        credentials: CredentialTable | None = None,
    ) -> None:
        self.default: TlsLevel = default
        self.entries: dict[str, TlsLevel] = {}
        self.min_versions: dict[str, str] = {}  # entries that raise the lowest version
        for key, value in entries.items():
            level, minimum = split_tls_policy(value)  # the config checked the values
            self.entries[_entry_key(key)] = cast(TlsLevel, level)
            if minimum != "1.2":
                self.min_versions[_entry_key(key)] = minimum
        self.ca_file = ca_file
        self.credentials = credentials
        self._contexts: dict[tuple[bool, str], ssl.SSLContext] = {}

    def level(self, target: str, port: int, mx: bool) -> TlsLevel:
        """The level for a next hop: ``target`` is the domain (``mx``) or the host."""
        key = self._entry_for(target, port, mx)
        if key is not None:
            return self.entries[key]
        credentials = self.credentials
        if credentials is not None and NextHop("smtp", target, port, mx) in credentials:
            return "verify"  # an authenticated hop: the password only to a proven name
        return self.default

    def _entry_for(self, target: str, port: int, mx: bool) -> str | None:
        """The key of the entry that applies to a next hop, None if none does."""
        entries = self.entries
        if not mx:
            key = f"[{_clean(target)}]:{port}"
            if key in entries:
                return key
        name = _clean(target)
        if name in entries:
            return name
        labels = name.split(".")
        for i in range(1, len(labels)):
            key = "." + ".".join(labels[i:])
            if key in entries:
                return key
        return None

    def has_entry(self, domain: str) -> bool:
        """Whether an entry names ``domain`` or a parent of it (an MTA-STS policy yields)."""
        labels = _clean(domain).split(".")
        names = [".".join(labels)] + ["." + ".".join(labels[i:]) for i in range(1, len(labels))]
        return any(name in self.entries for name in names)

    def policy(self, target: str, port: int, mx: bool, host: str) -> TlsPolicy:
        """The policy for a connection to MX (or configured) ``host`` of this next hop."""
        level = self.level(target, port, mx)
        minimum = "1.2"
        if self.min_versions:
            key = self._entry_for(target, port, mx)
            minimum = self.min_versions.get(key, "1.2") if key is not None else "1.2"
        if level not in ("verify", "dane", "dane-only"):
            return TlsPolicy(level, min_version=minimum)
        names = dict.fromkeys([_clean(host), _clean(target)])
        return TlsPolicy(level, tuple(names), min_version=minimum)

    def context(self, policy: TlsPolicy) -> ssl.SSLContext:
        """One context per kind (verified or not, lowest version), made once."""
        kind = (policy.verified, policy.min_version)
        context = self._contexts.get(kind)
        if context is None:
            context = client_context(policy.verified, self.ca_file, policy.min_version)
            self._contexts[kind] = context
        return context


_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


def client_context(verified: bool, ca_file: str = "", min_version: str = "1.2") -> ssl.SSLContext:
    """A client context with TLS 1.2 (or ``min_version``) as its minimum.  Verified: the
    chain is checked against ``ca_file`` (else the system store); the name is checked by
    :func:`cert_matches`, because it may be one of several names (check_hostname knows
    only the SNI)."""
    context = ssl.create_default_context(cafile=ca_file or None)
    context.minimum_version = _VERSIONS[min_version]
    context.check_hostname = False
    # may/encrypt: encryption without authentication (Postfix's may and encrypt)
    context.verify_mode = ssl.CERT_REQUIRED if verified else ssl.CERT_NONE
    return context


def sni_for(host: str) -> str | None:
    """The server name to send: the host name, never an address (RFC 6066 §3)."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return _clean(host) or None
    return None


def _name_matches(pattern: str, name: str) -> bool:
    """RFC 6125 §6.4.3: a wildcard only as the whole left-most label, one label deep."""
    pattern = _clean(pattern)
    if pattern.startswith("*."):
        head, _, rest = name.partition(".")
        return bool(head) and rest == pattern[2:]
    return pattern == name


def cert_matches(cert: dict[str, Any], names: tuple[str, ...]) -> bool:
    """Whether a verified peer certificate (``getpeercert()``) names one of ``names``:
    its DNS subjectAltNames, or its common name when it has none (as Postfix does)."""
    dns = [value for kind, value in cert.get("subjectAltName", ()) if kind == "DNS"]
    if not dns:
        for rdn in cert.get("subject", ()):
            dns += [value for key, value in rdn if key == "commonName"]
    return any(_name_matches(pattern, name) for pattern in dns for name in names)
