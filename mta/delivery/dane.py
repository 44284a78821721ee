"""DANE for SMTP (RFC 7672, RFC 6698, RFC 7671): which TLSA records count, the policy they
make for one MX host, and whether a server's certificate chain matches them.

The policy (:func:`dane_policy`) is decided before connecting, per MX host, as Postfix's
``dane`` level does:

- DANE applies only when the answers that led to the host are authenticated (the AD bit set
  by the validating resolver in ``delivery.dns_servers``): the MX RRset of an MX-routed next
  hop (RFC 7672 §2.2.1; a configured ``[host]`` is trusted as configured), the host's
  address records (§2.2.2: no TLSA lookup for an insecure host, as Postfix) and the TLSA
  RRset ``_PORT._tcp.HOST`` itself (§2.2.3);
- an authenticated TLSA RRset with usable records (DANE-TA(2), DANE-EE(3), known selectors
  and matching types; PKIX-TA(0)/PKIX-EE(1) are unusable for SMTP, §3.1.3) gives a ``dane``
  :class:`~mta.delivery.tls_policy.TlsPolicy`: TLS is mandatory and authenticated by them;
- otherwise (no records, only unusable ones, or an unauthenticated answer) DANE does not
  apply and the caller falls back to its non-DANE level; ``dane-only`` defers instead;
- a TLSA lookup that fails (SERVFAIL, timeout: a validating resolver's answer to a bogus
  zone too) raises :class:`~mta.delivery.results.DeliveryError` ``4.7.5`` for that host,
  and the caller tries the next one.

Matching (:func:`check_chain`) runs after the handshake, on the chain the server presented
(leaf first), with a TLS context that does not verify by PKIX:

- DANE-EE(3): the leaf matches; no name or expiry check (§3.1.1);
- DANE-TA(2): a certificate of the chain above the leaf matches (or, for a full-certificate
  record ``2 0 0``, the record's own certificate), each certificate below it is signed by
  the one above it in the order presented and is within its validity period, and the leaf
  names the MX host or the next-hop domain (§3.1.2, §3.2.2).

The chain comes from :func:`presented_chain`: ``SSLObject.get_unverified_chain()`` (public
from Python 3.13), else the private ``_sslobj.get_unverified_chain()`` of Python 3.10-3.12,
else the leaf alone (``getpeercert(binary_form=True)``; then DANE-TA can match only a
``2 0 0`` record).
"""

from __future__ import annotations

import datetime
import hashlib
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from mta.delivery.results import DeliveryError
from mta.delivery.tls_policy import TlsPolicy, cert_matches

__all__ = [
    "DANE_EE",
    "DANE_TA",
    "TlsaRecord",
    "check_chain",
    "dane_policy",
    "presented_chain",
    "usable",
]

_ENCODING_DER = 2  # _ssl.ENCODING_DER: the private module's name for DER
DANE_TA = 2
DANE_EE = 3
_DIGESTS: dict[int, Callable[[bytes], bytes] | None] = {
    0: None,  # Full: the data itself
    1: lambda data: hashlib.sha256(data).digest(),
    2: lambda data: hashlib.sha512(data).digest(),
}


@dataclass(frozen=True, slots=True)
class TlsaRecord:
    """One TLSA record (RFC 6698 §2.1): usage, selector, matching type, association data."""

    usage: int
    selector: int
    mtype: int
    data: bytes


def usable(records: Sequence[TlsaRecord]) -> tuple[TlsaRecord, ...]:
    """The records SMTP can use (RFC 7672 §3.1.3): DANE-TA or DANE-EE, selector 0 (full
    certificate) or 1 (SubjectPublicKeyInfo), matching type 0, 1 or 2."""
    return tuple(
        r
        for r in records
        if r.usage in (DANE_TA, DANE_EE) and r.selector in (0, 1) and r.mtype in _DIGESTS
    )


class TlsaResolver(Protocol):
    """What :func:`dane_policy` needs of :class:`mta.delivery.dns.Resolver`."""

    async def addresses_authenticated(self, host: str) -> bool: ...

    async def tlsa(self, host: str, port: int) -> tuple[list[TlsaRecord], bool]: ...


async def dane_policy(
    resolver: TlsaResolver, host: str, port: int, nexthop: str, mx_secure: bool
) -> TlsPolicy | None:
    """The DANE policy for MX (or configured) ``host`` of ``nexthop``, or None when DANE
    does not apply to it; raises DeliveryError 4.7.5 when the TLSA lookup fails."""
    if not mx_secure or not _is_name(host):
        return None  # §2.2.1: an insecure MX RRset; an address has no TLSA base name
    if not await resolver.addresses_authenticated(host):
        return None  # §2.2.2: an insecure host
    try:
        records, authenticated = await resolver.tlsa(host, port)
    except DeliveryError as exc:
        raise DeliveryError(
            False, "4.7.5", f"TLSA lookup error for {host}:{port}: {exc.reply}"
        ) from None
    found = usable(records) if authenticated else ()
    if not found:
        return None
    names = tuple(dict.fromkeys([_clean(host), _clean(nexthop)]))
    return TlsPolicy("dane", names, found)


def _clean(name: str) -> str:
    return name.lower().rstrip(".")


def _is_name(host: str) -> bool:
    return not host.startswith("[") and not host.replace(".", "").isdigit() and ":" not in host


def presented_chain(tls: ssl.SSLObject) -> list[bytes]:
    """The DER certificates the server sent, leaf first (see the module docstring)."""
    getter = getattr(tls, "get_unverified_chain", None)
    if getter is None:
        getter = getattr(getattr(tls, "_sslobj", None), "get_unverified_chain", None)
    if getter is not None:
        return [_der(c) for c in getter() or ()]
    leaf = tls.getpeercert(binary_form=True)
    return [leaf] if leaf else []


def _der(cert: Any) -> bytes:
    """DER of one ``_ssl.Certificate`` (3.10+: ``public_bytes(format)``, 2 = DER)."""
    return cert if isinstance(cert, bytes) else bytes(cert.public_bytes(_ENCODING_DER))


def _selected(cert: x509.Certificate, der: bytes, selector: int) -> bytes:
    if selector == 0:
        return der
    return cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def _matches(record: TlsaRecord, cert: x509.Certificate, der: bytes) -> bool:
    digest = _DIGESTS[record.mtype]
    data = _selected(cert, der, record.selector)
    return (digest(data) if digest else data) == record.data


def check_chain(chain: Sequence[bytes], records: Sequence[TlsaRecord], names: Sequence[str]) -> str:
    """ "" when the presented ``chain`` (DER, leaf first) matches one of the usable
    ``records``, else why not (for the log and the deferral)."""
    if not chain:
        return "no certificate presented"
    try:
        certs = [x509.load_der_x509_certificate(der) for der in chain]
    except ValueError as exc:
        return f"unparsable certificate: {exc}"
    if any(r.usage == DANE_EE and _matches(r, certs[0], chain[0]) for r in records):
        return ""  # §3.1.1: the key is pinned; names and dates do not matter
    ta_records = [r for r in records if r.usage == DANE_TA]
    if not ta_records:
        return "no TLSA record matches the server certificate"
    if not _ta_chain(certs, chain, ta_records):
        return "no trust anchor of the TLSA records issued the server certificate chain"
    if not cert_matches(_names(certs[0]), tuple(names)):
        return f"certificate does not match {', '.join(names)}"
    return ""


def _ta_chain(
    certs: list[x509.Certificate], chain: Sequence[bytes], records: list[TlsaRecord]
) -> bool:
    """Whether the leaf chains, in the order presented and within validity dates, up to a
    certificate matching a DANE-TA record (or a ``2 0 0`` record's own certificate)."""
    now = datetime.datetime.now(datetime.UTC)
    anchors = [_record_cert(r) for r in records if r.selector == 0 and r.mtype == 0]
    below = certs[0]
    for cert, der in zip(certs[1:], chain[1:], strict=True):
        if not _valid_at(below, now) or not _issued_by(below, cert):
            break
        if any(_matches(r, cert, der) for r in records):
            return True
        below = cert
    # the last certificate that chains may be issued by a full-certificate anchor not sent
    return _valid_at(below, now) and any(a is not None and _issued_by(below, a) for a in anchors)


def _record_cert(record: TlsaRecord) -> x509.Certificate | None:
    try:
        return x509.load_der_x509_certificate(record.data)
    except ValueError:
        return None


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _valid_at(cert: x509.Certificate, now: datetime.datetime) -> bool:
    return cert.not_valid_before_utc <= now <= cert.not_valid_after_utc


def _names(cert: x509.Certificate) -> dict[str, Any]:
    """The certificate's names in ``SSLSocket.getpeercert()``'s shape, for cert_matches."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        dns = san.value.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        dns = []
    common = [str(a.value) for a in cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)]
    return {
        "subjectAltName": tuple(("DNS", name) for name in dns),
        "subject": tuple((("commonName", name),) for name in common),
    }
