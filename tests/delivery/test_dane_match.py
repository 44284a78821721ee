"""DANE matching (mta/delivery/dane.py) with certificates made by trustme and cryptography:
which TLSA records are usable, DANE-EE and DANE-TA against presented chains, no sockets."""

from __future__ import annotations

import datetime
import hashlib

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from mta.delivery.dane import TlsaRecord, check_chain, usable

MX = "mx.dest.test"
NAMES = (MX, "dest.test")


def der(pem: trustme.Blob) -> bytes:
    return x509.load_pem_x509_certificate(pem.bytes()).public_bytes(Encoding.DER)


def leaf_der(ca: trustme.CA, *names: str, **kwargs: datetime.datetime) -> bytes:
    return der(ca.issue_cert(*names, **kwargs).cert_chain_pems[0])


def record(usage: int, selector: int, mtype: int, cert_der: bytes) -> TlsaRecord:
    """The TLSA record a zone would publish for ``cert_der`` (RFC 6698 §2.1)."""
    data = cert_der
    if selector == 1:
        cert = x509.load_der_x509_certificate(cert_der)
        data = cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    if mtype == 1:
        data = hashlib.sha256(data).digest()
    elif mtype == 2:
        data = hashlib.sha512(data).digest()
    return TlsaRecord(usage, selector, mtype, data)


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def test_only_dane_usages_and_known_parameters_are_usable() -> None:
    records = [TlsaRecord(u, s, m, b"x") for u in range(4) for s in range(3) for m in range(4)]
    kept = usable(records)
    assert {(r.usage, r.selector, r.mtype) for r in kept} == {
        (u, s, m) for u in (2, 3) for s in (0, 1) for m in (0, 1, 2)
    }


@pytest.mark.parametrize(("selector", "mtype"), [(s, m) for s in (0, 1) for m in (0, 1, 2)])
def test_dane_ee_matches_the_leaf_by_every_selector_and_matching_type(
    ca: trustme.CA, selector: int, mtype: int
) -> None:
    leaf = leaf_der(ca, MX)
    assert check_chain([leaf], [record(3, selector, mtype, leaf)], NAMES) == ""


def test_dane_ee_checks_neither_name_nor_dates_nor_issuer(ca: trustme.CA) -> None:
    # RFC 7672 §3.1.1: the key is what is pinned
    past = datetime.datetime(2001, 1, 1, tzinfo=datetime.UTC)
    leaf = leaf_der(trustme.CA(), "other.test", not_before=past, not_after=past)
    assert check_chain([leaf], [record(3, 1, 1, leaf)], NAMES) == ""


def test_dane_ee_mismatch(ca: trustme.CA) -> None:
    leaf, other = leaf_der(ca, MX), leaf_der(ca, MX)
    why = check_chain([leaf], [record(3, 1, 1, other), record(3, 0, 1, other)], NAMES)
    assert why == "no TLSA record matches the server certificate"
    assert check_chain([], [record(3, 1, 1, leaf)], NAMES) == "no certificate presented"


def test_dane_ee_record_does_not_match_an_issuer_in_the_chain(ca: trustme.CA) -> None:
    leaf, root = leaf_der(ca, MX), der(ca.cert_pem)
    assert check_chain([leaf, root], [record(3, 1, 1, root)], NAMES) != ""


@pytest.mark.parametrize(("selector", "mtype"), [(0, 1), (1, 1), (1, 2), (0, 0)])
def test_dane_ta_matches_the_ca_in_the_chain(ca: trustme.CA, selector: int, mtype: int) -> None:
    leaf, root = leaf_der(ca, MX), der(ca.cert_pem)
    assert check_chain([leaf, root], [record(2, selector, mtype, root)], NAMES) == ""


def test_dane_ta_names_the_mx_host_or_the_next_hop_domain(ca: trustme.CA) -> None:
    root = der(ca.cert_pem)
    ta = [record(2, 1, 1, root)]
    for names in (("dest.test",), ("*.dest.test",)):
        assert check_chain([leaf_der(ca, *names), root], ta, NAMES) == ""
    why = check_chain([leaf_der(ca, "other.test"), root], ta, NAMES)
    assert why == "certificate does not match mx.dest.test, dest.test"


def test_dane_ta_needs_the_anchor_in_the_chain_unless_the_record_is_the_certificate(
    ca: trustme.CA,
) -> None:
    leaf, root = leaf_der(ca, MX), der(ca.cert_pem)
    assert check_chain([leaf], [record(2, 0, 1, root)], NAMES) != ""
    assert check_chain([leaf], [record(2, 0, 0, root)], NAMES) == ""


def test_dane_ta_rejects_a_chain_the_anchor_did_not_sign(ca: trustme.CA) -> None:
    stranger, root = leaf_der(trustme.CA(), MX), der(ca.cert_pem)
    why = check_chain([stranger, root], [record(2, 1, 1, root)], NAMES)
    assert "no trust anchor" in why
    assert check_chain([stranger], [record(2, 0, 0, root)], NAMES) != ""


def test_dane_ta_rejects_an_expired_leaf(ca: trustme.CA) -> None:
    past = datetime.datetime(2001, 1, 1, tzinfo=datetime.UTC)
    leaf, root = leaf_der(ca, MX, not_before=past, not_after=past), der(ca.cert_pem)
    assert "no trust anchor" in check_chain([leaf, root], [record(2, 1, 1, root)], NAMES)


def test_dane_ta_through_an_intermediate(ca: trustme.CA) -> None:
    child = ca.create_child_ca()
    leaf, middle, root = leaf_der(child, MX), der(child.cert_pem), der(ca.cert_pem)
    assert check_chain([leaf, middle, root], [record(2, 1, 1, root)], NAMES) == ""
    assert check_chain([leaf, middle], [record(2, 0, 1, middle)], NAMES) == ""
    assert check_chain([leaf, middle], [record(2, 0, 0, root)], NAMES) == ""
    # out of order: the leaf is not signed by the next certificate presented
    assert check_chain([leaf, root, middle], [record(2, 1, 1, root)], NAMES) != ""
