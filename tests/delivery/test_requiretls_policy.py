"""What a message asks of its transport (mta/delivery/requiretls.py), without sockets:
REQUIRETLS raising a next hop's TLS policy, ``TLS-Required: No``, SMTPUTF8 autodetection."""

from __future__ import annotations

import pytest

from mta.delivery.requiretls import needs_smtputf8, required_policy, tls_optional
from mta.delivery.results import DeliveryError
from mta.delivery.routing import NextHop
from mta.delivery.tls_policy import TlsPolicy
from mta.queue.envelope import Envelope, Recipient

MX_HOP = NextHop("smtp", "dest.test", 25, True)
RELAY_HOP = NextHop("smtp", "Smart.Test.", 587, False)


def envelope(sender: str = "a@b.test", rcpt: str = "c@d.test", **fields: object) -> Envelope:
    return Envelope(queue_id="Q", sender=sender, recipients=[Recipient(address=rcpt)], **fields)  # type: ignore[arg-type]


@pytest.mark.parametrize("level", ["none", "may", "encrypt", "dane"])
def test_requiretls_fails_an_mx_host_without_dane_or_mta_sts(level: str) -> None:
    with pytest.raises(DeliveryError) as caught:
        required_policy(TlsPolicy(level), MX_HOP, "mx.dest.test")  # type: ignore[arg-type]
    assert caught.value.permanent and caught.value.dsn == "5.7.30"
    assert "REQUIRETLS support required" in caught.value.reply


def test_requiretls_keeps_an_authenticating_policy_and_raises_a_configured_host() -> None:
    sts = TlsPolicy("verify", ("mx.dest.test",), source="mta-sts")
    assert required_policy(sts, MX_HOP, "mx.dest.test") is sts
    dane = TlsPolicy("dane", ("mx.dest.test",), tlsa=(object(),))  # type: ignore[arg-type]
    assert required_policy(dane, MX_HOP, "mx.dest.test") is dane
    raised = required_policy(TlsPolicy("may", min_version="1.3"), RELAY_HOP, "Smart.Test.")
    assert raised == TlsPolicy("verify", ("smart.test",), min_version="1.3")


def test_tls_required_no_is_read_from_the_header_and_loses_to_requiretls() -> None:
    header = b"Subject: x\r\ntls-required:  NO \r\n"
    assert tls_optional(envelope(), header)
    assert tls_optional(envelope(), b"TLS-Required:\r\n No\r\nSubject: x\r\n")  # first, folded
    assert not tls_optional(envelope(), b"Subject: x\r\nTLS-Required: Yes\r\n")
    assert not tls_optional(envelope(), b"Subject: TLS-Required: No\r\n")
    assert not tls_optional(envelope(mail_params={"REQUIRETLS": None}), header)


def test_smtputf8_is_needed_only_for_non_ascii_addresses_or_header() -> None:
    ascii_header = b"Subject: x\r\n"
    assert not needs_smtputf8(envelope(rcpt="jörg@d.test"), ascii_header)  # not asked for
    assert not needs_smtputf8(envelope(smtputf8=True), ascii_header)
    assert needs_smtputf8(envelope(rcpt="jörg@d.test", smtputf8=True), ascii_header)
    assert needs_smtputf8(envelope(sender="jörg@b.test", smtputf8=True), ascii_header)
    assert needs_smtputf8(envelope(smtputf8=True), "Subject: Grüße\r\n".encode())
